"""Sampler loop in the style of k-diffusion: a schedule, a step function, a loop that
hands every step to a callback (x, sigma, sigma_next, denoised, i).

Noise modes decide where the step noise of an ancestral sampler comes from:
``stochastic`` draws fresh noise each step, ``fixed`` reuses one draw for every step,
``zero`` adds none (the deterministic probability-flow ODE).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .spec import NOISE_MODES

NoiseSampler = Callable[[int], "torch.Tensor | None"]


def make_noise_sampler(mode: str, shape: tuple[int, ...], generator: torch.Generator,
                       device: torch.device) -> NoiseSampler:
    """Step index → standard-normal noise of ``shape`` (or None for ``zero``)."""
    if mode == "stochastic":
        return lambda i: torch.randn(shape, generator=generator).to(device)
    if mode == "fixed":
        fixed = torch.randn(shape, generator=generator).to(device)
        return lambda i: fixed
    if mode == "zero":
        return lambda i: None
    raise ValueError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")


@torch.no_grad()
def sample(denoise: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
           step: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
           noise_sampler: NoiseSampler | None = None,
           callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Run ``len(sigmas) - 1`` steps from ``x`` at ``sigmas[0]`` down to ``sigmas[-1]``.

    ``denoise(x, sigma, i)`` returns the denoised estimate; ``step(x, denoised, sigma,
    sigma_next, noise)`` moves x to the next noise level.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma, i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
        noise = noise_sampler(i) if noise_sampler is not None and float(sigma_next) > 0 else None
        x = step(x, denoised, sigma, sigma_next, noise)
    return x


# ---- schedules and steps in sigma space (shared by every adapter that samples in sigma) -------

def karras_sigmas(sigma_max: float, sigma_min: float, num_steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule: ``num_steps`` sigmas from sigma_max down to sigma_min,
    evenly spaced in sigma^(1/rho), followed by a final 0; float32, ``num_steps + 1`` long."""
    s_max, s_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    sigmas = (s_max + ramp * (s_min - s_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma, sigma_next, noise: torch.Tensor | None) -> torch.Tensor:
    """One Euler step of x = x0 + sigma * eps from ``sigma`` to ``sigma_next``.

    Without ``noise`` it is plain Euler on the probability-flow ODE; with it, Euler-ancestral
    (eta = 1): step down to sigma_down, then add sigma_up of the given standard-normal noise.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    sigma_next = torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    if noise is None:
        return denoised + (x - denoised) * (sigma_next / sigma)
    up_sq = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).clamp(min=0)
    sigma_up = torch.minimum(sigma_next, up_sq.sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).clamp(min=0).sqrt()
    return denoised + (x - denoised) * (sigma_down / sigma) + noise.to(x) * sigma_up
