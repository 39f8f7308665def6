"""``diffusers-unet``: a diffusers pixel-space ``UNet2DModel`` (DDPM/DDIM-style or consistency model).

Unconditional models (no class embedding) have conditioning_type "none" and one
pseudo-class, "unconditional"; class-conditional ones use ``num_class_embeds``. Their
class embedding has no null row, so classifier-free guidance is unavailable
(``supports_cfg`` False: the guidance scale is ignored and the conditional pass runs
alone) and asking for the null class is an error. Hook points: ``down_blocks.i``,
``mid_block``, ``up_blocks.i``.

    adapter = DiffusersUNetAdapter.from_pretrained("google/ddpm-cifar10-32")
    adapter = DiffusersUNetAdapter.from_pretrained("openai/diffusers-cd_imagenet64_l2")
"""

from __future__ import annotations

from typing import Any

import torch

from .diffusers_base import (
    DiffusersAdapter,
    check_model_class,
    import_diffusers,
    load_model,
    unet_hook_points,
)
from .preconditioning import Karras

CONSISTENCY_STEPS = 4


class DiffusersUNetAdapter(DiffusersAdapter):
    name = "diffusers-unet"

    def __init__(self, unet, preconditioning, device: str | torch.device = "cpu", class_names: list[str] | None = None,
                 spec: str = "", scheduler_name: str = ""):
        cfg = unet.config
        if unet.class_embedding is not None and not cfg.num_class_embeds:
            raise ValueError(f"UNet2DModel with class_embed_type={cfg.class_embed_type!r} is not supported; "
                             "class-conditional models need num_class_embeds")
        self._num_class_embeds = int(cfg.num_class_embeds or 0)
        self.conditioning_type = "class" if self._num_class_embeds else "none"
        self._learned_time = cfg.time_embedding_type == "learned"
        if class_names is None and not self._num_class_embeds:
            class_names = ["unconditional"]
        super().__init__(unet, preconditioning, device, None, class_names, spec, scheduler_name)

    @property
    def model_num_classes(self) -> int:
        return self._num_class_embeds or 1

    @property
    def supports_cfg(self) -> bool:
        return False

    @property
    def hook_points(self):
        return unet_hook_points(self.net)

    @property
    def default_layer(self) -> str:
        return "mid_block" if "mid_block" in self.hook_points else super().default_layer

    @property
    def default_steps(self) -> int:
        is_consistency = isinstance(self.precond, Karras) and self.precond.boundary
        return CONSISTENCY_STEPS if is_consistency else super().default_steps

    def _call_net(self, x_in, t, class_labels):
        if self._learned_time:  # an embedding table over integer timesteps
            t = t.round().long()
        if not self._num_class_embeds:
            return self.net(x_in, t, return_dict=False)[0]
        if int(class_labels.max()) >= self._num_class_embeds or int(class_labels.min()) < 0:
            raise ValueError(f"this class-conditional UNet has no unconditional (null) class; choose a class "
                             f"within [0, {self._num_class_embeds - 1}]")
        return self.net(x_in, t, class_labels=class_labels, return_dict=False)[0]

    @classmethod
    def _load(cls, source, dtype, classes, common, **kwargs: Any) -> DiffusersUNetAdapter:
        diffusers = import_diffusers()
        check_model_class(source, "unet", ("UNet2DModel",), cls.name)
        unet = load_model(diffusers.UNet2DModel, source, "unet", dtype)
        return cls(unet, class_names=classes, **common, **kwargs)
