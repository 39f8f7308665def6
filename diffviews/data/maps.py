"""Maps on disk: reading and writing a layer's 2-D map and its aligned 3-D map.

On disk (paths from ``layout.ModelPaths``) a map is a CSV (``x,y[,z]``) plus a JSON
(parameters, backend, versions, and what it was fitted from). Those two files are the
truth and the only thing ever shared. The fitted estimator is also pickled next to them,
but only as a local cache, signed with this machine's key (``data.signing``): ``load_pipeline``
/ ``load_aligned`` unpickle it only when the signature matches, and use it when it
matches the CSV, and otherwise rebuild it from the activations (``load_pipeline`` refits
with the saved parameters; with ``refit=False``, or for the aligned map, the estimator
projects by k-NN interpolation of the saved map, without any UMAP fit).

The estimators themselves (``processing.umap``, ``processing.aligned_umap``) only compute.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from ..processing.aligned_umap import AlignedNoiseUMAP
from ..processing.quality import DEFAULT_K, TRUST_SAMPLE, map_quality
from ..processing.umap import UMAPPipeline, as_matrix, fit_scaled_pca, maps_match
from ..processing.umap_backend import CUML, UMAP_LEARN, select_backend
from .layout import DataLayoutError, ModelPaths, read_json_object
from .signing import SignatureError, open_signed, sign

logger = logging.getLogger(__name__)

__all__ = ["ALIGNED_SUFFIX", "embedding_columns", "save_embedding", "load_embedding", "embedding_is_valid",
           "load_cached_or_rebuild", "load_pipeline", "fit_layer_embedding", "fit_aligned_embedding",
           "load_aligned", "map_files", "QUALITY_KEY", "load_map_quality"]

#: file-name suffix of the aligned 3-D map of a layer (``<layer>_aligned.csv``)
ALIGNED_SUFFIX = "_aligned"
#: the map JSON's field holding ``processing.quality.map_quality`` of a 2-D map (in its fitted space)
QUALITY_KEY = "quality"


def map_files(paths: ModelPaths, layer: str, suffix: str = "") -> tuple[Path, Path, Path]:
    """The map's CSV, its JSON and the local pickle cache."""
    return paths.embedding(layer, suffix), paths.embedding_meta(layer, suffix), paths.reducer_cache(layer, suffix)


def embedding_columns(n_components: int) -> list[str]:
    names = ["x", "y", "z"]
    return names[:n_components] if n_components <= 3 else names + [f"c{i}" for i in range(3, n_components)]


