"""SigmaSpaceAdapter: the noise side shared by every adapter that samples in sigma space.

The sampler state is x = x0 + sigma * eps (k-diffusion / EDM convention) whatever the
model was trained with; a preconditioning wrapper turns the network into a denoiser
D(x; sigma). The universal noise level is linear in log-sigma between the model's
``sigma_min`` (0 %) and ``sigma_max`` (100 %), for every family, so the same percentage
is the same position on that model's own noise range. Sampling: a Karras rho = 7 schedule
ending at sigma = 0 and an Euler / Euler-ancestral step (core.sampling).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch

from ..core.sampling import euler_step, karras_sigmas
from .base import GeneratorAdapter

RHO = 7.0


class SigmaSpaceAdapter(GeneratorAdapter):
    """Subclasses provide ``sigma_min`` / ``sigma_max`` (and the model side)."""

    native_noise_name = "sigma"

    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """The smallest sigma of the model's noise range (universal level 0 %)."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """The largest sigma of the model's noise range (universal level 100 %)."""

    def noise_level_to_native(self, level):
        check_noise_level(level)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        out = np.exp(lo + np.asarray(level, dtype=np.float64) / 100.0 * (hi - lo))
        return float(out) if np.ndim(out) == 0 else out

    def native_to_noise_level(self, native):
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        sig = np.clip(np.asarray(native, dtype=np.float64), self.sigma_min, self.sigma_max)
        out = (np.log(sig) - lo) / (hi - lo) * 100.0
        return float(out) if np.ndim(out) == 0 else out

    def get_timesteps(self, num_steps: int, noise_max: float = 100.0, noise_min: float = 0.0) -> torch.Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not noise_max > noise_min:
            raise ValueError(f"noise_max ({noise_max}) must be greater than noise_min ({noise_min})")
        return karras_sigmas(self.noise_level_to_native(noise_max), self.noise_level_to_native(noise_min),
                             num_steps, RHO)

    def add_noise(self, x0, native, noise):
        sigma = torch.as_tensor(native, dtype=x0.dtype, device=x0.device).reshape(-1, 1, 1, 1)
        return x0 + sigma * noise

    def step(self, x, denoised, native, native_next, noise):
        return euler_step(x, denoised, native, native_next, noise)


def check_noise_level(level) -> None:
    arr = np.asarray(level, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 100):
        raise ValueError(f"noise level must be within [0, 100] %, got {level}")
