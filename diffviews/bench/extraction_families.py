"""Extraction throughput (points/s) per diffusers family, on tiny random models of the real
classes (diffviews.bench.tiny_diffusers) built in a scratch folder.

A point is one sample at one noise level. Each family records its default layer with
``core.extraction.extract_activations`` (the path ``build`` uses); latent families take
latents encoded once beforehand (not timed), as a build would. At tiny size this measures
the per-forward overhead of each family's path (hooks, preconditioning, conditioning),
not the speed of the real checkpoints.

    python -m diffviews.bench.extraction_families [--device cuda] [--points 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from .tiny_diffusers import build_tiny_family

#: benchmarked family → the tiny model it is measured on (the consistency and v-prediction
#: pixel UNets share the DDPM one's network)
FAMILY_MODELS = {"diffusers-unet": "ddpm-eps", "dit": "dit", "sd-unet": "sd"}
NOISE_LEVELS = (80.0, 40.0)


def measure(num_images: int = 256, batch_size: int = 64, device: str = "cpu", repeats: int = 3,
            root: Path | None = None) -> dict[str, float]:
    """{family: points per second} (best of ``repeats``) for ``num_images`` × 2 noise levels."""
    import torch

    from ..core.extraction import extract_activations

    with tempfile.TemporaryDirectory(prefix="diffviews-bench-") as tmp:
        root = Path(root or tmp)
        out: dict[str, float] = {}
        for family, model in FAMILY_MODELS.items():
            _, adapter = build_tiny_family(root, model, device=device)
            gen = torch.Generator().manual_seed(0)
            pixels = torch.rand(num_images, adapter.image_channels, adapter.image_resolution, adapter.image_resolution,
                                generator=gen) * 2 - 1
            x0 = adapter.encode(pixels.to(adapter.device)).cpu().numpy()
            labels = np.arange(num_images) % adapter.num_classes
            layer = [adapter.get_default_config()["default_layer"]]

            def run(n: int, x0=x0, labels=labels, adapter=adapter, layer=layer) -> None:
                extract_activations(adapter, x0[:n], labels[:n], NOISE_LEVELS, layer, batch_size=batch_size)
                if adapter.device.type == "cuda":
                    torch.cuda.synchronize()

            run(min(batch_size, num_images))  # warm-up: first-call allocations, kernels
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                run(num_images)
                best = min(best, time.perf_counter() - t0)
            out[family] = round(num_images * len(NOISE_LEVELS) / best, 1)
        return out


def section(quick: bool) -> dict:
    """The bench runner's ``extraction`` section: points/s per family on the CPU (1 torch thread,
    as a build with ``--threads 1``) and on CUDA when a GPU is present; skipped without diffusers."""
    import importlib.util

    import torch

    if importlib.util.find_spec("diffusers") is None or importlib.util.find_spec("transformers") is None:
        return {"skipped": "the diffusers extra is not installed (pip install 'diffviews[diffusers]')"}
    num_images, repeats = (32, 1) if quick else (256, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {"points": num_images * len(NOISE_LEVELS), "noise_levels": list(NOISE_LEVELS),
               "cpu_points_per_s": measure(num_images, repeats=repeats, device="cpu")}
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        out["cuda_points_per_s"] = measure(num_images, repeats=repeats, device="cuda")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=512, help="samples × noise levels (2 levels)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = measure(num_images=max(1, args.points // len(NOISE_LEVELS)), batch_size=args.batch_size,
                     device=args.device)
    for family, pps in result.items():
        print(f"{family:16s} {pps:10.1f} points/s")


if __name__ == "__main__":
    main()
