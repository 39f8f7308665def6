"""Activations → 2-D (or 3-D) maps: fit and project (computation only; files: ``data.maps``).

``UMAPPipeline`` is StandardScaler → PCA (skipped when the activations are already small)
→ UMAP with a fixed ``random_state``, as a scikit-learn style estimator:

    pipe = UMAPPipeline(n_neighbors=15, min_dist=0.1).fit(activations)    # (N, D) float32
    pipe.embedding_                          # (N, 2) float32, the map
    pipe.transform(trajectory)               # (M, 2): new activations projected onto the map

Speed on the CPU (umap-learn), without changing what the map is:

- Below 4096 points umap-learn finds each point's exact neighbours through a pairwise loop
  that calls a compiled distance once per pair from Python (~17 s at 4000 points); above,
  it searches approximately with pynndescent, whose numba code compiles for 20-40 s in
  every process (it cannot be cached). Below ``EXACT_KNN_MAX_POINTS`` (300k) the pipeline
  hands umap-learn exact neighbours instead (``knn.exact_knn``: float32 BLAS on every CPU,
  0.15 s at 4000 points, 15 s at 100k on 2 cores) as ``precomputed_knn``, with an index
  (``ExactNeighbors``) that keeps ``transform`` working. ``DIFFVIEWS_EXACT_KNN=0`` turns
  this off. At 100k points (64-D) the whole fit takes 50 s instead of 64 s; the rest is
  umap-learn's layout (~30 s of SGD for its 200 epochs, ~8 s graph and spectral init).
- A seeded umap-learn fit lays its map out with ``layout.optimize_layout``: umap-learn's
  algorithm in float32 with cheaper powers and independent negative samples, about 2.2×
  faster per epoch;
  maps of at most ``SMALL_MAP_POINTS`` points get ``SMALL_MAP_EPOCHS`` (300) epochs instead
  of umap-learn's 500 (``fit_info()`` records ``"layout"`` and ``"n_epochs"``).
  ``DIFFVIEWS_FAST_LAYOUT=0`` gives umap-learn's own layout and epochs.
- The layout stays serial and seeded (``fit_info()["deterministic"]``): umap-learn's
  parallel SGD (``random_state=None``, 2 threads) was no faster on this 2-core machine
  (38.0 s vs 38.7 s at 100k, 3.56 s vs 3.57 s at 4000) and gives a different map every run.
- The rest of umap-learn's numba code is kept on disk once compiled
  (``umap_backend.enable_jit_cache``), so only the first process on a machine compiles it;
  ``warmup()`` loads (or compiles) it in a background thread at start-up.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import warnings

import numpy as np

from .pca import fit_pca, fit_standardiser, standardise
from .umap_backend import (
    CUML,
    UMAP_LEARN,
    ExactNeighbors,
    fast_layout_applies,
    make_nearest_neighbors,
    make_umap,
    select_backend,
    to_numpy,
)

logger = logging.getLogger(__name__)

__all__ = ["UMAPPipeline", "EstimatorParams", "KNNProjector", "interpolate_embedding", "maps_match", "warmup"]

# Relative tolerance (to the map's spread) when checking that a map matches the saved CSV.
_MATCH_RTOL = 1e-4
# Most rows per call to a reducer's transform (umap-learn changes its epochs above 10000).
_MAX_REDUCER_BATCH = 8192
#: below this many points a umap-learn fit gets exact neighbours from ``knn.exact_knn`` (float32
#: BLAS on every CPU: ~15 s at 100k points on 2 cores; the cost grows as N², and maps above
#: ``landmarks.LANDMARK_THRESHOLD`` are fitted on landmarks anyway)
EXACT_KNN_MAX_POINTS = 300_000
EXACT_KNN_ENV = "DIFFVIEWS_EXACT_KNN"
#: layout epochs of a map of at most ``SMALL_MAP_POINTS`` points laid out by ``layout.optimize_layout``
#: (umap-learn's own default there: 500). Measured at 4000 points (digits demo, enc_16x16, 4096-D,
#: seed 42; 15-NN preservation judged in scikit-learn's PCA space): 300 epochs 0.318 in ~1.0 s,
#: 400 epochs 0.322, 500 epochs 0.328 in ~1.5 s; umap-learn's own 500-epoch layout 0.329 in
#: 3.3 s, the plain pipeline 0.327. Larger maps keep umap-learn's 200.
SMALL_MAP_EPOCHS = 300
SMALL_MAP_POINTS = 10000
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
    """Fit the standardiser → PCA of ``pca.py`` on ``X``; PCA is skipped (None) when
    ``D <= pca_components`` or ``pca_components`` is falsy. Returns
    ``(scaler, pca, reduce_features(scaler, pca, X))``."""
    scaler = fit_standardiser(X)
    pca = None
    if pca_components and X.shape[1] > int(pca_components):
        pca = fit_pca(standardise(X, scaler), min(int(pca_components), X.shape[0]), random_state)
    return scaler, pca, reduce_features(scaler, pca, X)


def reduce_features(scaler, pca, X: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    """Rows scaled and PCA-projected, as float32.

    Computed in float64 and rounded, so a row gets the same bits whichever rows it is batched
    with: BLAS picks different kernels for different batch shapes, and umap-learn's transform
    seeds each row's random state from the bits of its starting position, so a 1-ulp change
    would move the projected point visibly. With PCA the scaling is folded into the projection
    (``X @ (components / scale) - offset``: one product, no scaled copy of the rows).
    """
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    if pca is not None:
        components = np.asarray(pca.components_, dtype=np.float64).T
        weights = components / scale[:, None]
        offset = (mean / scale + np.asarray(pca.mean_, dtype=np.float64)) @ components
    out = np.empty((X.shape[0], X.shape[1] if pca is None else components.shape[1]), dtype=np.float32)
    for start in range(0, X.shape[0], chunk_rows):
        rows = np.asarray(X[start:start + chunk_rows], dtype=np.float64)
        out[start:start + chunk_rows] = (rows - mean) / scale if pca is None else rows @ weights - offset
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
    ("exact": neighbours from ``knn.exact_knn``; "umap": found by the UMAP library itself),
    ``deterministic_`` (seeded umap-learn: its layout runs on one thread; see ``fit_info``).
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
            from .knn import exact_knn  # imports numba: only when fitting

            indices, distances = exact_knn(Z, n_neighbors)
            index = ExactNeighbors(Z)  # answers umap-learn's transform queries
            # int32 / float32, as umap-learn's own search returns them (the same compiled kernels serve both)
            params["precomputed_knn"] = (indices.astype(np.int32), distances.astype(np.float32), index)
            self.knn_method_ = "exact"
        fast_layout = backend == UMAP_LEARN and fast_layout_applies(params)
        if fast_layout and Z.shape[0] <= SMALL_MAP_POINTS:
            params["n_epochs"] = SMALL_MAP_EPOCHS
        reducer = make_umap(backend, **params)
        self.layout_ = "float32" if fast_layout else backend
        self.n_epochs_ = params.get("n_epochs")
        with warnings.catch_warnings():
            # umap-learn warns that an index that is not its own NNDescent cannot transform; this one can
            warnings.filterwarnings("ignore", message=r".*knn_search_index.*", category=UserWarning)
            self.embedding_ = to_numpy(reducer.fit_transform(Z))
        self.reducer_ = reducer
        self.backend_ = backend
        # umap-learn lays out serially, and so reproducibly, when seeded; cuML's GPU layout is not bit-exact
        self.deterministic_ = backend == UMAP_LEARN and self.random_state is not None
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def fit_info(self) -> dict:
        """How this map was made, JSON-ready: ``{"knn": "exact" | "umap", "deterministic": bool,
        "layout": "float32" | "umap-learn" | "cuml", "n_epochs": int | None}`` ("exact": neighbours
        from ``knn.exact_knn``; "umap": found by the UMAP library; deterministic: the same
        activations and parameters give the same map, bit for bit; layout "float32":
        ``layout.optimize_layout``, otherwise the library's own; n_epochs: layout epochs when set
        here, None for the library's default)."""
        self._check_fitted()
        return {"knn": getattr(self, "knn_method_", "umap"),
                "deterministic": bool(getattr(self, "deterministic_", False)),
                "layout": getattr(self, "layout_", getattr(self, "backend_", UMAP_LEARN)),
                "n_epochs": getattr(self, "n_epochs_", None)}

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


def maps_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same positions up to a tiny fraction of the map's spread."""
    if a.shape != b.shape:
        return False
    spread = float(np.ptp(b, axis=0).max()) if b.size else 0.0
    return bool(np.allclose(a, b, rtol=0.0, atol=_MATCH_RTOL * max(spread, 1.0)))



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
