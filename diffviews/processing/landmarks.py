"""Maps of many points, fast: fit UMAP on a stratified landmark subset and place the rest.

Above ``LANDMARK_THRESHOLD`` points, ``fit_map`` picks ``N_LANDMARKS`` landmarks spread over
the strata (class × noise level) in proportion to their sizes, fits a ``UMAPPipeline`` on
those, and places every other point near its nearest landmarks (k-NN interpolation of their
map positions, or the fitted pipeline's UMAP ``transform``), in batches.
Below the threshold it fits all points, as before. Either way it says how the map was made,
in a JSON-ready dict for the map's metadata:

    result = fit_map(activations, strata=(classes, noise_levels), n_neighbors=15)
    result.embedding    # (N, 2) float32: the whole map
    result.pipeline     # the fitted UMAPPipeline (projects trajectories onto the same map)
    result.info         # {"method": "landmarks", "n_landmarks": 10000, "threshold": 250000, ...}
                        # or {"method": "full", "knn": "exact", "deterministic": True}

The landmark fit gets exact neighbours (``knn.exact_knn``, below ``umap.EXACT_KNN_MAX_POINTS``)
and never pays pynndescent's per-process compilation; the k-NN placement uses the same
threaded exact search (``knn.KnnIndex``), of the placed points against the landmarks.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from .umap import UMAPPipeline, interpolate_embedding

__all__ = ["LANDMARK_THRESHOLD", "N_LANDMARKS", "PLACEMENTS", "MapFit", "stratum_ids", "select_landmarks", "fit_map"]

#: maps with more points than this are fitted on landmarks. Measured on this 2-core CPU (64-D
#: clustered synthetic data, scripts/time_full_fit.py): the full fit of 100k points takes 50 s
#: (exact neighbours; 64 s with pynndescent) with 15-NN preservation 0.69, landmarks (10k)
#: 27 s with 0.32, so below a few hundred thousand points the full fit is both affordable and
#: far more faithful.
LANDMARK_THRESHOLD = 250_000
#: landmarks a large map is fitted on
N_LANDMARKS = 10000
#: how the other points are placed: "knn", the inverse-distance-weighted mean of the map
#: positions of their ``n_neighbors`` nearest landmarks in the fitted feature space (float32
#: BLAS; 18 s for 90k points here, 15-NN preservation 0.32 at 100k), or the pipeline's UMAP
#: ``transform`` (37 s, 0.26)
PLACEMENTS = ("knn", "transform")
# rows per call of the pipeline's transform when placing the other points
_PLACE_BATCH = 8192


class MapFit(NamedTuple):
    """What ``fit_map`` returns: the whole map, the fitted pipeline, and how the map was made."""

    embedding: np.ndarray
    pipeline: UMAPPipeline
    info: dict


def stratum_ids(strata, n_points: int) -> np.ndarray:
    """One stratum id (0..S-1) per point from ``strata``: None (one stratum), one label array
    (N,), or a sequence of label arrays (e.g. ``(classes, noise_levels)``) whose combinations
    are the strata."""
    if strata is None:
        return np.zeros(n_points, dtype=np.int64)
    several = isinstance(strata, (list, tuple)) and len(strata) > 0 and all(np.ndim(c) == 1 for c in strata)
    columns = list(strata) if several else [strata]
    codes = []
    for i, column in enumerate(columns):
        labels = np.asarray(column)
        if labels.shape != (n_points,):
            raise ValueError(f"strata[{i}] must hold one label per point ({n_points}), got shape {labels.shape}")
        codes.append(np.unique(labels, return_inverse=True)[1].reshape(-1))
    return np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Landmarks per stratum: proportional to its size (largest remainders), at least one per
    stratum while there are enough, never more than the stratum holds."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    if total >= len(sizes):
        quota += 1
    else:  # fewer landmarks than strata: the largest strata get one each
        quota[np.argsort(-sizes, kind="stable")[:total]] = 1
        return quota
    while quota.sum() < total:
        room = sizes - quota
        share = (total - quota.sum()) * room / room.sum()
        add = np.minimum(np.floor(share).astype(np.int64), room)
        if add.sum() == 0:  # hand out the remainder one by one, largest fractional share first
            order = np.lexsort((np.arange(len(sizes)), -(share - np.floor(share))))
            order = order[room[order] > 0][: total - quota.sum()]
            add = np.zeros_like(quota)
            add[order] = 1
        quota += add
    return quota


def select_landmarks(n_points: int, n_landmarks: int, strata=None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of ``n_landmarks`` landmarks among ``n_points``, spread over the strata
    (see ``stratum_ids``) in proportion to their sizes, at least one from each stratum when
    ``n_landmarks`` allows. The same arguments always give the same rows."""
    n_points, n_landmarks = int(n_points), int(n_landmarks)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if not 1 <= n_landmarks <= n_points:
        raise ValueError(f"n_landmarks={n_landmarks} is out of range: must be between 1 and n_points ({n_points})")
    ids = stratum_ids(strata, n_points)
    sizes = np.bincount(ids)
    quota = _allocate(sizes, n_landmarks)
    rng = np.random.default_rng(seed)
    members = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [rng.choice(members[bounds[s]:bounds[s + 1]], size=q, replace=False)
              for s, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def fit_map(X, strata=None, threshold: int = LANDMARK_THRESHOLD, n_landmarks: int = N_LANDMARKS, seed: int = 0,
            batch_size: int = _PLACE_BATCH, place: str = "knn", **pipeline_params) -> MapFit:
    """The map of all rows of ``X`` (N, D): a ``UMAPPipeline(**pipeline_params)`` fitted on all of
    them when N <= ``threshold``, otherwise on ``n_landmarks`` stratified landmarks
    (``select_landmarks(N, n_landmarks, strata, seed)``) with the other rows placed by k-NN
    interpolation of the landmarks' positions (``place="transform"``: by the pipeline's UMAP
    ``transform``), ``batch_size`` rows at a time.

    ``info`` is ``{"method": "full", "knn", "deterministic"}`` (``UMAPPipeline.fit_info``) or
    ``{"method": "landmarks", "n_landmarks", "threshold", "seed", "n_strata", "placement", "knn",
    "deterministic", "fit_seconds", "place_seconds"}``.
    """
    if place not in PLACEMENTS:
        raise ValueError(f"unknown placement {place!r}; choose one of {', '.join(PLACEMENTS)}")
    X = X if isinstance(X, np.ndarray) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"activations must be a 2-D (N, D) array, got shape {X.shape}")
    if int(threshold) < 1 or int(n_landmarks) < 3:
        raise ValueError(f"threshold must be >= 1 and n_landmarks >= 3, got {threshold} and {n_landmarks}")
    if int(n_landmarks) > int(threshold):
        raise ValueError(f"n_landmarks ({n_landmarks}) must not exceed threshold ({threshold})")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = X.shape[0]
    if n <= int(threshold):
        pipe = UMAPPipeline(**pipeline_params).fit(X)
        return MapFit(pipe.embedding_, pipe, {"method": "full", **pipe.fit_info()})
    rows = select_landmarks(n, n_landmarks, strata, seed)
    t0 = time.perf_counter()
    pipe = UMAPPipeline(**pipeline_params).fit(X[rows])
    fit_seconds = time.perf_counter() - t0
    embedding = np.empty((n, pipe.embedding_.shape[1]), dtype=np.float32)
    embedding[rows] = pipe.embedding_
    rest = np.setdiff1d(np.arange(n), rows, assume_unique=True)
    from .knn import KnnIndex  # imports numba: only when placing points
    t0 = time.perf_counter()
    index = KnnIndex(pipe.train_features_) if place == "knn" else None  # prepared once for every batch
    for start in range(0, rest.size, int(batch_size)):
        part = rest[start:start + int(batch_size)]
        if place == "transform":
            embedding[part] = pipe.transform(X[part], batch_size=int(batch_size))
        else:
            k = min(int(pipe.n_neighbors), rows.size)
            indices, distances = index.search(k, queries=pipe.preprocess(X[part]))
            embedding[part] = interpolate_embedding(distances, indices, pipe.embedding_)
    info = {"method": "landmarks", "n_landmarks": int(rows.size), "threshold": int(threshold), "seed": int(seed),
            "n_strata": int(stratum_ids(strata, n).max() + 1), "placement": place,
            **pipe.fit_info(), "fit_seconds": round(fit_seconds, 3),
            "place_seconds": round(time.perf_counter() - t0, 3)}
    return MapFit(embedding, pipe, info)

