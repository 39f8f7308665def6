"""Adapter for the bundled demo family: ``DemoUNet`` wrapped in EDM preconditioning.

Native unit: EDM sigma. Noise level mapping, schedule and step come from
SigmaSpaceAdapter (linear in log-sigma; Karras rho=7; Euler(-ancestral), as in k-diffusion).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..demo.unet import DemoUNet, EDMDenoiser, UNetConfig
from .sigma_space import SigmaSpaceAdapter


class EDMDemoAdapter(SigmaSpaceAdapter):
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

    # ---- model ---------------------------------------------------------------------------
    def forward(self, x, native, class_labels):
        return self.model(x, native, class_labels.to(self.device))

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

