"""What a generation run accepts and returns, as plain data (numpy, numbers, strings).

Kept free of torch so that a process without it (the web container of the hybrid
deployment, a browse-only app) can name noise modes and hold generation results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: where the step noise of an ancestral sampler comes from (see ``core.sampling``)
NOISE_MODES = ("stochastic", "fixed", "zero")


@dataclass
class GenerationResult:
    images: np.ndarray  # (B, H, W, C) uint8, final samples (decoded to pixels for latent models)
    denoised: np.ndarray  # (S, B, H, W, C) uint8, denoised estimate at each step
    noised: np.ndarray  # (S, B, H, W, C) uint8, the noised input x at each step
    trajectory: dict[str, np.ndarray]  # layer -> (S, B, D) float32, conditional half only
    sigmas: np.ndarray  # (S + 1,) native noise schedule, ending in the clean value
    noise_levels: np.ndarray  # (S + 1,) the same schedule in universal noise level %
    params: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1
