"""Preconditioning: turns a raw diffusers network into a denoiser D(x; sigma), as in EDM.

Every family samples x = x0 + sigma * eps (k-diffusion convention). A preconditioning
gives, per sigma, the scalings of EDM's D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise):

- ``DiscreteVP``: discrete-time variance-preserving schedulers (DDPM, DDIM, Euler, ... any
  scheduler with ``alphas_cumprod``). sigma_t = sqrt((1 - abar_t) / abar_t), the network
  sees the VP input x / sqrt(1 + sigma^2) and a continuous timestep t interpolated in
  log-sigma over the discrete schedule (as k-diffusion's DiscreteEpsDDPMDenoiser does);
  its output is read as eps, v or x0 (``prediction_type`` "epsilon", "v_prediction",
  "sample").
- ``Karras``: EDM-style schedulers that already work in sigma: consistency models
  (CMStochasticIterativeScheduler: boundary-condition c_skip / c_out, timestep
  250 * log(sigma)) and EDM ones (EDMEulerScheduler: c_noise = log(sigma) / 4).

No diffusers import here: ``preconditioning_from_scheduler`` reads the scheduler object's
attributes and config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")
#: EDM-style scheduler classes → (timestep scale s in t = s * log(sigma), boundary condition)
KARRAS_SCHEDULERS = {
    "CMStochasticIterativeScheduler": (250.0, True),
    "EDMEulerScheduler": (0.25, False),
    "EDMDPMSolverMultistepScheduler": (0.25, False),
}
#: the smallest abar kept, so zero-terminal-SNR schedules keep a finite sigma_max
MIN_ALPHA_CUMPROD = 2.0**-24


class Preconditioning:
    """Scalings of one noise parameterisation; ``denoise`` wraps a raw network call."""

    sigma_min: float
    sigma_max: float
    clip_denoised: bool = False

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """(c_skip, c_out, c_in, c_noise) for a (B,) float64 sigma, each (B,)."""
        raise NotImplementedError

    def denoise(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out net(c_in x, c_noise); ``sigma`` is (B,)."""
        c_skip, c_out, c_in, c_noise = self.scalings(sigma.to(torch.float64))
        view = (-1,) + (1,) * (x.ndim - 1)
        c_skip, c_out, c_in = (c.to(x.dtype).reshape(view) for c in (c_skip, c_out, c_in))
        raw = net(c_in * x, c_noise.to(torch.float32)).to(x.dtype)
        out = c_skip * x + c_out * raw
        return out.clamp(-1, 1) if self.clip_denoised else out


class DiscreteVP(Preconditioning):
    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in VP_PREDICTIONS:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; supported: {', '.join(VP_PREDICTIONS)}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clamp(min=MIN_ALPHA_CUMPROD)
        self.prediction_type = prediction_type
        self.sigmas = ((1 - abar) / abar).sqrt()  # ascending in t
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep: linear interpolation of t over log-sigma, clamped to [0, T-1]."""
        log_s = torch.as_tensor(sigma, dtype=torch.float64).log()
        ls = self.log_sigmas.to(log_s.device)
        hi = torch.searchsorted(ls, log_s.contiguous()).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((log_s - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of sigma_to_t (log-sigma interpolated between integer timesteps)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(self.sigmas) - 1)
        ls = self.log_sigmas.to(t.device)
        lo = t.floor().long().clamp(max=len(ls) - 2)
        w = t - lo
        return (ls[lo] + w * (ls[lo + 1] - ls[lo])).exp()

    def scalings(self, sigma):
        c_in = 1 / (sigma**2 + 1).sqrt()
        if self.prediction_type == "epsilon":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        elif self.prediction_type == "v_prediction":
            c_skip, c_out = 1 / (sigma**2 + 1), -sigma * c_in
        else:  # "sample": the network predicts x0
            c_skip, c_out = torch.zeros_like(sigma), torch.ones_like(sigma)
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)


class Karras(Preconditioning):
    def __init__(self, sigma_min: float, sigma_max: float, sigma_data: float = 0.5, t_scale: float = 0.25,
                 boundary: bool = False, prediction_type: str = "epsilon", clip_denoised: bool = False):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r} for an EDM-style scheduler; "
                             "supported: epsilon, v_prediction")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data, self.t_scale, self.boundary = float(sigma_data), float(t_scale), boundary
        self.prediction_type = prediction_type
        self.clip_denoised = clip_denoised

    def scalings(self, sigma):
        sd = self.sigma_data
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        if self.boundary:  # consistency models: D(x; sigma_min) = x exactly
            s = sigma - self.sigma_min
            c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd * c_in
        else:
            c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd * c_in
        if self.prediction_type == "v_prediction":
            c_out = -c_out
        return c_skip, c_out, c_in, self.t_scale * (sigma + 1e-44).log()


def preconditioning_from_scheduler(scheduler) -> Preconditioning:
    """The preconditioning a diffusers scheduler object implies (read from its config)."""
    name = type(scheduler).__name__
    config = scheduler.config
    if name in KARRAS_SCHEDULERS:
        t_scale, boundary = KARRAS_SCHEDULERS[name]
        return Karras(config.sigma_min, config.sigma_max, config.get("sigma_data", 0.5), t_scale, boundary,
                      config.get("prediction_type", "epsilon"), bool(config.get("clip_denoised", False)))
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return DiscreteVP(scheduler.alphas_cumprod, config.get("prediction_type", "epsilon"))
    raise ValueError(f"unsupported scheduler {name}: DiffViews handles discrete-time VP schedulers (with "
                     f"alphas_cumprod: DDPM, DDIM, Euler, ...) and {', '.join(KARRAS_SCHEDULERS)}")
