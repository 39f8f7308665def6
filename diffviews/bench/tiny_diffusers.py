"""Tiny, randomly initialised models of the REAL diffusers / transformers classes, saved as
safetensors folders (whole pipelines where the family needs them). Built offline in seconds;
used by the tests (tests/tiny_diffusers.py) and the per-family extraction benchmark.

Untrained weights are enough for what they are used for (loading, shapes, hooks, masking,
noise mapping, speed); image quality means nothing here. Needs the ``diffusers`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# one small UNet layout shared by the pixel and SD families: a tuple-returning down block,
# an attention block, a mid block
_UNET_BLOCKS = {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4}
TOKENS = 8  # the tiny tokenizer's model_max_length


def _pixel_unet(num_class_embeds: int | None = None):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                       num_class_embeds=num_class_embeds, **_UNET_BLOCKS)


def build_ddpm_pipeline(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """DDPMPipeline: unconditional pixel UNet2DModel + DDPMScheduler (a pipeline folder)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    torch.manual_seed(seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    DDPMPipeline(unet=_pixel_unet(), scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def build_bare_unet(folder: Path, num_classes: int = 4, prediction_type: str = "v_prediction", seed: int = 0) -> Path:
    """A bare class-conditional UNet2DModel folder (config.json + weights + scheduler_config.json)."""
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    _pixel_unet(num_classes).save_pretrained(folder, safe_serialization=True)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder)
    return folder


def build_consistency_pipeline(folder: Path, num_classes: int = 4, seed: int = 0) -> Path:
    """ConsistencyModelPipeline: class-conditional UNet2DModel + CMStochasticIterativeScheduler."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline

    torch.manual_seed(seed)
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    ConsistencyModelPipeline(unet=_pixel_unet(num_classes), scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True)
    return folder


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
                         norm_num_groups=4, sample_size=8)


def build_dit_pipeline(folder: Path, seed: int = 0) -> Path:
    """DiTPipeline: DiTTransformer2DModel (1000 classes + null, learned sigma) + AutoencoderKL + DDIM."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=3, sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
    DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler()).save_pretrained(
        folder, safe_serialization=True)
    return folder


def _byte_chars() -> list[str]:
    """The 256 characters byte-level BPE uses for bytes: printable Latin-1 bytes stand for
    themselves, every other byte for a code point from 256 up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json (every byte character alone and with </w>, start/end tokens) and a merges
    file with only its version line: the real CLIPTokenizer then splits text into characters."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    """StableDiffusionPipeline: UNet2DConditionModel + AutoencoderKL + CLIPTextModel / CLIPTokenizer,
    EulerDiscreteScheduler (epsilon)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = folder.parent / f"{folder.name}_tokenizer_src"
    write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=TOKENS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, **_UNET_BLOCKS)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


#: family → (builder, adapter name, from_pretrained kwargs)
TINY_PROMPTS = ["a red square", "a blue circle"]
TINY_FAMILIES = {
    "ddpm-eps": (build_ddpm_pipeline, "diffusers-unet", {}),
    "bare-v": (build_bare_unet, "diffusers-unet", {}),
    "consistency": (build_consistency_pipeline, "diffusers-unet", {}),
    "dit": (build_dit_pipeline, "dit", {}),
    "sd": (build_sd_pipeline, "sd-unet", {"classes": TINY_PROMPTS}),
}


def build_tiny_family(root: Path, family: str, seed: int = 0, device: str = "cpu"):
    """Build ``family`` (a key of TINY_FAMILIES) under ``root/family`` and load it on
    ``device``: returns (folder, adapter)."""
    from ..adapters import get_adapter

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    build, adapter_name, kwargs = TINY_FAMILIES[family]
    folder = build(Path(root) / family, seed=seed)
    return folder, get_adapter(adapter_name).from_pretrained(folder, device=device, **kwargs)
