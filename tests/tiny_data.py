"""A tiny, untrained demo-family model in a temporary data directory (for backend tests).

Untrained weights are enough for what these tests check: that the same request gives the
same image through every backend and that arrays survive the trip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffviews.backends.protocol import GenerationRequest
from diffviews.data.layout import model_paths, write_config
from diffviews.demo.train import save_weights
from diffviews.demo.unet import DemoUNet, EDMDenoiser, UNetConfig

TINY = UNetConfig(resolution=8, in_channels=1, num_classes=3, channels=(8, 16), groups=4,
                  class_names=("a", "b", "c"))


def make_tiny_data_dir(root: Path, model: str = "tiny", seed: int = 0) -> Path:
    """Write ``root/<model>/`` (config.json and a random-initialised checkpoint); returns ``root``."""
    torch.manual_seed(seed)
    paths = model_paths(root, model)
    save_weights(EDMDenoiser(DemoUNet(TINY)), {"model": model, "untrained": True}, paths.root, "weights")
    write_config(paths, {
        "adapter": "edm-demo", "checkpoint": "weights.safetensors", "default_steps": 4,
        "default_guidance": 1.0, "noise_max": 100.0, "noise_min": 0.0,
        "noise_levels": [80.0, 40.0], "default_layer": "mid",
    })
    return root


def tiny_request(**overrides) -> GenerationRequest:
    """A masked generation request for the tiny model (two samples, two extracted layers)."""
    rng = np.random.default_rng(3)
    base = dict(model="tiny", class_label=1, num_steps=4, mask_steps=2, guidance_scale=1.5, seed=11,
                noise_mode="stochastic", masks={"mid": rng.standard_normal((1, 16, 4, 4)).astype(np.float32)},
                extract_layers=["mid", "dec_8x8"], num_samples=2)
    return GenerationRequest(**{**base, **overrides})
