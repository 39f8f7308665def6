"""``dit``: a class-conditional latent DiT (``DiTTransformer2DModel`` + ``AutoencoderKL``).

The null class for guidance is ``num_embeds_ada_norm`` (1000 for the ImageNet DiTs);
learned-sigma checkpoints output eps and a variance, of which the first half (eps) is
used. Hook points: ``transformer_blocks.i``, each (B, tokens, C). The sampler runs on
scaled VAE latents; ``encode`` / ``decode`` convert to and from pixels in [-1, 1].

    adapter = DiTAdapter.from_pretrained("facebook/DiT-XL-2-256")
"""

from __future__ import annotations

from typing import Any

import torch

from .diffusers_base import DiffusersAdapter, check_model_class, import_diffusers, load_model

DEFAULT_GUIDANCE = 4.0


class DiTAdapter(DiffusersAdapter):
    name = "dit"
    conditioning_type = "class"

    def __init__(self, transformer, vae, preconditioning, device: str | torch.device = "cpu",
                 class_names: list[str] | None = None, spec: str = "", scheduler_name: str = ""):
        cfg = transformer.config
        if not cfg.num_embeds_ada_norm:
            raise ValueError("the DiT has no class embedding (num_embeds_ada_norm is unset); only class-conditional "
                             "DiTs are supported")
        self._num_classes = int(cfg.num_embeds_ada_norm)
        tables = [m.embedding_table for m in transformer.modules() if hasattr(m, "embedding_table")]
        self._has_null = bool(tables) and tables[0].num_embeddings > self._num_classes
        super().__init__(transformer, preconditioning, device, vae, class_names, spec, scheduler_name)

    @property
    def model_num_classes(self) -> int:
        return self._num_classes

    @property
    def supports_cfg(self) -> bool:
        return self._has_null

    @property
    def hook_points(self):
        return {f"transformer_blocks.{i}": b for i, b in enumerate(self.net.transformer_blocks)}

    @property
    def default_guidance(self) -> float:
        return DEFAULT_GUIDANCE

    def _call_net(self, x_in, t, class_labels):
        return self.net(x_in, timestep=t, class_labels=class_labels, return_dict=False)[0]

    @classmethod
    def _load(cls, source, dtype, classes, common, **kwargs: Any) -> DiTAdapter:
        diffusers = import_diffusers()
        source.require(cls.name, ["transformer", "vae"])
        check_model_class(source, "transformer", ("DiTTransformer2DModel", "Transformer2DModel"), cls.name)
        transformer = load_model(diffusers.DiTTransformer2DModel, source, "transformer", dtype)
        vae = load_model(diffusers.AutoencoderKL, source, "vae", dtype)
        if classes is None:
            classes = id2label_names(source.model_index.get("id2label"), int(transformer.config.num_embeds_ada_norm))
        return cls(transformer, vae, class_names=classes, **common, **kwargs)


def id2label_names(id2label: dict | None, num_classes: int) -> list[str] | None:
    """Class names from a pipeline's id2label ({"0": "tench, Tinca tinca", ...}): the first
    synonym of each; None unless every class has one."""
    if not id2label:
        return None
    names = {int(k): str(v).split(",")[0].strip() for k, v in id2label.items()}
    if sorted(names) != list(range(num_classes)):
        return None
    return [names[i] for i in range(num_classes)]
