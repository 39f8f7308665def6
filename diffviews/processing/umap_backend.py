"""Which UMAP / nearest-neighbour implementation runs: cuML on a GPU, or umap-learn and
scikit-learn on the CPU.

cuML is used when ``cuml`` and ``cupy`` import, a CUDA device is visible, and the
environment variable ``DIFFVIEWS_FORCE_CPU`` is unset (or ``"0"``). Everything else runs on
umap-learn / scikit-learn. The heavy libraries are imported inside the functions that need
them, so importing this module costs nothing (no umap, no numba, no cuml).

umap-learn compiles its numba kernels in every process (tens of seconds on the first fit)
and asks numba to keep almost none of them on disk. ``enable_jit_cache()`` (called by
``make_umap``) turns numba's on-disk cache on for those kernels, so only the first process
on a machine compiles them; later ones load the machine code in well under a second. The
cache folder is ``$NUMBA_CACHE_DIR`` when set, else ``$DIFFVIEWS_CACHE_DIR/numba`` (default
``~/.cache/diffviews/numba``); ``DIFFVIEWS_JIT_CACHE=0`` leaves umap-learn as it is.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path

import numpy as np

CUML = "cuml"
UMAP_LEARN = "umap-learn"
BACKENDS = (CUML, UMAP_LEARN)
FORCE_CPU_ENV = "DIFFVIEWS_FORCE_CPU"
JIT_CACHE_ENV = "DIFFVIEWS_JIT_CACHE"
CACHE_DIR_ENV = "DIFFVIEWS_CACHE_DIR"
FAST_LAYOUT_ENV = "DIFFVIEWS_FAST_LAYOUT"
#: umap-learn modules whose numba kernels ``enable_jit_cache`` keeps on disk (those not cached
#: already). pynndescent's nearest-neighbour descent is left alone: its entry kernel uses dynamic
#: globals, which numba cannot cache, and UMAPPipeline avoids it below EXACT_KNN_MAX_POINTS.
_KERNEL_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse", "umap.spectral")

logger = logging.getLogger(__name__)

__all__ = [
    "CUML", "UMAP_LEARN", "BACKENDS", "FORCE_CPU_ENV",
    "JIT_CACHE_ENV", "CACHE_DIR_ENV", "jit_cache_dir", "cuml_available", "force_cpu", "select_backend",
    "jit_cache_wanted", "enable_jit_cache", "FAST_LAYOUT_ENV", "fast_layout_wanted", "fast_layout_applies",
    "make_umap", "make_nearest_neighbors", "to_numpy", "nearest_neighbors", "ExactNeighbors",
]


@functools.lru_cache(maxsize=1)
def cuml_available() -> bool:
    """True when cuml and cupy import and at least one CUDA device is visible (probed once)."""
    try:
        import cuml  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDA driver/runtime errors: all mean "not usable here"
        return False


def force_cpu() -> bool:
    """True when ``DIFFVIEWS_FORCE_CPU`` holds a non-empty value other than ``"0"``."""
    value = os.environ.get(FORCE_CPU_ENV, "").strip()
    return value not in ("", "0")


def select_backend(prefer: str | None = None) -> str:
    """The backend to fit with: ``"cuml"`` or ``"umap-learn"``.

    ``prefer=None`` picks cuML when it is usable and the CPU is not forced; ``"umap-learn"``
    always gives the CPU; ``"cuml"`` demands the GPU and raises when it is not usable.
    """
    if prefer is not None and prefer not in BACKENDS:
        raise ValueError(f"unknown UMAP backend {prefer!r}; choose one of {', '.join(BACKENDS)} or None")
    if prefer == UMAP_LEARN:
        return UMAP_LEARN
    if prefer == CUML:
        if force_cpu():
            raise RuntimeError(f"backend 'cuml' requested but {FORCE_CPU_ENV}={os.environ[FORCE_CPU_ENV]!r} "
                               "forces the CPU; unset it or ask for 'umap-learn'")
        if not cuml_available():
            raise RuntimeError("backend 'cuml' requested but cuML is not usable here: it needs the 'gpu' extra "
                               "(cuml-cu12, cupy-cuda12x) and a visible CUDA device; use 'umap-learn' instead")
        return CUML
    return CUML if not force_cpu() and cuml_available() else UMAP_LEARN


def jit_cache_wanted() -> bool:
    """False when ``DIFFVIEWS_JIT_CACHE`` is ``"0"`` (keep umap-learn's kernels in memory only)."""
    return os.environ.get(JIT_CACHE_ENV, "").strip() != "0"


def jit_cache_dir() -> Path:
    """Where umap-learn's compiled kernels are kept: ``$NUMBA_CACHE_DIR`` when set (numba's own
    setting, which then holds every library's cached kernels), else ``<cache>/numba`` with
    ``<cache>`` = ``$DIFFVIEWS_CACHE_DIR``, or ``$XDG_CACHE_HOME/diffviews``, or ``~/.cache/diffviews``."""
    numba_dir = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if numba_dir:
        return Path(numba_dir)
    root = os.environ.get(CACHE_DIR_ENV, "").strip()
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        root = str(Path(xdg) / "diffviews") if xdg else str(Path.home() / ".cache" / "diffviews")
    return Path(root) / "numba"


_jit_cache_lock = threading.Lock()
_jit_cache_kernels: int | None = None


def enable_jit_cache() -> int:
    """Ask numba to cache umap-learn's compiled kernels on disk, in ``jit_cache_dir()`` (once per
    process, before the first fit compiles them). Returns how many kernels now cache: 0 when
    ``DIFFVIEWS_JIT_CACHE=0`` or the folder cannot be created.

    numba's own cache rules apply: an entry is reused only for the same kernel source, argument
    types and CPU, so a new umap-learn version or another machine simply compiles again."""
    global _jit_cache_kernels
    with _jit_cache_lock:
        if _jit_cache_kernels is not None:
            return _jit_cache_kernels
        _jit_cache_kernels = 0
        if not jit_cache_wanted():
            return 0
        folder = jit_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("numba kernel cache disabled: cannot create %s (%s)", folder, exc)
            return 0
        import importlib

        from numba.core import config as numba_config
        from numba.core.dispatcher import Dispatcher

        previous = numba_config.CACHE_DIR
        numba_config.CACHE_DIR = str(folder)  # read when each kernel's cache is set up, just below
        try:
            for name in _KERNEL_MODULES:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                for kernel in list(vars(module).values()):
                    if not (isinstance(kernel, Dispatcher) and kernel.__module__ == name):
                        continue
                    if type(getattr(kernel, "_cache", None)).__name__ != "NullCache":
                        continue  # declared cache=True by its library: numba keeps it already
                    try:
                        kernel.enable_caching()
                    except Exception as exc:  # noqa: BLE001 - an uncacheable kernel compiles as before
                        logger.debug("numba cannot cache %s.%s: %s", name, kernel.__name__, exc)
                        continue
                    _jit_cache_kernels += 1
        finally:
            numba_config.CACHE_DIR = previous  # other libraries keep numba's default places
        logger.debug("numba keeps %d umap-learn kernels in %s", _jit_cache_kernels, folder)
        return _jit_cache_kernels


def fast_layout_wanted() -> bool:
    """False when ``DIFFVIEWS_FAST_LAYOUT`` is ``"0"`` (umap-learn's own layout kernel throughout)."""
    return os.environ.get(FAST_LAYOUT_ENV, "").strip() != "0"


def fast_layout_applies(params: dict) -> bool:
    """Whether a umap-learn UMAP with constructor ``params`` lays its map out with
    ``layout.optimize_layout`` (float32, serial): wanted, seeded, Euclidean output, no densMAP."""
    return (fast_layout_wanted() and params.get("random_state") is not None
            and params.get("output_metric", "euclidean") in ("euclidean", "l2")
            and not params.get("densmap", False) and not params.get("output_dens", False))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown UMAP backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def make_umap(backend: str, **params):
    """An unfitted UMAP estimator of ``backend`` with the given constructor parameters; a seeded
    umap-learn one lays its map out in float32 (``layout.FastLayoutUMAP``, unless
    ``DIFFVIEWS_FAST_LAYOUT=0``; see ``fast_layout_applies``)."""
    _check_backend(backend)
    if backend == CUML:
        from cuml.manifold import UMAP

        return UMAP(**params)
    enable_jit_cache()
    if params.get("random_state") is not None:
        # a fixed seed makes umap-learn single-threaded anyway; saying so avoids its warning
        params.setdefault("n_jobs", 1)
    if fast_layout_applies(params):
        from .layout import FastLayoutUMAP

        return FastLayoutUMAP(**params)
    from umap import UMAP

    return UMAP(**params)


def make_nearest_neighbors(backend: str, n_neighbors: int):
    """An unfitted exact nearest-neighbour index: cuML on the GPU, scikit-learn on the CPU."""
    _check_backend(backend)
    if backend == CUML:
        from cuml.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=n_neighbors)
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=n_neighbors)


