"""Activations → 2-D (or 3-D) maps: fit, project, and the portable artefacts on disk.

``UMAPPipeline`` is StandardScaler → PCA (skipped when the activations are already small)
→ UMAP with a fixed ``random_state``, as a scikit-learn style estimator:

    pipe = UMAPPipeline(n_neighbors=15, min_dist=0.1).fit(activations)    # (N, D) float32
    pipe.embedding_                          # (N, 2) float32, the map
    pipe.transform(trajectory)               # (M, 2): new activations projected onto the map

On disk (paths from ``diffviews.data.layout.ModelPaths``) the map is a CSV (``x,y[,z]``) plus
a JSON (parameters, backend, versions). Those two files are the truth and the only thing
ever shared. The fitted pipeline is also pickled next to them, but only as a local cache:
``load_pipeline`` uses it when it loads and matches the CSV, and otherwise refits from the
activations with the saved parameters (or, with ``refit=False``, rebuilds a pipeline that
projects by k-NN interpolation of the saved map, without any UMAP fit).

Speed on the CPU (umap-learn), without changing what the map is:

- Below 4096 points umap-learn finds each point's exact neighbours through a pairwise loop
  that calls a compiled distance once per pair from Python (~17 s at 4000 points); above,
  it searches approximately with pynndescent, whose numba code compiles for 20-40 s in
  every process (it cannot be cached). Below ``EXACT_KNN_MAX_POINTS`` (16384) the pipeline
  hands umap-learn exact neighbours from BLAS instead (``ExactNeighbors``: 0.5 s at 4000
  points) as ``precomputed_knn``, with an index that keeps ``transform`` working.
  ``DIFFVIEWS_EXACT_KNN=0`` turns this off.
- The rest of umap-learn's numba code is kept on disk once compiled
  (``umap_backend.enable_jit_cache``), so only the first process on a machine compiles it;
  ``warmup()`` loads (or compiles) it in a background thread at start-up.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from ..data.layout import DataLayoutError, ModelPaths, read_json_object
from .umap_backend import (
    CUML,
    UMAP_LEARN,
    ExactNeighbors,
    make_nearest_neighbors,
    make_umap,
    select_backend,
    to_numpy,
)

logger = logging.getLogger(__name__)

__all__ = [
    "UMAPPipeline", "EstimatorParams", "interpolate_embedding",
    "save_embedding", "load_embedding", "load_pipeline", "load_cached_or_rebuild",
    "fit_layer_embedding", "embedding_is_valid", "embedding_columns", "warmup",
]

# Relative tolerance (to the map's spread) when checking that a map matches the saved CSV.
_MATCH_RTOL = 1e-4
# Most rows per call to a reducer's transform (umap-learn changes its epochs above 10000).
_MAX_REDUCER_BATCH = 8192
#: below this many points a umap-learn fit gets exact neighbours from ``ExactNeighbors``
EXACT_KNN_MAX_POINTS = 16384
EXACT_KNN_ENV = "DIFFVIEWS_EXACT_KNN"
WARMUP_LARGE_ENV = "DIFFVIEWS_WARMUP_LARGE"


def exact_knn_wanted(n_points: int, backend: str, metric: str) -> bool:
    """Whether a fit of ``n_points`` rows gets its exact neighbours from ``ExactNeighbors``:
    umap-learn, Euclidean metric, fewer than ``EXACT_KNN_MAX_POINTS`` rows and
    ``DIFFVIEWS_EXACT_KNN`` not ``"0"``. (umap-learn itself computes exact neighbours below
    4096 points, slowly, and approximate ones by nearest-neighbour descent above, whose
    numba code cannot be cached on disk and compiles for 20-40 s in every process.)"""
    return (backend == UMAP_LEARN and metric == "euclidean" and n_points < EXACT_KNN_MAX_POINTS
            and os.environ.get(EXACT_KNN_ENV, "").strip() != "0")


class EstimatorParams:
    """get_params / set_params / repr from the constructor signature, as in scikit-learn
    (kept local so that importing this module does not import scikit-learn)."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [name for name in signature.parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid parameters: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "embedding_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")