def _versions(backend: str) -> dict:
    packages = ["umap-learn", "scikit-learn", "numpy", "pynndescent"] + (["cuml-cu12", "cupy-cuda12x"]
                                                                         if backend == CUML else [])
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _atomic_write(path: Path, write: Callable[[object], None], binary: bool = False) -> None:
    """Write through a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": "\n"})) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(path: Path, estimator) -> None:
    try:
        signed = sign(pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL))
        _atomic_write(path, lambda fh: fh.write(signed), binary=True)
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:  # a cache: never fatal
        logger.warning("could not write the local reducer cache %s: %s", path, exc)


def save_embedding(paths: ModelPaths, layer: str, pipeline, suffix: str = "", extra_meta: dict | None = None) -> Path:
    """Write the map as CSV + JSON (atomically) and the fitted pipeline as the local pickle cache.

    Works for any fitted estimator of this package (``UMAPPipeline``, ``AlignedNoiseUMAP``).
    Returns the CSV path.
    """
    pipeline._check_fitted()
    embedding = np.asarray(pipeline.embedding_, dtype=np.float32)
    if embedding.ndim != 2 or not np.isfinite(embedding).all():
        raise ValueError(f"refusing to save a map with shape {embedding.shape} or non-finite positions "
                         f"for layer {layer!r}")
    n_points, n_components = embedding.shape
    columns = embedding_columns(n_components)
    meta = {
        "kind": type(pipeline).__name__,
        "layer": layer,
        "suffix": suffix,
        "columns": columns,
        "n_points": int(n_points),
        "n_components": int(n_components),
        "n_features": int(pipeline.n_features_in_),
        "pca_components_used": None if pipeline.pca_ is None else int(pipeline.pca_.n_components_),
        "params": pipeline.get_params(),
        "backend": pipeline.backend_,
        "fit_seconds": round(float(pipeline.fit_seconds_), 3),
        "versions": _versions(pipeline.backend_),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise ValueError(f"extra_meta key {key!r} would overwrite a built-in field of the embedding JSON")
        meta[key] = value
    if QUALITY_KEY not in meta and isinstance(pipeline, UMAPPipeline) and n_components == 2:
        meta[QUALITY_KEY] = _quality(pipeline.train_features_, embedding)
    csv_path, meta_path = paths.embedding(layer, suffix), paths.embedding_meta(layer, suffix)
    _atomic_write(csv_path, lambda fh: np.savetxt(fh, embedding, fmt="%.9g", delimiter=",",
                                                  header=",".join(columns), comments=""))
    _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=2) + "\n"))
    _write_cache(paths.reducer_cache(layer, suffix), pipeline)
    return csv_path


def _read_meta(meta_path: Path, csv_path: Path) -> dict:
    meta = read_json_object(meta_path, "embedding metadata", f" (it goes with {csv_path.name})")
    for key in ("n_points", "n_components"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataLayoutError(f"{meta_path}: {key!r} must be a positive integer, got {value!r}")
    if not isinstance(meta.get("params", {}), dict):
        raise DataLayoutError(f"{meta_path}: 'params' must be an object, got {meta['params']!r}")
    return meta


def load_embedding(paths: ModelPaths, layer: str, suffix: str = "") -> tuple[np.ndarray, dict]:
    """The saved map ``(N, n_components) float32`` and its JSON metadata, validated.

    Reads two small files; never imports umap or fits anything. Raises ``DataLayoutError``
    naming the file and what was expected when a file is missing or malformed.
    """
    csv_path, meta_path = paths.embedding(layer, suffix), paths.embedding_meta(layer, suffix)
    if not csv_path.is_file():
        raise DataLayoutError(f"missing embedding {csv_path}")
    meta = _read_meta(meta_path, csv_path)
    n_points, n_components = meta["n_points"], meta["n_components"]
    columns = ",".join(embedding_columns(n_components))
    expected = f"a header {columns!r} and {n_points} rows of {n_components} comma-separated numbers"
    try:
        with open(csv_path, encoding="utf-8") as fh:
            header = fh.readline().strip()
            if header != columns:
                raise DataLayoutError(f"{csv_path} has header {header!r}; expected {expected} (per {meta_path.name})")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # loadtxt's "input contained no data"
                data = np.loadtxt(fh, delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, DataLayoutError):
            raise
        raise DataLayoutError(f"malformed embedding {csv_path}: {exc}; expected {expected}") from None
    if data.shape != (n_points, n_components):
        got = f"{data.shape[0]} rows of {data.shape[1]} values" if data.size else "no rows"
        raise DataLayoutError(f"{csv_path} holds {got}; expected {expected} (per {meta_path.name})")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DataLayoutError(f"{csv_path} holds NaN or infinite positions (first in data row {row}); "
                              "expected finite numbers")
    return np.ascontiguousarray(data), meta


def embedding_is_valid(paths: ModelPaths, layer: str, n_points: int, suffix: str = "") -> bool:
    """True when the saved map for ``layer`` loads cleanly and has ``n_points`` rows."""
    try:
        embedding, _ = load_embedding(paths, layer, suffix)
    except DataLayoutError:
        return False
    return embedding.shape[0] == int(n_points)


def _read_cache(path: Path, estimator_cls: type, n_features: int, embedding: np.ndarray):
    """The cached estimator, or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "missing"
    try:
        body = open_signed(path.read_bytes())
    except (SignatureError, OSError) as exc:
        return None, f"was not loaded: {exc}"
    try:
        obj = pickle.loads(body)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means "rebuild"
        return None, f"failed to load ({type(exc).__name__}: {exc})"
    if not isinstance(obj, estimator_cls) or not hasattr(obj, "embedding_"):
        return None, f"holds a {type(obj).__name__}, expected a fitted {estimator_cls.__name__}"
    if getattr(obj, "n_features_in_", None) != n_features:
        return None, f"was fitted on {getattr(obj, 'n_features_in_', None)} features, the activations have {n_features}"
    if not maps_match(np.asarray(obj.embedding_), embedding):
        return None, "its map differs from the saved CSV"
    return obj, ""


