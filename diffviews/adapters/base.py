"""GeneratorAdapter: the one interface between DiffViews and a diffusion model.

Every model family speaks its own native noise unit (EDM sigma, DDPM timestep, ...).
DiffViews speaks a *universal noise level* in percent: 100 = pure noise (the model's
largest noise), 0 = clean (its smallest). Adapters convert both ways and expose named
layers that hooks can attach to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class GeneratorAdapter(ABC):
    """Wraps one loaded model. Subclasses set the class attributes and implement the methods."""

    #: registry name, e.g. "edm-demo"
    name: str = ""
    #: "class" for class-conditional models, "none" for unconditional ones
    conditioning_type: str = "class"
    #: what the network predicts after preconditioning: "x0" (a denoised estimate), "eps", "v"
    prediction_type: str = "x0"
    #: name of the native noise unit, shown in the UI ("sigma" or "t")
    native_noise_name: str = "sigma"

    device: torch.device

    # ---- description -------------------------------------------------------------------
    @property
    @abstractmethod
    def resolution(self) -> int:
        """Side of the space the sampler runs in (pixels, or latents for latent models)."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Channels of the space the sampler runs in."""

    @property
    def image_resolution(self) -> int:
        """Side of the images the model makes (differs from ``resolution`` for latent models)."""
        return self.resolution

    @property
    def image_channels(self) -> int:
        return self.channels

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    @property
    @abstractmethod
    def hook_points(self) -> dict[str, nn.Module]:
        """Named modules whose outputs can be recorded or replaced, in forward order."""

    @property
    def hookable_layers(self) -> list[str]:
        return list(self.hook_points)

    def get_layer_module(self, layer: str) -> nn.Module:
        points = self.hook_points
        if layer not in points:
            raise KeyError(f"unknown layer {layer!r} for adapter {self.name!r}; "
                           f"hookable layers: {', '.join(points)}")
        return points[layer]

    def get_layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-layer output shape (C, H, W) for one sample, found with one dummy forward."""
        if getattr(self, "_layer_shapes", None) is None:
            from ..core.hooks import ActivationExtractor

            x = torch.zeros(1, self.channels, self.resolution, self.resolution, device=self.device)
            with ActivationExtractor(self, self.hookable_layers) as ex, torch.no_grad():
                self.forward(x, self.noise_level_to_native(50.0), torch.zeros(1, dtype=torch.long))
            self._layer_shapes = {k: tuple(v.shape[1:]) for k, v in ex.get_activations().items()}
        return dict(self._layer_shapes)

    # ---- pixels <-> model space (identity for pixel models; a VAE for latent ones) ----------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (N, image_channels, image_resolution, image_resolution) → model
        space (N, channels, resolution, resolution): what extraction and add_noise take."""
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space → pixels in [-1, 1]: what images are made from."""
        return x

    # ---- noise ---------------------------------------------------------------------------
    @abstractmethod
    def noise_level_to_native(self, level: float | np.ndarray) -> float | np.ndarray:
        """Universal noise level (0–100 %) → native unit."""

    @abstractmethod
    def native_to_noise_level(self, native: float | np.ndarray) -> float | np.ndarray:
        """Native unit → universal noise level (0–100 %)."""

    @abstractmethod
    def get_timesteps(self, num_steps: int, noise_max: float = 100.0, noise_min: float = 0.0) -> torch.Tensor:
        """Native noise schedule from noise_max % down to noise_min %, ``num_steps + 1`` long,
        ending in the clean value (e.g. sigma = 0)."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, native: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean images to the given native level (x + sigma * eps for EDM)."""

    def get_initial_noise(self, batch: int, generator: torch.Generator | None = None,
                          noise_max: float = 100.0) -> torch.Tensor:
        shape = (batch, self.channels, self.resolution, self.resolution)
        eps = torch.randn(shape, generator=generator, device="cpu").to(self.device)
        return self.add_noise(torch.zeros_like(eps), self.noise_level_to_native(noise_max), eps)

    # ---- model ---------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: torch.Tensor, native: float | torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Denoised estimate D(x; native, class). ``class_labels`` may hold the null class."""

    def forward_with_cfg(self, x: torch.Tensor, native: float | torch.Tensor, class_labels: torch.Tensor,
                         guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance in one batched pass: the first half of the batch is
        conditional, the second half unconditional (hooks see both halves in that order).
        Without a null class (``supports_cfg`` False) the guidance scale is ignored."""
        if guidance_scale == 1.0 or self.conditioning_type == "none" or not self.supports_cfg:
            return self.forward(x, native, class_labels)
        b = x.shape[0]
        native = torch.as_tensor(native, dtype=x.dtype, device=x.device).reshape(-1)
        native = native.expand(b) if native.numel() == 1 else native
        null = torch.full_like(class_labels, self.null_class)
        out = self.forward(torch.cat([x, x]), torch.cat([native, native]), torch.cat([class_labels, null]))
        cond, uncond = out[:b], out[b:]
        return uncond + guidance_scale * (cond - uncond)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def supports_cfg(self) -> bool:
        """False for a class-conditional model without a null (unconditional) class: there
        guidance is unavailable and forward_with_cfg runs the conditional pass alone."""
        return True

    @abstractmethod
    def step(self, x: torch.Tensor, denoised: torch.Tensor, native: torch.Tensor, native_next: torch.Tensor,
             noise: torch.Tensor | None) -> torch.Tensor:
        """One sampler step from ``native`` to ``native_next`` given the denoised estimate.
        ``noise`` (standard normal, same shape as x) is the step noise; None means none."""

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> GeneratorAdapter:
        """Load a model from a weights file (safetensors)."""

    @abstractmethod
    def get_default_config(self) -> dict:
        """Defaults the app uses: default_steps, default_guidance, noise_max, noise_min,
        noise_levels (for map building), default_layer."""