def as_matrix(X, name: str = "X", n_features: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``X`` as a C-contiguous float32 (N, D) array; clear errors for wrong shapes and non-finite values."""
    try:
        A = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric (N, D) array: {exc}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {A.shape}")
    if A.shape[0] < min_rows:
        raise ValueError(f"{name} has {A.shape[0]} rows; at least {min_rows} are needed")
    if n_features is not None and A.shape[1] != n_features:
        raise ValueError(f"{name} has {A.shape[1]} features per row; the pipeline was fitted on {n_features}")
    if A.size and not np.isfinite(A).all():
        row = int(np.flatnonzero(~np.isfinite(A).all(axis=1))[0])
        raise ValueError(f"{name} holds NaN or infinite values (first in row {row})")
    return A


def fit_scaled_pca(X: np.ndarray, pca_components: int | None, random_state: int | None):
    """Fit StandardScaler → PCA on ``X``; PCA is skipped (None) when ``D <= pca_components`` or
    ``pca_components`` is falsy. Returns ``(scaler, pca, reduce_features(scaler, pca, X))``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    pca = None
    if pca_components and X.shape[1] > int(pca_components):
        pca = PCA(n_components=min(int(pca_components), X.shape[0]), random_state=random_state)
        pca.fit(scaler.transform(X))
    return scaler, pca, reduce_features(scaler, pca, X)


def reduce_features(scaler, pca, X: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    """Rows scaled and PCA-projected, as float32.

    Computed in float64 and rounded, so a row gets the same bits whichever rows it is batched
    with: BLAS picks different kernels for different batch shapes, and umap-learn's transform
    seeds each row's random state from the bits of its starting position, so a 1-ulp change
    would move the projected point visibly.
    """
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    if pca is not None:
        pca_mean = np.asarray(pca.mean_, dtype=np.float64)
        components = np.asarray(pca.components_, dtype=np.float64).T
    out = np.empty((X.shape[0], X.shape[1] if pca is None else components.shape[1]), dtype=np.float32)
    for start in range(0, X.shape[0], chunk_rows):
        Z = (np.asarray(X[start:start + chunk_rows], dtype=np.float64) - mean) / scale
        if pca is not None:
            Z = (Z - pca_mean) @ components
        out[start:start + chunk_rows] = Z
    return out


def interpolate_embedding(distances: np.ndarray, indices: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Inverse-distance-weighted mean of the neighbours' map positions.

    ``distances``/``indices`` are (M, k) from a nearest-neighbour query against the rows of
    ``embedding`` (N, c); a query at distance 0 from a row lands on that row.
    """
    d = np.asarray(distances, dtype=np.float64)
    w = 1.0 / np.maximum(d, 1e-12)
    w /= w.sum(axis=1, keepdims=True)
    points = np.asarray(embedding, dtype=np.float64)[np.asarray(indices)]
    return np.einsum("mk,mkc->mc", w, points).astype(np.float32)


class KNNProjector:
    """Projects rows of a feature space onto a map by k-NN interpolation of the map (CPU, scikit-learn)."""

    def __init__(self, features: np.ndarray, embedding: np.ndarray, n_neighbors: int):
        self.embedding = embedding
        self.k = max(1, min(int(n_neighbors), features.shape[0]))
        self.index = make_nearest_neighbors(UMAP_LEARN, self.k).fit(features)

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        distances, indices = self.index.kneighbors(Z, n_neighbors=self.k)
        return interpolate_embedding(distances, indices, self.embedding)


class UMAPPipeline(EstimatorParams):
    """StandardScaler → PCA → UMAP, fitted once per layer; projects new activations onto the map.

    Fitted attributes: ``scaler_``, ``pca_`` (None when PCA was skipped), ``reducer_`` (the
    UMAP model; None when rebuilt from the saved map), ``train_features_`` (N, p) float32
    (training rows after scaling and PCA), ``embedding_`` (N, n_components) float32,
    ``backend_`` ("cuml" or "umap-learn"), ``n_features_in_``, ``fit_seconds_``, ``knn_method_``
    ("exact": neighbours from ``ExactNeighbors``; "umap": found by the UMAP library itself).
    After ``transform``: ``transform_method_`` is "reducer" (UMAP's own transform) or "knn"
    (inverse-distance-weighted k-NN interpolation of ``embedding_`` in the PCA space).
    """

    def __init__(self, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1,
                 pca_components: int | None = 50, random_state: int | None = 42, metric: str = "euclidean",
                 backend: str | None = None):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.pca_components = pca_components
        self.random_state = random_state
        self.metric = metric
        self.backend = backend

    # -- fitting ---------------------------------------------------------------------------------
    def _fit_preprocessing(self, X: np.ndarray) -> np.ndarray:
        self.scaler_, self.pca_, Z = fit_scaled_pca(X, self.pca_components, self.random_state)
        self.train_features_ = Z
        self.n_features_in_ = X.shape[1]
        self._knn = None
        return Z

    def fit(self, X, y=None) -> UMAPPipeline:
        X = as_matrix(X, "activations", min_rows=3)
        t0 = time.perf_counter()
        backend = select_backend(self.backend)
        Z = self._fit_preprocessing(X)
        n_neighbors = int(min(self.n_neighbors, X.shape[0] - 1))
        params = dict(n_components=int(self.n_components), n_neighbors=n_neighbors, min_dist=float(self.min_dist),
                      metric=self.metric, random_state=self.random_state)
        self.knn_method_ = "umap"
        if exact_knn_wanted(Z.shape[0], backend, self.metric):
            index = ExactNeighbors(Z)
            distances, indices = index.kneighbors(Z, n_neighbors)
            # int32 / float32, as umap-learn's own search returns them (the same compiled kernels serve both)
            params["precomputed_knn"] = (indices.astype(np.int32), distances.astype(np.float32), index)
            self.knn_method_ = "exact"
        reducer = make_umap(backend, **params)
        with warnings.catch_warnings():
            # umap-learn warns that an index that is not its own NNDescent cannot transform; this one can
            warnings.filterwarnings("ignore", message=r".*knn_search_index.*", category=UserWarning)
            self.embedding_ = to_numpy(reducer.fit_transform(Z))
        self.reducer_ = reducer
        self.backend_ = backend
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).embedding_

    @classmethod
    def from_embedding(cls, activations, embedding, backend_used: str = UMAP_LEARN, fit_seconds: float = 0.0,
                       **params) -> UMAPPipeline:
        """A pipeline rebuilt from portable artefacts without a UMAP fit: the scaler and PCA are
        refitted from ``activations`` (cheap, deterministic) and ``embedding`` is the saved map.
        It projects by k-NN interpolation (``reducer_`` is None)."""
        pipe = cls(**params)
        X = as_matrix(activations, "activations", min_rows=1)
        E = as_matrix(embedding, "embedding")
        if E.shape[0] != X.shape[0]:
            raise ValueError(f"embedding has {E.shape[0]} rows but activations have {X.shape[0]}")
        pipe._fit_preprocessing(X)
        pipe.embedding_ = E
        pipe.reducer_ = None
        pipe.backend_ = backend_used
        pipe.fit_seconds_ = float(fit_seconds)
        return pipe

    # -- projecting ------------------------------------------------------------------------------
    def preprocess(self, X) -> np.ndarray:
        """Rows of activations in the scaled (and PCA-reduced) space the map was fitted in."""
        self._check_fitted()
        return reduce_features(self.scaler_, self.pca_, as_matrix(X, "X", n_features=self.n_features_in_, min_rows=0))

    def transform(self, X, batch_size: int = 4096) -> np.ndarray:
        """Project (M, D) activations onto the map, ``batch_size`` rows at a time → (M, n_components) float32."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        Z = self.preprocess(X)
        use_reducer = self.reducer_ is not None and hasattr(self.reducer_, "transform")
        self.transform_method_ = "reducer" if use_reducer else "knn"
        if use_reducer:  # umap-learn optimises calls of more than 10000 rows for fewer epochs
            batch_size = min(int(batch_size), _MAX_REDUCER_BATCH)
        out = np.empty((Z.shape[0], self.embedding_.shape[1]), dtype=np.float32)
        for start in range(0, Z.shape[0], int(batch_size)):
            batch = Z[start:start + int(batch_size)]
            if use_reducer:
                out[start:start + len(batch)] = self._reducer_transform(batch)
            else:
                out[start:start + len(batch)] = self._knn_projector()(batch)
        return out

    def _reducer_transform(self, Z: np.ndarray) -> np.ndarray:
        """UMAP's own transform, made independent of how rows are batched.

        umap-learn scales each call's optimisation by the largest edge weight in that call, so
        the same row lands slightly differently in different batches. Appending one training
        row (weight exactly 1, the largest possible) pins that maximum; every other step of the
        transform treats rows independently, with a per-row random state.
        """
        if self.backend_ != UMAP_LEARN:
            return to_numpy(self.reducer_.transform(Z))
        pinned = np.concatenate([Z, self.train_features_[:1]], axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return to_numpy(self.reducer_.transform(pinned))[:-1]

    def _knn_projector(self) -> KNNProjector:
        if getattr(self, "_knn", None) is None:
            self._knn = KNNProjector(self.train_features_, self.embedding_, self.n_neighbors)
        return self._knn

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_knn"] = None  # rebuilt on demand; keeps the cache small
        return state


# -- artefacts on disk ---------------------------------------------------------------------------

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
        _atomic_write(path, lambda fh: pickle.dump(estimator, fh, protocol=pickle.HIGHEST_PROTOCOL), binary=True)
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


def maps_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same positions up to a tiny fraction of the map's spread."""
    if a.shape != b.shape:
        return False
    spread = float(np.ptp(b, axis=0).max()) if b.size else 0.0
    return bool(np.allclose(a, b, rtol=0.0, atol=_MATCH_RTOL * max(spread, 1.0)))


def _read_cache(path: Path, estimator_cls: type, n_features: int, embedding: np.ndarray):
    """The cached estimator, or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "missing"
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
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
    log = logger.info if why == "missing" else logger.warning
    log("reducer cache %s %s; rebuilding it from %s and the activations", cache_path, why,
        paths.embedding(layer, suffix).name)
    estimator = rebuild(X, embedding, meta)
    _write_cache(cache_path, estimator)
    return estimator


def _rebuild_pipeline(X: np.ndarray, embedding: np.ndarray, meta: dict, refit: bool) -> UMAPPipeline:
    names = UMAPPipeline._param_names()
    params = {k: v for k, v in meta.get("params", {}).items() if k in names}
    params["n_components"] = meta["n_components"]
    fitted_backend = meta.get("backend", UMAP_LEARN)
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


def fit_layer_embedding(paths: ModelPaths, layer: str, activations, n_components: int = 2, suffix: str = "",
                        extra_meta: dict | None = None, **params) -> UMAPPipeline:
    """Fit a ``UMAPPipeline`` on a layer's activations and save its map (CSV + JSON + cache)."""
    pipe = UMAPPipeline(n_components=n_components, **params).fit(activations)
    save_embedding(paths, layer, pipe, suffix=suffix, extra_meta=extra_meta)
    return pipe


# -- JIT warm-up ---------------------------------------------------------------------------------

_warmup_lock = threading.Lock()
_warmup_thread: threading.Thread | None = None


def _warmup_now(large: bool) -> None:
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # what UMAPPipeline runs below EXACT_KNN_MAX_POINTS: exact neighbours given to umap-learn
        pipe = UMAPPipeline(n_neighbors=10, pca_components=None, random_state=0, backend=UMAP_LEARN).fit(X)
        pipe.transform(X[:8] + 0.01)
        if large:  # umap-learn's own nearest-neighbour descent (forced here on tiny data)
            reducer = make_umap(UMAP_LEARN, n_components=2, n_neighbors=10, random_state=0, n_epochs=20,
                                force_approximation_algorithm=True)
            reducer.fit(X)
            reducer.transform(X[:8] + 0.01)
    logger.info("umap-learn JIT warm-up done in %.1f s", time.perf_counter() - t0)


def warmup(background: bool = True, large: bool | None = None) -> threading.Thread | None:
    """Compile (or, once a process has compiled them, load from numba's on-disk cache)
    umap-learn's kernels now, on a tiny random set, so that the first real fit and transform
    in this process do not pay it. ``large`` also compiles umap-learn's nearest-neighbour
    descent, used from ``EXACT_KNN_MAX_POINTS`` points on: 20-40 s of CPU in every process,
    mostly holding the GIL, which slows a starting app's first page down by half. It is off
    unless asked for, here or with ``DIFFVIEWS_WARMUP_LARGE=1`` (for data with maps that big).

    Runs once per process; with ``background=True`` in a daemon thread, which is returned
    (join it to wait). Returns None when it ran in the foreground, already ran, or cuML will
    do the fitting."""
    if large is None:
        large = os.environ.get(WARMUP_LARGE_ENV, "").strip() == "1"
    global _warmup_thread
    if select_backend() == CUML:
        return None
    with _warmup_lock:
        if _warmup_thread is not None:
            return _warmup_thread if _warmup_thread.is_alive() else None
        thread = threading.Thread(target=_warmup_guarded, args=(large,), name="umap-jit-warmup", daemon=True)
        _warmup_thread = thread
        if background:
            thread.start()
            return thread
    thread.run()
    return None


def _warmup_guarded(large: bool) -> None:
    try:
        _warmup_now(large)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first fit is slower
        logger.exception("umap-learn JIT warm-up failed")
