"""Build a model's data folder: samples × noise levels → images, metadata, activations, maps.

    build_demo("data")                                  # data/digits/ and data/shapes/
    model_build.build("data", "google/ddpm-cifar10-32", "cifar", images="my_images")  # any model
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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..demo import DEMO_MODELS
from .build_steps import (
    BUILD_KEYS,
    DEFAULT_NUM_SAMPLES,
    DEMO_ADAPTER,
    _check_threads,
    _ensure_layer,
    check_layers,
    check_noise_levels,
    ensure_config,
    stratified_subset,
    torch_threads,
    write_samples_and_layers,
)
from .layers import layer_source
from .layout import DataLayoutError, ModelPaths, discover_models, load_adapter, load_config, model_paths
from .metadata import load_metadata, load_sample_images
from .model_build import build

#: the entry points, and the build steps' public names (``build_steps``) for existing callers
__all__ = ["build_demo", "build_model_data", "build_layer", "build_layers", "build", "BUILD_KEYS",
           "DEFAULT_NUM_SAMPLES", "DEMO_ADAPTER", "check_layers", "check_noise_levels", "ensure_config",
           "stratified_subset", "torch_threads", "write_samples_and_layers"]

# ---- the bundled demo models -----------------------------------------------------------

def build_model_data(data_dir: str | Path, model: str, layers: Sequence[str] | None = None,
                     num_samples: int | None = None, noise_levels: Sequence[float] | None = None, seed: int = 0,
                     device: str = "cpu", force: bool = False, progress: bool = True,
                     umap_params: dict | None = None, threads: int | None = None) -> ModelPaths:
    """Build ``data_dir/<model>/`` for a bundled demo model from its bundled dataset: the
    demo case of ``model_build.build`` (see the module docstring).

    ``num_samples`` real images (default 1000, class-stratified, chosen with ``seed``) are
    noised to each of ``noise_levels`` (default: the adapter's) with noise drawn from
    ``seed``; ``layers`` (default: the adapter's default layer) are recorded and mapped
    with ``umap_params`` (UMAPPipeline arguments). ``threads`` limits torch's CPU threads
    during extraction; ``force`` rebuilds every part."""
    if model not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {model!r}; bundled demo models: {', '.join(DEMO_MODELS)}")
    return build(data_dir, model, model, layers=layers, num_samples=num_samples, noise_levels=noise_levels,
                 seed=seed, device=device, force=force, progress=progress, umap_params=umap_params,
                 threads=threads)


def build_demo(data_dir: str | Path, models: Sequence[str] = DEMO_MODELS, **kw) -> dict[str, ModelPaths]:
    """``build_model_data`` for each demo model; keyword arguments are passed through."""
    unknown = [m for m in models if m not in DEMO_MODELS]
    if unknown:
        raise ValueError(f"unknown demo model {unknown[0]!r}; bundled demo models: {', '.join(DEMO_MODELS)}")
    return {m: build_model_data(data_dir, m, **kw) for m in models}


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
