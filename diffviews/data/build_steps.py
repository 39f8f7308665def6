"""The steps every build shares (``build``, ``build-demo``, ``extract``): checking the inputs,
and writing config.json, images/, metadata.csv and each layer, each skipped when it is
present and valid. The entry points are in ``data.build`` and ``data.model_build``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.extraction import extract_activations
from .activations import delete_activations, list_layers
from .layers import delete_maps, ensure_layer, expected_rows, layer_source
from .layout import DataLayoutError, ModelPaths, load_config, write_config
from .metadata import Metadata, load_metadata, make_metadata, read_image, write_image, write_metadata

log = logging.getLogger("diffviews.data.build")

DEFAULT_NUM_SAMPLES = 1000
DEMO_ADAPTER = "edm-demo"
#: config.json keys that decide what the data holds; a config that differs in any of them is rewritten
BUILD_KEYS = ("adapter", "checkpoint", "noise_levels", "num_samples", "seed", "resolution", "channels",
              "class_names", "class_ids", "prompts", "batch_size", "source", "checkpoint_revision", "dtype")


# ---- choosing samples ----------------------------------------------------------------------

def stratified_subset(labels: np.ndarray, num_samples: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic subset with each class in proportion to its share
    (largest-remainder rounding); all indices when ``num_samples`` ≥ the dataset size."""
    labels = np.asarray(labels)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if num_samples >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * num_samples / len(labels)
    quota = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - quota), kind="stable")[: num_samples - quota.sum()]
    quota[extra] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def check_noise_levels(levels: Iterable[float]) -> list[float]:
    out = [float(v) for v in levels]
    if not out:
        raise ValueError("noise_levels must hold at least one level (in %, 0–100)")
    bad = [v for v in out if not (np.isfinite(v) and 0.0 <= v <= 100.0)]
    if bad:
        raise ValueError(f"noise level(s) {bad} out of range; expected values in [0, 100] %")
    if len(set(out)) != len(out):
        raise ValueError(f"noise_levels {out} repeat a level; expected distinct levels")
    return out


def check_layers(adapter, layers: Iterable[str], model: str) -> list[str]:
    layers = list(dict.fromkeys(layers))
    unknown = [layer for layer in layers if layer not in adapter.hook_points]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r} for model {model!r}; "
                         f"hookable layers: {', '.join(adapter.hookable_layers)}")
    return layers


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch's CPU intra-op thread count set to ``threads`` (None: as it is).
    One thread avoids the stalls of oversubscribed cores when other processes share the CPU."""
    if _check_threads(threads) is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


def _ensure_layer(paths: ModelPaths, adapter, layer: str, images: np.ndarray, labels: np.ndarray, source: dict,
                  force: bool, progress: bool, umap_params: dict | None, threads: int | None) -> None:
    """``layers.ensure_layer`` with activations extracted by ``adapter`` in this process."""
    def extract_into(name: str, out: np.ndarray) -> None:
        n_points = expected_rows(source)
        with torch_threads(threads), tqdm(total=n_points, desc=f"{paths.name}: extract {name}", unit="pt",
                                          disable=not progress, leave=False) as bar:
            extract_activations(adapter, images, labels, source["noise_levels"], [name], seed=source["seed"],
                                batch_size=source["batch_size"], out={name: out},
                                progress=lambda done, total: bar.update(done - bar.n))

    ensure_layer(paths, layer, source, None, adapter.get_layer_shapes()[layer], force=force,
                 umap_params=umap_params, extract_into=extract_into)


def write_samples_and_layers(paths: ModelPaths, adapter, config: dict, sample_ids: np.ndarray, images_u8: np.ndarray,
                             labels: np.ndarray, layers: Sequence[str], force: bool = False, progress: bool = True,
                             umap_params: dict | None = None, threads: int | None = None) -> None:
    """Write ``images/`` (``images_u8``: (S, H, W, C) uint8), ``metadata.csv`` and each of
    ``layers`` (activations + 2-D map) for the samples of a model folder whose config.json
    is ``config``, skipping what is present and valid (the second half of every build)."""
    levels = [float(v) for v in config["noise_levels"]]
    if _ensure_images(paths, sample_ids, images_u8, force, progress):
        _drop_layers(paths)  # an image changed: activations made from the old one are stale
    sigmas = [adapter.noise_level_to_native(v) for v in levels]
    metadata = make_metadata(sample_ids, labels, config["class_names"], levels, sigmas,
                             [paths.image(i).relative_to(paths.root).as_posix() for i in sample_ids])
    _ensure_metadata(paths, metadata, force)
    source = layer_source(paths, config, metadata)
    x = images_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    for layer in layers:
        _ensure_layer(paths, adapter, layer, x, labels, source, force, progress, umap_params, threads)


def _drop_layers(paths: ModelPaths) -> None:
    for layer in list_layers(paths):
        delete_activations(paths, layer)
        delete_maps(paths, layer)


def ensure_config(paths: ModelPaths, config: dict, force: bool) -> bool:
    """Write ``config`` unless config.json already holds it (in every ``BUILD_KEYS``); True when written."""
    if not force and paths.config.is_file():
        try:
            old = load_config(paths)
        except DataLayoutError as exc:
            log.info("[%s] config.json: invalid (%s), rewriting", paths.name, exc)
        else:
            changed = [k for k in BUILD_KEYS if old.get(k) != config.get(k)]
            if not changed:
                log.info("[%s] config.json: up to date, skipped", paths.name)
                return False
            log.info("[%s] config.json: %s changed, rewriting", paths.name, ", ".join(changed))
    write_config(paths, config)
    return True


def _ensure_images(paths: ModelPaths, sample_ids: np.ndarray, images: np.ndarray, force: bool,
                   progress: bool) -> bool:
    """Write the images that are missing or differ; True when an existing image was replaced."""
    paths.images.mkdir(parents=True, exist_ok=True)
    todo = [k for k, sid in enumerate(sample_ids) if force or not _image_matches(paths.image(sid), images[k])]
    replaced = not force and any(paths.image(sample_ids[k]).exists() for k in todo)
    wanted = {paths.image(sid).name for sid in sample_ids}
    stale = [p for p in paths.images.glob("*.png") if p.name not in wanted]
    for p in stale:
        p.unlink()
    if not todo:
        log.info("[%s] images/: %d PNGs up to date, skipped", paths.name, len(sample_ids))
        return False
    for k in tqdm(todo, desc=f"{paths.name}: write images", unit="img", disable=not progress, leave=False):
        write_image(paths.image(sample_ids[k]), images[k])
    log.info("[%s] images/: wrote %d of %d PNGs%s", paths.name, len(todo), len(sample_ids),
             f", removed {len(stale)} unused" if stale else "")
    return replaced


def _image_matches(path: Path, image: np.ndarray) -> bool:
    try:
        return np.array_equal(read_image(path), image)
    except DataLayoutError:
        return False


def _ensure_metadata(paths: ModelPaths, metadata: Metadata, force: bool) -> None:
    try:
        old = load_metadata(paths)
        same = old.equals(metadata)
        reason = "different points"
    except DataLayoutError as exc:
        same, reason = False, str(exc)
    if same and not force:
        log.info("[%s] metadata.csv: up to date (%d points), skipped", paths.name, len(metadata))
        return
    if not same:
        _drop_layers(paths)  # every layer's activations (and maps) follow the metadata's row order
        if paths.metadata.exists():
            log.info("[%s] metadata.csv: rebuilding (%s)", paths.name, reason)
    write_metadata(paths, metadata)
    log.info("[%s] metadata.csv: wrote %d points", paths.name, len(metadata))