def load_cached_or_rebuild(paths: ModelPaths, layer: str, suffix: str, estimator_cls: type, activations,
                           rebuild: Callable[[np.ndarray, np.ndarray, dict], object]):
    """The shared load path: the saved map (validated), then the pickle cache if it is usable,
    otherwise ``rebuild(activations, embedding, meta)``, whose result is re-cached."""
    embedding, meta = load_embedding(paths, layer, suffix)
    X = as_matrix(activations, f"activations for layer {layer!r}")
    meta_path = paths.embedding_meta(layer, suffix)
    if X.shape[0] != meta["n_points"]:
        raise DataLayoutError(f"activations for layer {layer!r} have {X.shape[0]} rows but the map in "
                              f"{meta_path} has n_points={meta['n_points']}")
    if meta.get("n_features") not in (None, X.shape[1]):
        raise DataLayoutError(f"activations for layer {layer!r} have {X.shape[1]} features but {meta_path} "
                              f"says the map was fitted on n_features={meta['n_features']}")
    cache_path = paths.reducer_cache(layer, suffix)
    cached, why = _read_cache(cache_path, estimator_cls, X.shape[1], embedding)
    if cached is not None:
        return cached
    say = logger.info if why == "missing" else logger.warning
    say("reducer cache %s %s; rebuilding it from %s and the activations", cache_path, why,
        paths.embedding(layer, suffix).name)
    estimator = rebuild(X, embedding, meta)
    _write_cache(cache_path, estimator)
    return estimator


def _rebuild_pipeline(X: np.ndarray, embedding: np.ndarray, meta: dict, refit: bool) -> UMAPPipeline:
    names = UMAPPipeline._param_names()
    params = {k: v for k, v in meta.get("params", {}).items() if k in names}
    params["n_components"] = meta["n_components"]
    fitted_backend = meta.get("backend", UMAP_LEARN)
    if meta.get("map", {}).get("method", "full") != "full":
        refit = False  # a landmark map: refitting every point would not give it back (and takes long)
    same_backend_here = fitted_backend == UMAP_LEARN or (fitted_backend == CUML and select_backend() == CUML)
    if refit and same_backend_here:
        params["backend"] = fitted_backend
        pipe = UMAPPipeline(**params).fit(X)
        if maps_match(pipe.embedding_, embedding):
            return pipe
        logger.warning("refitting the map (%s) did not reproduce the saved CSV (library versions differ?); "
                       "projecting onto the saved map by k-NN instead", meta.get("layer", "?"))
    elif refit:
        logger.warning("the map was fitted with %s, which is not usable here; projecting onto the saved map "
                       "by k-NN", fitted_backend)
    return UMAPPipeline.from_embedding(X, embedding, backend_used=fitted_backend,
                                       fit_seconds=meta.get("fit_seconds", 0.0), **params)


def load_pipeline(paths: ModelPaths, layer: str, activations, suffix: str = "", refit: bool = True) -> UMAPPipeline:
    """The fitted pipeline for ``layer``: from the local pickle cache when it loads, is a
    UMAPPipeline for these activations and reproduces the saved CSV; otherwise refitted from
    ``activations`` with the saved parameters (deterministic, so the map stays put) and
    re-cached. ``refit=False`` skips the UMAP fit and projects by k-NN onto the saved map."""
    return load_cached_or_rebuild(paths, layer, suffix, UMAPPipeline, activations,
                                  lambda X, emb, meta: _rebuild_pipeline(X, emb, meta, refit))