def to_numpy(x, dtype=np.float32) -> np.ndarray:
    """A host numpy array of ``dtype`` from numpy, cupy, cuDF/pandas or anything array-like."""
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "get"):  # cupy ndarray
        x = x.get()
    elif hasattr(x, "to_numpy"):  # cuDF / pandas frames and series
        x = x.to_numpy()
        if hasattr(x, "get"):
            x = x.get()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def nearest_neighbors(X, k: int, backend: str | None = None, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``X`` (Euclidean) for every row of ``queries`` (default: ``X``
    itself, in which case each row is its own first neighbour at distance 0).

    Returns numpy ``(distances (M, k) float32, indices (M, k) int64)``.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (N, D) array, got shape {X.shape}")
    if not 1 <= int(k) <= X.shape[0]:
        raise ValueError(f"k={k} is out of range: must be between 1 and the number of rows ({X.shape[0]})")
    Q = X if queries is None else np.asarray(queries, dtype=np.float32)
    if Q.ndim != 2 or Q.shape[1] != X.shape[1]:
        raise ValueError(f"queries must be (M, {X.shape[1]}), got shape {Q.shape}")
    index = make_nearest_neighbors(select_backend(backend), int(k)).fit(X)
    distances, indices = index.kneighbors(Q)
    return to_numpy(distances, np.float32), to_numpy(indices, np.int64)


class ExactNeighbors:
    """Exact Euclidean nearest neighbours among the rows of ``data`` (N, p), on the CPU: a
    ``knn.KnnIndex`` prepared on the first query and kept for the next ones.

    The chosen neighbours' distances are recomputed directly in float64, so a row's own
    distance is exactly 0 and a query row gets the same neighbours and distances whichever
    rows it is batched with.

    It also answers umap-learn's search-index interface (``query(X, k, epsilon)`` returning
    ``(indices int32, distances float32)``, and ``_angular_trees``), so a UMAP fitted with
    ``precomputed_knn=(indices, distances, ExactNeighbors(data))`` keeps ``transform``.
    """

    _angular_trees = False  # read by umap-learn's transform to pick its search epsilon

    def __init__(self, data):
        self.data = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
        if self.data.ndim != 2 or self.data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty (N, p) array, got shape {self.data.shape}")
        self._index = None

    def __getstate__(self):
        return {"data": self.data}  # the prepared index is rebuilt on the first query

    def __setstate__(self, state):
        self.__init__(state["data"])

    def kneighbors(self, X, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of ``data`` for each row of ``X``, nearest first (ties by row):
        ``(distances (M, k) float64, indices (M, k) int64)``."""
        from .knn import KnnIndex  # imports numba: only when searching

        if self._index is None:
            self._index = KnnIndex(self.data)
        indices, distances = self._index.search(k, np.asarray(X))
        return distances, indices

    def query(self, X, k: int, epsilon: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """umap-learn's search-index call: ``(indices (M, k) int32, distances (M, k) float32)``;
        ``epsilon`` (the approximate search's slack) does not apply to an exact search."""
        distances, indices = self.kneighbors(X, k)
        return indices.astype(np.int32), distances.astype(np.float32)
