"""Train the bundled demo models on the CPU and write their weights into the package.

    python scripts/train_demo_models.py                 # both models, recipe defaults
    python scripts/train_demo_models.py --model digits --steps 500 --out /tmp/w

Writes ``<out>/<model>.safetensors`` (fp16 weights, network config in the metadata)
and ``<out>/<model>.json`` (data, steps, final loss, training time, git commit).
Seeded: the same command on the same torch build gives the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from diffviews.adapters import EDMDemoAdapter
from diffviews.demo import DEMO_MODELS, WEIGHTS_DIR
from diffviews.demo.datasets import load_dataset
from diffviews.demo.train import MODEL_RECIPES, save_weights, train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=DEMO_MODELS, action="append", help="model(s) to train (default: all)")
    p.add_argument("--steps", type=int, help="override the recipe's number of optimiser steps")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package)")
    p.add_argument("--init", type=Path, help="continue from these weights (.safetensors) instead of from scratch")
    p.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.model or DEMO_MODELS:
        net_cfg, train_cfg = MODEL_RECIPES[name]
        if args.steps:
            train_cfg = dataclasses.replace(train_cfg, steps=args.steps)
        if args.lr:
            train_cfg = dataclasses.replace(train_cfg, lr=args.lr)
        init = EDMDemoAdapter.from_checkpoint(args.init).model if args.init else None
        model, card = train(load_dataset(name), net_cfg, train_cfg, init=init)
        if args.init:
            card["training"]["init"] = {"weights": args.init.name, "card": _read_card(args.init)}
        path = save_weights(model, card, args.out, name)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB), final loss {card['training']['final_loss_ema']}")


def _read_card(weights: Path) -> dict | None:
    card = weights.with_suffix(".json")
    return json.loads(card.read_text()) if card.is_file() else None


if __name__ == "__main__":
    main()
