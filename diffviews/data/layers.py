"""ONE answer to "is layer L of model M built and valid?", and ONE way to build what is missing.

A layer is its activations (``activations/<layer>.npy`` + sidecar) and its 2-D map
(``embeddings/<layer>.csv`` + JSON). It is valid for a model folder when:

- the activations load, have one row per point, and their sidecar records the same
  *source* as the folder now has: noise levels, seed, samples, extraction batch size and
  the checkpoint with its SHA-256 (``layer_source``), so activations from other weights
  or other samples are never taken for this folder's;
- the map loads, has one row per activation row, was fitted from that same source (when
  it records one) and with the UMAP parameters asked for (those given).

    source = layer_source(paths, config, metadata)
    state = layer_state(paths, "mid", source)                 # LayerState(activations=…, map=…, reason=…)
    ensure_layer(paths, "mid", source, extract=…, shape=…)     # builds only what is missing

``diffviews extract`` / ``build-demo`` (``data.build``), the app's layer switch and the
bucket cache (``data.r2_cache``) all use these. How activations are extracted (a local
adapter, a backend) and where maps are fitted (this process, a GPU worker) is the caller's
choice, passed in as functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..processing.landmarks import fit_map
from ..processing.umap import UMAPPipeline
from .activations import delete_activations, load_activations, read_sidecar, save_activations
from .layout import DataLayoutError, ModelPaths, resolve_checkpoint
from .maps import ALIGNED_SUFFIX, load_embedding, map_files, save_embedding
from .metadata import Metadata

log = logging.getLogger(__name__)

__all__ = ["EXTRACT_BATCH", "LayerState", "layer_source", "expected_rows", "checkpoint_sha256", "checkpoint_identity",
           "source_mismatch", "check_layer_files", "layer_state", "ensure_layer", "delete_maps", "Extract", "Fit"]

#: extraction batch size; part of a layer's source because the noise drawn per batch depends on
#: it (same batch size → same noise for every layer)
EXTRACT_BATCH = 256

#: ``extract(layer) -> (N, D) float32``: the layer's activations for every point, in point order
Extract = Callable[[str], np.ndarray]
#: ``fit(activations) -> (fitted estimator, extra JSON metadata)``; the estimator has ``embedding_``
Fit = Callable[[np.ndarray], tuple[object, dict]]
Progress = Callable[..., object]

_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (or of every file under a checkpoint folder), computed
    once per process for each (path, size, modification time)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    key = (str(path), *((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    total = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if path.is_dir():
            total.update(f.relative_to(path).as_posix().encode() + b"\0" + h.hexdigest().encode())
        else:
            total = h
    digest = total.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def layer_source(paths: ModelPaths, config: dict, metadata: Metadata) -> dict:
    """What a layer's activations are built from; stored in the sidecar (and in the map's
    JSON under "source") and compared by ``layer_state``."""
    return {
        "noise_levels": [float(v) for v in config["noise_levels"]],
        "seed": int(config.get("seed", 0)),
        "num_samples": metadata.num_samples,
        "batch_size": int(config.get("batch_size", EXTRACT_BATCH)),
        "checkpoint": config["checkpoint"],
        "checkpoint_sha256": checkpoint_identity(paths, config),
    }


def checkpoint_identity(paths: ModelPaths, config: dict) -> str:
    """What identifies the weights: the SHA-256 of a local checkpoint (file or folder), or for a
    Hub model the revision recorded at build time (its weights are never read on this side)."""
    ref = resolve_checkpoint(paths, config)
    if isinstance(ref, str):
        return f"hub:{ref}@{config.get('checkpoint_revision') or 'unknown'}"
    return checkpoint_sha256(ref)


def expected_rows(source: dict) -> int:
    """Points of a layer built from ``source``: every sample at every noise level."""
    return int(source["num_samples"]) * len(source["noise_levels"])


def source_mismatch(recorded: dict, source: dict) -> list[str]:
    """The keys of ``source`` whose value ``recorded`` does not hold."""
    return [k for k, v in source.items() if recorded.get(k) != v]


@dataclass(frozen=True)
class LayerState:
    """Which parts of a layer are on disk and valid; ``reason`` says why one is not."""

    activations: bool
    map: bool
    reason: str = ""

    @property
    def built(self) -> bool:
        return self.activations and self.map


def check_layer_files(files: ModelPaths, layer: str, source: dict | None, require_map: bool = True,
                      umap_params: dict | None = None) -> None:
    """Raise ``DataLayoutError`` naming the first problem of the layer's files under ``files``
    (a model folder, or a staging folder with the same layout) against ``source`` (None:
    check the files only against each other). A present aligned 3-D map is checked too."""
    rows = _check_activations(files, layer, source)
    _check_maps(files, layer, source, rows, require_map, umap_params)


def _check_activations(files: ModelPaths, layer: str, source: dict | None) -> int:
    acts = load_activations(files, layer, expected_rows=expected_rows(source) if source else None, mmap=True)
    if source is not None:
        recorded = read_sidecar(files, layer)
        differ = source_mismatch(recorded, source)
        if differ:
            raise DataLayoutError(f"activations of {layer!r} were built with different {', '.join(differ)} than "
                                  f"this model folder (e.g. {differ[0]}={recorded.get(differ[0])!r}, "
                                  f"expected {source[differ[0]]!r})")
    return int(acts.shape[0])


def _check_maps(files: ModelPaths, layer: str, source: dict | None, rows: int, require_map: bool,
                umap_params: dict | None) -> None:
    for suffix, required in (("", require_map), (ALIGNED_SUFFIX, False)):
        if not required and not files.embedding(layer, suffix).is_file():
            continue
        embedding, meta = load_embedding(files, layer, suffix)
        name = files.embedding(layer, suffix).name
        if embedding.shape[0] != rows:
            raise DataLayoutError(f"{name} has {embedding.shape[0]} rows; the activations have {rows}")
        if suffix == "" and embedding.shape[1] != 2:
            raise DataLayoutError(f"{name} has {embedding.shape[1]} columns; a 2-D map has 2")
        if source is not None and meta.get("source", source) != source:
            raise DataLayoutError(f"{name} was fitted from other activations than this model folder's")
        params = meta.get("params", {})
        wrong = [k for k, v in (umap_params or {}).items() if suffix == "" and params.get(k) != v]
        if wrong:
            raise DataLayoutError(f"{name} was fitted with other UMAP parameters ({', '.join(wrong)})")


def layer_state(paths: ModelPaths, layer: str, source: dict | None, umap_params: dict | None = None) -> LayerState:
    """Whether ``layer``'s activations and map under ``paths`` are valid for ``source`` (see the module)."""
    try:
        rows = _check_activations(paths, layer, source)
    except DataLayoutError as exc:
        return LayerState(False, False, str(exc))
    try:
        _check_maps(paths, layer, source, rows, True, umap_params)
    except DataLayoutError as exc:
        return LayerState(True, False, str(exc))
    return LayerState(True, True)