def _quality(features: np.ndarray, embedding: np.ndarray) -> dict | None:
    """``map_quality`` with k = 15, or fewer for a map too small for that (None below 5 points)."""
    n = len(embedding)
    if n < 5:
        return None
    return map_quality(features, embedding, k=min(DEFAULT_K, (min(n, TRUST_SAMPLE) - 1) // 2))


def load_map_quality(paths: ModelPaths, layer: str, activations) -> dict | None:
    """The 2-D map's neighbourhood quality (``processing.quality.map_quality``, measured in the
    scaled + PCA space the map was fitted in): read from its JSON, or, for a map saved before
    the JSON held it, computed once now (scaler and PCA refitted with the saved parameters, no
    UMAP) and written into the JSON."""
    embedding, meta = load_embedding(paths, layer)
    if QUALITY_KEY in meta:  # None: a map too small to measure
        return meta[QUALITY_KEY]
    X = as_matrix(activations, f"activations for layer {layer!r}")
    if X.shape[0] != embedding.shape[0]:
        raise DataLayoutError(f"activations for layer {layer!r} have {X.shape[0]} rows; its map has "
                              f"{embedding.shape[0]}")
    params = meta.get("params", {})
    defaults = UMAPPipeline().get_params()
    _, _, features = fit_scaled_pca(X, params.get("pca_components", defaults["pca_components"]),
                                    params.get("random_state", defaults["random_state"]))
    quality = _quality(features, embedding)
    meta[QUALITY_KEY] = quality
    try:
        _atomic_write(paths.embedding_meta(layer), lambda fh: fh.write(json.dumps(meta, indent=2) + "\n"))
    except OSError as exc:  # a read-only data directory still gets the figures, just not cached
        logger.warning("could not cache the map quality in %s: %s", paths.embedding_meta(layer), exc)
    return quality


def fit_layer_embedding(paths: ModelPaths, layer: str, activations, n_components: int = 2, suffix: str = "",
                        extra_meta: dict | None = None, **params) -> UMAPPipeline:
    """Fit a ``UMAPPipeline`` on a layer's activations and save its map (CSV + JSON + cache)."""
    pipe = UMAPPipeline(n_components=n_components, **params).fit(activations)
    save_embedding(paths, layer, pipe, suffix=suffix, extra_meta=extra_meta)
    return pipe


def fit_aligned_embedding(paths: ModelPaths, layer: str, activations, level_of_row, sample_of_row,
                          extra_meta: dict | None = None, **params) -> AlignedNoiseUMAP:
    """Fit the aligned 3-D map of a layer and save it (``<layer>_aligned.csv/.json/.pkl``)."""
    model = AlignedNoiseUMAP(**params).fit(activations, level_of_row, sample_of_row)
    save_embedding(paths, layer, model, suffix=ALIGNED_SUFFIX, extra_meta=extra_meta)
    return model


def load_aligned(paths: ModelPaths, layer: str, activations) -> AlignedNoiseUMAP:
    """The fitted aligned map of a layer: from the local cache when it is valid, otherwise
    rebuilt from the saved CSV and the activations (no UMAP fit needed: the saved map is
    the state that matters, and projection is k-NN)."""
    def rebuild(X, embedding, meta):
        names = AlignedNoiseUMAP._param_names()
        params = {k: v for k, v in meta.get("params", {}).items() if k in names}
        return AlignedNoiseUMAP.from_embedding(X, embedding, fit_seconds=meta.get("fit_seconds", 0.0), **params)

    return load_cached_or_rebuild(paths, layer, ALIGNED_SUFFIX, AlignedNoiseUMAP, activations, rebuild)
