"""Build a model's data folder: samples × noise levels → images, metadata, activations, maps.

    build_demo("data")                                  # data/digits/ and data/shapes/
    build_model_data("data", "digits", num_samples=200)
    build_layer("data", "digits", "enc_8x8")            # one more layer for a built model

Every part is checked before it is built and skipped when it is present and valid, so a
re-run is fast; a part that is missing, corrupt or out of date is rebuilt on its own. A
part that depends on a rebuilt one (activations on the metadata, a map on its
activations) is removed first, so an interrupted build never leaves a stale part that
looks valid. Whether a layer is valid, and building the missing parts of one, is
``data.layers``' (shared with the app and the bucket cache). What is built or skipped is
logged to the ``diffviews.data.build`` logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.extraction import extract_activations
from ..demo import DEMO_MODELS, weights_path
from .activations import delete_activations, list_layers
from .layers import delete_maps, ensure_layer, expected_rows, layer_source
from .layout import (
    PACKAGE_PREFIX,
    DataLayoutError,
    ModelPaths,
    discover_models,
    load_adapter,
    load_config,
    model_paths,
    write_config,
)
from .metadata import (
    Metadata,
    load_metadata,
    load_sample_images,
    make_metadata,
    read_image,
    write_image,
    write_metadata,
)

log = logging.getLogger(__name__)

DEFAULT_NUM_SAMPLES = 1000
DEMO_ADAPTER = "edm-demo"
#: config.json keys that decide what the data holds; a config that differs in any of them is rewritten
BUILD_KEYS = ("adapter", "checkpoint", "noise_levels", "num_samples", "seed", "resolution", "channels",
              "class_names")


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


# ---- the bundled demo models -----------------------------------------------------------

def build_model_data(data_dir: str | Path, model: str, layers: Sequence[str] | None = None,
                     num_samples: int | None = None, noise_levels: Sequence[float] | None = None, seed: int = 0,
                     device: str = "cpu", force: bool = False, progress: bool = True,
                     umap_params: dict | None = None, threads: int | None = None) -> ModelPaths:
    """Build ``data_dir/<model>/`` for a bundled demo model (see the module docstring).

    ``num_samples`` real images (default 1000, class-stratified, chosen with ``seed``) are
    noised to each of ``noise_levels`` (default: the adapter's) with noise drawn from
    ``seed``; ``layers`` (default: the adapter's default layer) are recorded and mapped
    with ``umap_params`` (UMAPPipeline arguments). ``threads`` limits torch's CPU threads
    during extraction; ``force`` rebuilds every part."""
    from ..adapters import get_adapter
    from ..demo.datasets import load_dataset

    if model not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {model!r}; bundled demo models: {', '.join(DEMO_MODELS)}")
    _check_threads(threads)
    t_start = time.perf_counter()
    paths = model_paths(data_dir, model)
    weights = weights_path(model)
    if not weights.is_file():
        raise DataLayoutError(f"bundled weights for {model!r} are missing: expected {weights} "
                              f"(train them with scripts/train_demo_models.py)")
    adapter = get_adapter(DEMO_ADAPTER).from_checkpoint(weights, device=device)
    defaults = adapter.get_default_config()
    levels = check_noise_levels(defaults["noise_levels"] if noise_levels is None else noise_levels)
    layers = check_layers(adapter, [defaults["default_layer"]] if layers is None else layers, model)
    if not layers:
        raise ValueError("layers must name at least one layer")

    dataset = load_dataset(model)
    idx = stratified_subset(dataset.labels, DEFAULT_NUM_SAMPLES if num_samples is None else num_samples, seed)
    if num_samples is not None and len(idx) < num_samples:
        log.info("[%s] dataset has %d images; using all of them", model, len(idx))
    images_u8, labels = dataset.images[idx], dataset.labels[idx]

    config = {
        "adapter": DEMO_ADAPTER,
        "checkpoint": f"{PACKAGE_PREFIX}demo/weights/{weights.name}",
        **defaults,
        "noise_levels": levels,
        "class_names": list(dataset.class_names),
        "num_samples": int(len(idx)),
        "seed": int(seed),
        "resolution": adapter.resolution,
        "channels": adapter.channels,
    }
    _ensure_config(paths, config, force)
    _ensure_images(paths, idx, images_u8, force, progress)
    sigmas = [adapter.noise_level_to_native(v) for v in levels]
    metadata = make_metadata(idx, labels, dataset.class_names, levels, sigmas,
                             [paths.image(i).relative_to(paths.root).as_posix() for i in idx])
    _ensure_metadata(paths, metadata, force)

    source = layer_source(paths, config, metadata)
    x = images_u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    for layer in layers:
        _ensure_layer(paths, adapter, layer, x, labels, source, force, progress, umap_params, threads)
    log.info("[%s] done in %.1fs: %s", model, time.perf_counter() - t_start, paths.root)
    return paths


def build_demo(data_dir: str | Path, models: Sequence[str] = DEMO_MODELS, **kw) -> dict[str, ModelPaths]:
    """``build_model_data`` for each demo model; keyword arguments are passed through."""
    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        raise ValueError(f"unknown demo model {unknown[0]!r}; bundled demo models: {', '.join(DEMO_MODELS)}")
    return {m: build_model_data(data_dir, m, **kw) for m in models}


def _ensure_config(paths: ModelPaths, config: dict, force: bool) -> None:
    if not force and paths.config.is_file():
        try:
            old = load_config(paths)
        except DataLayoutError as exc:
            log.info("[%s] config.json: invalid (%s), rewriting", paths.name, exc)
        else:
            changed = [k for k in BUILD_KEYS if old.get(k) != config[k]]
            if not changed:
                log.info("[%s] config.json: up to date, skipped", paths.name)
                return
            log.info("[%s] config.json: %s changed, rewriting", paths.name, ", ".join(changed))
    write_config(paths, config)


def _ensure_images(paths: ModelPaths, sample_ids: np.ndarray, images: np.ndarray, force: bool,
                   progress: bool) -> None:
    paths.images.mkdir(parents=True, exist_ok=True)
    todo = [k for k, sid in enumerate(sample_ids) if force or not _image_matches(paths.image(sid), images[k])]
    wanted = {paths.image(sid).name for sid in sample_ids}
    stale = [p for p in paths.images.glob("*.png") if p.name not in wanted]
    for p in stale:
        p.unlink()
    if not todo:
        log.info("[%s] images/: %d PNGs up to date, skipped", paths.name, len(sample_ids))
        return
    for k in tqdm(todo, desc=f"{paths.name}: write images", unit="img", disable=not progress, leave=False):
        write_image(paths.image(sample_ids[k]), images[k])
    log.info("[%s] images/: wrote %d of %d PNGs%s", paths.name, len(todo), len(sample_ids),
             f", removed {len(stale)} unused" if stale else "")


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
        # every layer's activations (and maps) follow the metadata's row order: drop them
        for layer in list_layers(paths):
            delete_activations(paths, layer)
            delete_maps(paths, layer)
        if paths.metadata.exists():
            log.info("[%s] metadata.csv: rebuilding (%s)", paths.name, reason)
    write_metadata(paths, metadata)
    log.info("[%s] metadata.csv: wrote %d points", paths.name, len(metadata))


# ---- one more layer for a built model folder -----------------------------------------------

def build_layer(data_dir: str | Path, model: str, layer: str, device: str = "cpu", force: bool = False,
                progress: bool = True, umap_params: dict | None = None, threads: int | None = None) -> ModelPaths:
    """Extract ``layer`` for every point of an existing model folder (its config.json,
    metadata.csv and images) and fit its 2-D map, with the folder's noise levels and seed."""
    return build_layers(data_dir, model, [layer], device=device, force=force, progress=progress,
                        umap_params=umap_params, threads=threads)


def build_layers(data_dir: str | Path, model: str, layers: Sequence[str], device: str = "cpu", force: bool = False,
                 progress: bool = True, umap_params: dict | None = None, threads: int | None = None) -> ModelPaths:
    """``build_layer`` for several layers; every name is checked before any work starts."""
    _check_threads(threads)
    available = discover_models(data_dir)
    if model not in available:
        raise DataLayoutError(f"no model {model!r} in data directory {data_dir} (no {model}/config.json); "
                              f"models found: {', '.join(available) or '(none)'}")
    paths = model_paths(data_dir, model)
    config = load_config(paths)
    metadata = load_metadata(paths)
    levels = check_noise_levels(config["noise_levels"])
    samples = metadata.sample_id[metadata.sample_rows]
    if not (np.array_equal(metadata.noise_level, np.repeat(levels, len(samples)))
            and np.array_equal(metadata.sample_id, np.tile(samples, len(levels)))):
        raise DataLayoutError(f"{paths.metadata} does not hold {paths.config}'s noise_levels {levels} in "
                              f"noise-level-major order (point j*S+i = sample i at level j, S = {len(samples)}); "
                              f"it has levels {metadata.noise_levels} over {len(metadata)} rows")
    adapter = load_adapter(paths, device=device)
    layers = check_layers(adapter, layers, model)
    if not layers:
        raise ValueError("layers must name at least one layer")
    images, labels = load_sample_images(paths, metadata)
    source = layer_source(paths, config, metadata)
    for layer in layers:
        _ensure_layer(paths, adapter, layer, images, labels, source, force, progress, umap_params, threads)
    return paths