def delete_maps(paths: ModelPaths, layer: str) -> None:
    """Remove the layer's 2-D and aligned 3-D maps (files and local caches)."""
    for suffix in ("", ALIGNED_SUFFIX):
        for p in map_files(paths, layer, suffix):
            p.unlink(missing_ok=True)


def fit_here(umap_params: dict | None = None, **map_options) -> Fit:
    """The default ``fit``: ``processing.landmarks.fit_map`` in this process (all points up to its
    threshold, landmarks above; ``map_options`` go to it). How the map was made is recorded
    under "map" in the map's JSON (``{"method": "full", "knn": ..., "deterministic": ...}`` or the
    landmark details)."""
    def fit(acts: np.ndarray):
        result = fit_map(acts, n_components=2, **map_options, **(umap_params or {}))
        pipe = result.pipeline if result.info["method"] == "full" else whole_map_pipeline(result, acts)
        return pipe, {"map": result.info}

    return fit


def whole_map_pipeline(result, acts: np.ndarray, batch: int = 65536) -> UMAPPipeline:
    """The landmark-fitted pipeline of ``result`` (a ``MapFit``) turned into one for the whole map:
    its scaler and PCA, every point's features and position, projecting new rows by k-NN
    interpolation over all points (as the non-landmark points were placed)."""
    pipe = result.pipeline
    features = np.empty((acts.shape[0], pipe.train_features_.shape[1]), dtype=np.float32)
    for start in range(0, acts.shape[0], batch):
        features[start:start + batch] = pipe.preprocess(np.asarray(acts[start:start + batch]))
    pipe.train_features_, pipe.embedding_, pipe.reducer_, pipe._knn = features, result.embedding, None, None
    return pipe


