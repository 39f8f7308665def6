"""Adapter for the bundled demo family: ``DemoUNet`` wrapped in EDM preconditioning.

Native unit: EDM sigma. Universal noise level is linear in log-sigma between the
model's sigma_min (0 %) and sigma_max (100 %). Sampling: Karras rho=7 schedule and an
Euler(-ancestral) step, as in k-diffusion.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..demo.unet import DemoUNet, EDMDenoiser, UNetConfig
from .base import GeneratorAdapter

RHO = 7.0


class EDMDemoAdapter(GeneratorAdapter):
    name = "edm-demo"
    conditioning_type = "class"
    prediction_type = "x0"
    native_noise_name = "sigma"

    def __init__(self, model: EDMDenoiser, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.config: UNetConfig = model.net.config
        self._layer_shapes = None

    # ---- description -----------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def channels(self) -> int:
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names) or super().class_names

    @property
    def hook_points(self):
        return self.model.net.hook_points

    # ---- noise ---------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.config.sigma_max

    def noise_level_to_native(self, level):
        _check_level(level)
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
        s_max = self.noise_level_to_native(noise_max) ** (1 / RHO)
        s_min = self.noise_level_to_native(noise_min) ** (1 / RHO)
        ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        sigmas = (s_max + ramp * (s_min - s_max)) ** RHO
        return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)

    def add_noise(self, x0, native, noise):
        sigma = torch.as_tensor(native, dtype=x0.dtype, device=x0.device).reshape(-1, 1, 1, 1)
        return x0 + sigma * noise

    # ---- model ---------------------------------------------------------------------------
    def forward(self, x, native, class_labels):
        return self.model(x, native, class_labels.to(self.device))

    def step(self, x, denoised, native, native_next, noise):
        sigma = torch.as_tensor(native, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        sigma_next = torch.as_tensor(native_next, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        if noise is None:  # plain Euler on the probability-flow ODE
            return denoised + (x - denoised) * (sigma_next / sigma)
        # Euler-ancestral (eta = 1): step down to sigma_down, then add sigma_up of fresh noise
        up_sq = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).clamp(min=0)
        sigma_up = torch.minimum(sigma_next, up_sq.sqrt())
        sigma_down = (sigma_next**2 - sigma_up**2).clamp(min=0).sqrt()
        return denoised + (x - denoised) * (sigma_down / sigma) + noise.to(x) * sigma_up

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, device="cpu", **kwargs: Any) -> EDMDemoAdapter:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path}: safetensors metadata has no 'config' entry (not a DiffViews demo checkpoint)")
        config = UNetConfig.from_dict(json.loads(meta["config"]))
        net = DemoUNet(config)
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the network (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        return cls(EDMDenoiser(net), device=device)

    def get_default_config(self) -> dict:
        return {
            "default_steps": 20,
            "default_guidance": 2.0,
            "noise_max": 100.0,
            "noise_min": 0.0,
            "noise_levels": [85.0, 70.0, 55.0, 40.0],
            "default_layer": "mid",
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }


def _check_level(level) -> None:
    arr = np.asarray(level, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 100):
        raise ValueError(f"noise level must be within [0, 100] %, got {level}")
