"""``sd-unet``: Stable Diffusion style text-to-image (``UNet2DConditionModel`` + ``AutoencoderKL``
+ ``CLIPTextModel`` / ``CLIPTokenizer``), SD 1.x / 2.x / Turbo configs.

A text-conditioned model has no classes of its own: the *prompts* given to the adapter
act as the classes (class i = prompts[i]); the null class for guidance is the empty
prompt. Prompt embeddings are computed once, at construction, and cached. Hook points:
``down_blocks.i`` (tuples (hidden, residuals): the hidden state is recorded),
``mid_block``, ``up_blocks.i``. The sampler runs on scaled VAE latents.

    adapter = SDUNetAdapter.from_pretrained("stabilityai/sd-turbo", classes=["a photo of a cat", "a photo of a dog"])
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

DEFAULT_GUIDANCE = 7.5


class SDUNetAdapter(DiffusersAdapter):
    name = "sd-unet"
    conditioning_type = "class"

    def __init__(self, unet, vae, text_encoder, tokenizer, prompts: list[str], preconditioning,
                 device: str | torch.device = "cpu", spec: str = "", scheduler_name: str = ""):
        if not prompts or isinstance(prompts, str):
            raise ValueError("sd-unet needs a list of prompts that act as its classes, "
                             "e.g. from_pretrained(spec, classes=['a photo of a cat', 'a photo of a dog'])")
        if unet.config.addition_embed_type or unet.config.time_cond_proj_dim:
            raise ValueError("UNet2DConditionModel with added embeddings (SDXL-style) or a timestep condition "
                             "(LCM) is not supported; sd-unet handles SD 1.x / 2.x / Turbo style UNets")
        self.prompts = [str(p) for p in prompts]
        super().__init__(unet, preconditioning, device, vae, self.prompts, spec, scheduler_name)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prompt_embeddings = self.encode_prompts([*self.prompts, ""])  # row num_classes: the null class

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), tokens, D) text-encoder states, in the UNet's dtype."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    @property
    def model_num_classes(self) -> int:
        return len(self.prompts)

    @property
    def hook_points(self):
        return unet_hook_points(self.net)

    @property
    def default_layer(self) -> str:
        return "mid_block"

    @property
    def default_guidance(self) -> float:
        return DEFAULT_GUIDANCE

    def get_default_config(self) -> dict:
        return {**super().get_default_config(), "prompts": list(self.prompts)}

    def _call_net(self, x_in, t, class_labels):
        states = self.prompt_embeddings[class_labels]
        return self.net(x_in, t, encoder_hidden_states=states, return_dict=False)[0]

    @classmethod
    def _load(cls, source, dtype, classes, common, **kwargs: Any) -> SDUNetAdapter:
        diffusers = import_diffusers()
        import transformers

        source.require(cls.name, ["unet", "vae", "text_encoder", "tokenizer"])
        check_model_class(source, "unet", ("UNet2DConditionModel",), cls.name)
        unet = load_model(diffusers.UNet2DConditionModel, source, "unet", dtype)
        vae = load_model(diffusers.AutoencoderKL, source, "vae", dtype)
        text_encoder = load_model(transformers.CLIPTextModel, source, "text_encoder", dtype)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(source.spec, subfolder="tokenizer",
                                                               local_files_only=source.local_files_only)
        return cls(unet, vae, text_encoder, tokenizer, classes, **common, **kwargs)