def _extract_streaming(paths: ModelPaths, layer: str, source: dict, shape: tuple[int, ...],
                       extract_into: Callable[[str, np.ndarray], object]) -> np.ndarray:
    """``extract_into(layer, out)`` writing into a memory-mapped ``.npy`` beside the activations
    (batches go to disk, never all rows in memory), then saved as the layer's activations."""
    n, d = expected_rows(source), int(np.prod(shape))
    tmp = paths.activations(layer).with_name(f".{layer}.{os.getpid()}.stream.npy")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
        extract_into(layer, out)
        out.flush()
        save_activations(paths, layer, out, source, shape=tuple(shape))
        del out
    finally:
        tmp.unlink(missing_ok=True)
    return load_activations(paths, layer, expected_rows=n, mmap=True)


def ensure_layer(paths: ModelPaths, layer: str, source: dict, extract: Extract | None, shape: tuple[int, ...],
                 fit: Fit | None = None, force: bool = False, umap_params: dict | None = None,
                 progress: Progress | None = None,
                 extract_into: Callable[[str, np.ndarray], object] | None = None) -> LayerState:
    """Build what is missing of ``layer`` (``force``: everything) and return its state before.

    Activations that are missing or stale are extracted with ``extract`` and saved with
    ``source`` and ``shape`` (their maps are deleted first: they are stale from then on);
    a missing or stale map is fitted with ``fit`` (default: ``fit_here(umap_params)``) and
    saved with ``source``. ``progress(fraction, desc=...)`` hears about each step.
    ``extract_into(layer, out)`` (instead of ``extract``) fills a memory-mapped (N, D) array in
    batches, so a layer bigger than memory streams to disk."""
    say = progress if progress is not None else (lambda *a, **k: None)  # a gr.Progress() is falsy
    before = LayerState(False, False, "rebuild forced") if force else layer_state(paths, layer, source, umap_params)
    name, n = paths.name, expected_rows(source)
    if before.activations:
        log.info("[%s] activations/%s.npy: up to date (%d points), skipped", name, layer, n)
    else:
        delete_maps(paths, layer)
        say(0.05, desc=f"Extracting layer {layer} for {n} points")
        t0 = time.perf_counter()
        if extract_into is not None:
            acts = _extract_streaming(paths, layer, source, shape, extract_into)
        else:
            acts = np.asarray(extract(layer))
        want_d = int(np.prod(shape))
        if acts.ndim != 2 or acts.shape != (n, want_d):
            delete_activations(paths, layer)
            raise RuntimeError(f"extraction of layer {layer!r} returned shape {acts.shape}; expected ({n}, {want_d})")
        if extract_into is None:
            save_activations(paths, layer, acts, source, shape=tuple(shape))
        log.info("[%s] activations/%s.npy: extracted %s in %.1fs", name, layer, acts.shape, time.perf_counter() - t0)
    if before.map:
        log.info("[%s] embeddings/%s.csv: up to date, skipped", name, layer)
    else:
        say(0.5, desc=f"Fitting the 2-D map of {layer} (UMAP)")
        t0 = time.perf_counter()
        acts = load_activations(paths, layer, expected_rows=n, mmap=True)  # a landmark fit reads only rows it needs
        estimator, extra = (fit or fit_here(umap_params))(acts)
        save_embedding(paths, layer, estimator, extra_meta={"source": source, **extra})
        log.info("[%s] embeddings/%s.csv: fitted 2-D map of %d points in %.1fs", name, layer, n,
                 time.perf_counter() - t0)
    say(1.0, desc=f"Layer {layer} ready")
    return before
