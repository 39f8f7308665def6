"""Training of the bundled demo models (EDM loss, label dropout for CFG, EMA weights).

``scripts/train_demo_models.py`` is the command-line front; this module holds the recipe
so tests can train a tiny model with the very same code.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .datasets import Dataset
from .unet import DemoUNet, EDMDenoiser, UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    ema_decay: float = 0.999
    label_dropout: float = 0.15
    seed: int = 0
    hflip: bool = False


MODEL_RECIPES: dict[str, tuple[UNetConfig, TrainConfig]] = {
    "digits": (
        UNetConfig(resolution=16, in_channels=1, num_classes=10, channels=(16, 32, 64),
                   class_names=tuple(str(i) for i in range(10))),
        TrainConfig(steps=3000),
    ),
    "shapes": (
        UNetConfig(resolution=32, in_channels=3, num_classes=6, channels=(16, 64, 128),
                   class_names=("circle", "square", "triangle", "star", "cross", "ring")),
        TrainConfig(steps=3500, hflip=True),
    ),
}


def train(dataset: Dataset, net_config: UNetConfig, cfg: TrainConfig, log_every: int = 100,
          log=print, init: EDMDenoiser | None = None) -> tuple[EDMDenoiser, dict]:
    """Train a denoiser on ``dataset`` (from scratch, or on from ``init``); returns the EMA
    model and a training card."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = torch.from_numpy(dataset.as_model_input())
    labels = torch.from_numpy(dataset.labels)
    model = EDMDenoiser(DemoUNet(net_config))
    if init is not None:
        model.load_state_dict(init.state_dict())
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    null = net_config.num_classes
    t0 = time.perf_counter()
    running = None
    for step in range(cfg.steps):
        idx = torch.from_numpy(rng.integers(0, len(data), cfg.batch_size))
        x0, y = data[idx], labels[idx].clone()
        if cfg.hflip:
            flip = torch.rand(len(x0)) < 0.5
            x0[flip] = x0[flip].flip(-1)
        y[torch.rand(len(y)) < cfg.label_dropout] = null
        loss = model.loss(x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            log(f"[{dataset.name}] step {step + 1}/{cfg.steps} loss {running:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    card = {
        "model": dataset.name,
        "data": {"name": dataset.name, "num_images": len(dataset),
                 "image_shape": list(dataset.images.shape[1:]), "classes": list(dataset.class_names)},
        "network": net_config.to_dict(),
        "training": {**cfg.__dict__, "final_loss_ema": round(float(running), 5),
                     "train_seconds": round(time.perf_counter() - t0, 1),
                     "torch": torch.__version__, "git_commit": _git_commit()},
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema.eval(), card


def save_weights(model: EDMDenoiser, card: dict, out_dir: Path, name: str) -> Path:
    """Write ``<name>.safetensors`` (fp16, config in the metadata) and ``<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.net.state_dict().items()
               if v.is_floating_point()}
    save_file(tensors, str(path), metadata={"config": json.dumps(model.net.config.to_dict())})
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "none (no commit yet)"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
