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
