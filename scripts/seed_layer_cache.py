"""Precompute layers and upload them to the bucket layer cache (idempotent).

    python scripts/seed_layer_cache.py --data-dir data                       # every layer of every model
    python scripts/seed_layer_cache.py --data-dir data --model digits --layer enc_8x8 --dry-run
    python scripts/seed_layer_cache.py --data-dir data --modal               # fan out over Modal T4s

For each (model, layer): skipped when the bucket already holds it, valid and built from
the same samples; otherwise its activations are extracted and its map fitted (skipped
when already on disk) and the portable files (npy/json/csv) are uploaded. Without
``--model``/``--layer``: every model in the data directory (the bundled demo models when
it has none, built first) and every hookable layer of each. ``--modal`` runs the missing
layers on GPU containers of ``modal_gpu.py`` with ``.starmap`` (the worker's Volume holds
their files; the upload goes to the same bucket). The bucket comes from the ``R2_*``
variables (see diffviews/data/r2_cache.py). Exit code: 0 all done, 1 some failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffviews.data.layout import DataLayoutError, discover_models, load_adapter, model_paths
from diffviews.data.r2_cache import LayerCache, R2Settings, seed_layer
from diffviews.demo import DEMO_MODELS, weights_path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="data directory (one folder per model)")
    p.add_argument("--model", action="append", help="model to seed (repeatable; default: all)")
    p.add_argument("--layer", action="append", help="layer to seed (repeatable; default: every hookable layer)")
    p.add_argument("--dry-run", action="store_true", help="only report what is in the bucket and what is missing")
    p.add_argument("--modal", action="store_true", help="build the missing layers on Modal GPU containers")
    p.add_argument("--device", default="cpu", help="torch device for local extraction (default: cpu)")
    return p.parse_args(argv)


def hookable_layers(data_dir: Path, model: str) -> list[str]:
    paths = model_paths(data_dir, model)
    if paths.config.is_file():
        return list(load_adapter(paths, device="cpu").hookable_layers)
    from diffviews.adapters import get_adapter
    from diffviews.data.build import DEMO_ADAPTER

    return list(get_adapter(DEMO_ADAPTER).from_checkpoint(weights_path(model), device="cpu").hookable_layers)


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (model, layer) pairs to seed; raises ValueError naming a bad model or layer."""
    local = discover_models(args.data_dir)
    models = args.model or local or list(DEMO_MODELS)
    pairs = []
    for model in models:
        if model not in local and model not in DEMO_MODELS:
            raise ValueError(f"unknown model {model!r}: no {model}/config.json in {args.data_dir} and not a "
                             f"bundled demo model; models here: {', '.join(local) or '(none)'}")
        layers = hookable_layers(args.data_dir, model)
        for layer in args.layer or layers:
            if layer not in layers:
                raise ValueError(f"unknown layer {layer!r} for model {model!r}; hookable layers: {', '.join(layers)}")
            pairs.append((model, layer))
    return pairs


def seed_on_modal(pairs: list[tuple[str, str]]) -> list[str]:
    """Run ``GPUWorker.seed_layer`` for each pair on Modal (an ephemeral run of modal_gpu.py)."""
    sys.path.insert(0, str(ROOT))
    import modal_gpu

    with modal_gpu.app.run():
        results = modal_gpu.GPUWorker().seed_layer.starmap(pairs, return_exceptions=True)
        return [r if isinstance(r, str) else f"failed ({type(r).__name__}: {r})" for r in results]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        pairs = plan(args)
    except (ValueError, DataLayoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cache = LayerCache(args.data_dir)
    if not cache.enabled:
        print(f"error: no bucket configured; set {', '.join(R2Settings.missing())}", file=sys.stderr)
        return 2
    if not cache.reachable():
        print(f"error: bucket {cache.settings.bucket!r} at {cache.settings.endpoint_url} is not reachable "
              "(see the warning above)", file=sys.stderr)
        return 2
    if not args.modal and not args.dry_run:  # local builds need the model folders
        from diffviews.data.build import build_model_data

        for model in sorted({m for m, _ in pairs} - set(discover_models(args.data_dir))):
            build_model_data(args.data_dir, model)
    statuses = {}
    for model, layer in pairs:
        if args.modal or args.dry_run:
            statuses[model, layer] = "present" if cache.in_bucket(model, layer) else "missing"
        else:
            statuses[model, layer] = seed_layer(cache, model, layer, device=args.device)
        print(f"{model}/{layer}: {statuses[model, layer]}", flush=True)
    if args.modal and not args.dry_run:
        todo = [pair for pair, status in statuses.items() if status == "missing"]
        for pair, status in zip(todo, seed_on_modal(todo) if todo else []):
            statuses[pair] = status
            print(f"{pair[0]}/{pair[1]}: {status} (on Modal)", flush=True)
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in sorted(set(statuses.values()))}
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if any(v.startswith("failed") for v in statuses.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
