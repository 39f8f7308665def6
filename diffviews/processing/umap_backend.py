"""Which UMAP / nearest-neighbour implementation runs: cuML on a GPU, or umap-learn and
scikit-learn on the CPU.

cuML is used when ``cuml`` and ``cupy`` import, a CUDA device is visible, and the
environment variable ``DIFFVIEWS_FORCE_CPU`` is unset (or ``"0"``). Everything else runs on
umap-learn / scikit-learn. The heavy libraries are imported inside the functions that need
them, so importing this module costs nothing (no umap, no numba, no cuml).

    backend = select_backend()                      # "cuml" or "umap-learn"
    reducer = make_umap(backend, n_neighbors=15, n_components=2, random_state=42)
    distances, indices = nearest_neighbors(X, k=10)
"""

from __future__ import annotations

import functools
import os

import numpy as np

CUML = "cuml"
UMAP_LEARN = "umap-learn"
BACKENDS = (CUML, UMAP_LEARN)
FORCE_CPU_ENV = "DIFFVIEWS_FORCE_CPU"

__all__ = [
    "CUML", "UMAP_LEARN", "BACKENDS", "FORCE_CPU_ENV",
    "cuml_available", "force_cpu", "select_backend",
    "make_umap", "make_nearest_neighbors", "to_numpy", "nearest_neighbors",
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


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown UMAP backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def make_umap(backend: str, **params):
    """An unfitted UMAP estimator of ``backend`` with the given constructor parameters."""
    _check_backend(backend)
    if backend == CUML:
        from cuml.manifold import UMAP

        return UMAP(**params)
    from umap import UMAP

    if params.get("random_state") is not None:
        # a fixed seed makes umap-learn single-threaded anyway; saying so avoids its warning
        params.setdefault("n_jobs", 1)
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
