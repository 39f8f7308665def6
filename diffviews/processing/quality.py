"""How far a map can be trusted: neighbourhood preservation, per-step confidence of projected
points, and agreement between neighbours on the map and in activation space.

Pure numpy + scikit-learn (no torch, no umap), cheap at 1M points:

- ``map_quality(X_high, Y_low)``: the share of each point's k nearest neighbours in the layer
  that the map keeps (``knn_preservation``, exact neighbours over all points for a fixed-size
  sample of query points) and ``trustworthiness_sampled`` (scikit-learn's trustworthiness on a
  fixed-size random subset), with a one-line explanation for a plot title or status line.
- ``step_confidence(...)``: for each projected trajectory step, its distance to the nearest
  real activation as a percentile of the real points' own nearest-neighbour distances
  (``real_nn_distances``, computed once per map), and whether its noise level lies inside the
  levels the map was built at; steps outside either are flagged as extrapolated, with a reason.
- ``neighbour_agreement(idx_map, idx_act)`` and ``nearest_in_activations(acts, query, k)``:
  how many of a point's neighbours on the map are also its neighbours in activation space.

Neighbours are exact Euclidean ones, found with float32 BLAS (``|a|² − 2a·b + |b|²`` on
centred data) one block of data rows at a time, so memory stays bounded whatever N is; the
chosen neighbours' distances are then recomputed directly in float64, so a row's distance to
itself is exactly 0. Maps (at most 3 columns) are searched with scikit-learn's KD-tree.
Pass both spaces in the same coordinates the map was fitted in (e.g. a ``UMAPPipeline``'s
``train_features_`` / ``preprocess(X)``) or raw activations throughout.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DEFAULT_K", "KNN_SAMPLE", "TRUST_SAMPLE", "NN_SAMPLE", "EXTRAPOLATION_PERCENTILE", "LEVEL_TOLERANCE",
    "k_nearest", "nearest_in_activations", "knn_preservation", "trustworthiness_sampled", "map_quality",
    "real_nn_distances", "step_confidence", "neighbour_agreement",
]

DEFAULT_K = 15
#: query points for ``knn_preservation`` (each searched exactly over all N points)
KNN_SAMPLE = 2000
#: subset size for ``trustworthiness_sampled`` (scikit-learn works on its full pairwise distances)
TRUST_SAMPLE = 1500
#: real points whose nearest-neighbour distance forms the reference for ``step_confidence``
NN_SAMPLE = 2000
#: a step farther from every real activation than this percentile of the real points'
#: nearest-neighbour distances is flagged as extrapolated
EXTRAPOLATION_PERCENTILE = 95.0
#: slack (in noise-level units, 0-100) when deciding whether a step's level lies inside the map's
LEVEL_TOLERANCE = 0.5
# data rows per BLAS block: (queries × rows) float32 distances stay within ~64 MB for 2000 queries
_DATA_BLOCK = 8192
_QUERY_BLOCK = 2048
# data with at most this many columns (a map) is searched with a KD-tree instead of BLAS
_TREE_MAX_COLUMNS = 3
# in-memory data up to this many values is searched by ``knn.exact_knn`` (threaded, compiled
# top-k; it keeps float64 and float32 copies); larger or memory-mapped data one block at a time
_IN_MEMORY_ELEMENTS = 64 << 20


def _matrix(X, name: str, min_rows: int = 1) -> np.ndarray:
    """``X`` as a 2-D numeric array (memory-mapped arrays stay mapped); clear errors otherwise."""
    A = X if isinstance(X, np.ndarray) else np.asarray(X)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {A.shape}")
    if not np.issubdtype(A.dtype, np.number) or np.issubdtype(A.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {A.dtype}")
    if A.shape[0] < min_rows:
        raise ValueError(f"{name} has {A.shape[0]} rows; at least {min_rows} are needed")
    if A.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    return A


def _check_k(k, n_rows: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= n_rows:
        raise ValueError(f"k={k} is out of range for {what}: must be between 1 and {n_rows}")
    return k


def _sample_rows(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all ``n`` rows when ``sample`` is None or >= n, else a seeded random subset."""
    if sample is None or int(sample) >= n:
        return np.arange(n)
    if int(sample) < 1:
        raise ValueError(f"sample must be a positive number of points (or None for all), got {sample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False))


def _column_mean(data: np.ndarray) -> np.ndarray:
    total = np.zeros(data.shape[1], dtype=np.float64)
    for start in range(0, data.shape[0], _DATA_BLOCK):
        total += np.asarray(data[start:start + _DATA_BLOCK], dtype=np.float64).sum(axis=0)
    return total / data.shape[0]


def k_nearest(data, queries, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``data`` (N, D) for every row of ``queries`` (M, D), exactly.

    ``exclude`` (M,) names one row of ``data`` per query that may not be chosen (a query's own
    row, -1 for none). ``data`` may be a memory-mapped array: it is read once, in blocks.
    Returns ``(distances (M, k) float64, indices (M, k) int64)``, nearest first, ties by row.
    """
    data = _matrix(data, "data")
    Q = np.asarray(_matrix(queries, "queries", min_rows=0), dtype=np.float64)
    n, m = data.shape[0], Q.shape[0]
    if Q.shape[1] != data.shape[1]:
        raise ValueError(f"queries must have {data.shape[1]} columns like data, got shape {Q.shape}")
    excl = np.full(m, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64).reshape(-1)
    if excl.shape != (m,):
        raise ValueError(f"exclude must hold one row index per query ({m}), got {excl.size}")
    k = _check_k(k, n - int((excl >= 0).any()), f"{n} data rows")
    if m == 0:
        return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
    if data.shape[1] <= _TREE_MAX_COLUMNS:
        best_i = _tree_candidates(data, Q, k, excl)
    elif not isinstance(data, np.memmap) and data.size <= _IN_MEMORY_ELEMENTS:
        best_i = _knn_candidates(data, Q, k, excl)
    else:
        best_i = _blas_candidates(data, Q, k, excl)
    # exact distances of the chosen rows, in float64 (a row's own distance is exactly 0)
    distances = np.empty((m, k), dtype=np.float64)
    for q0 in range(0, m, _QUERY_BLOCK):
        sl = slice(q0, q0 + _QUERY_BLOCK)
        idx = best_i[sl]
        used = np.unique(idx)  # sorted: a memory-mapped array is read in order
        diff = np.asarray(data[used], dtype=np.float64)[np.searchsorted(used, idx)] - Q[sl][:, None, :]
        distances[sl] = np.sqrt(np.einsum("mkd,mkd->mk", diff, diff))
    order = np.lexsort((best_i, distances), axis=1)
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def nearest_in_activations(acts, query, k: int = DEFAULT_K,
                           exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``acts`` (N, D) nearest to one ``query`` activation (D,), exactly.

    ``exclude``: a row that may not be chosen (the query's own row when it is a map point).
    Returns ``(indices (k,) int64, distances (k,) float64)``, nearest first.
    """
    q = np.asarray(query)
    if q.ndim != 1:
        raise ValueError(f"query must be one activation vector (D,), got shape {q.shape}")
    excl = None if exclude is None else [int(exclude)]
    if excl is not None and not 0 <= excl[0] < np.shape(acts)[0]:
        raise ValueError(f"exclude={exclude} is not a row of acts (0..{np.shape(acts)[0] - 1})")
    distances, indices = k_nearest(acts, q[None, :], k, exclude=excl)
    return indices[0], distances[0]


def knn_preservation(X_high, Y_low, k: int = DEFAULT_K, sample: int | None = KNN_SAMPLE, seed: int = 0) -> float:
    """Mean share of a point's ``k`` nearest neighbours in ``X_high`` (N, D) that are also among
    its ``k`` nearest in ``Y_low`` (N, c), over ``sample`` random points (all when None).

    Neighbours are exact over all N points (the point itself excluded). 1.0: the map keeps every
    neighbourhood; a map unrelated to the data scores about ``k / (N - 1)``.
    """
    X, Y = _check_pair(X_high, Y_low, min_rows=2)
    k = _check_k(k, X.shape[0] - 1, f"{X.shape[0]} points (a point is not its own neighbour)")
    rows = _sample_rows(X.shape[0], sample, seed)
    _, in_x = k_nearest(X, X[rows], k, exclude=rows)
    _, in_y = k_nearest(Y, Y[rows], k, exclude=rows)
    in_x.sort(axis=1)
    in_y.sort(axis=1)
    shared = sum(np.intersect1d(a, b, assume_unique=True).size for a, b in zip(in_x, in_y))
    return float(shared / (k * len(rows)))


def _check_pair(X_high, Y_low, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    X = _matrix(X_high, "X_high", min_rows=min_rows)
    Y = _matrix(Y_low, "Y_low", min_rows=min_rows)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X_high has {X.shape[0]} rows but Y_low has {Y.shape[0]}: they must describe the same points")
    return X, Y


def trustworthiness_sampled(X_high, Y_low, k: int = DEFAULT_K, sample: int | None = TRUST_SAMPLE,
                            seed: int = 0) -> float:
    """scikit-learn's trustworthiness (``k`` neighbours) on ``sample`` random points (all when None):
    1.0 when no point's map neighbours are strangers in ``X_high``; the cost depends on
    ``sample`` only, not on N."""
    from sklearn.manifold import trustworthiness

    X, Y = _check_pair(X_high, Y_low, min_rows=3)
    rows = _sample_rows(X.shape[0], sample, seed)
    limit = (len(rows) - 1) // 2  # scikit-learn needs k < n_samples / 2
    if limit < 1:
        raise ValueError(f"trustworthiness needs at least 3 points; the sample has {len(rows)}")
    k = _check_k(k, limit, f"a {len(rows)}-point sample (k < n / 2)")
    return float(trustworthiness(np.asarray(X[rows], dtype=np.float64), np.asarray(Y[rows], dtype=np.float64),
                                 n_neighbors=k))


def map_quality(X_high, Y_low, k: int = DEFAULT_K, sample: int | None = KNN_SAMPLE, seed: int = 0,
                trust_sample: int | None = TRUST_SAMPLE) -> dict:
    """Both neighbourhood measures of a map, JSON-ready, for its metadata and its title.

    Returns ``{"knn_preservation", "knn_chance", "trustworthiness", "k", "sample",
    "trust_sample", "n_points", "summary"}``: ``sample`` / ``trust_sample`` are the numbers of
    points actually used, ``knn_chance`` the preservation a random map would get (k / (N − 1)),
    and ``summary`` one line of plain English, e.g. "15-NN kept 0.59 · trustworthiness 0.99
    (1500-point sample): on average 59 % of a point's 15 nearest neighbours in the layer are
    also its 15 nearest on the map (random map: 0.4 %)".
    """
    X, Y = _check_pair(X_high, Y_low, min_rows=3)
    n = X.shape[0]
    kept = knn_preservation(X, Y, k=k, sample=sample, seed=seed)
    trust = trustworthiness_sampled(X, Y, k=k, sample=trust_sample, seed=seed)
    used, used_trust = min(n, sample or n), min(n, trust_sample or n)
    chance = k / (n - 1)
    summary = (f"{k}-NN kept {kept:.2f} · trustworthiness {trust:.2f} ({used_trust}-point sample): "
               f"on average {kept * 100:.0f} % of a point's {k} nearest neighbours in the layer are also its "
               f"{k} nearest on the map (random map: {_percent(chance * 100)})")
    return {"knn_preservation": round(kept, 4), "knn_chance": round(chance, 6), "trustworthiness": round(trust, 4),
            "k": int(k), "sample": int(used), "trust_sample": int(used_trust), "n_points": int(n),
            "summary": summary}


def _percent(value: float) -> str:
    return f"{value:.0f} %" if value >= 10 else f"{value:.1g} %"


def real_nn_distances(real_acts, sample: int | None = NN_SAMPLE, seed: int = 0) -> np.ndarray:
    """Each of ``sample`` random real points' distance to its nearest other real point (all
    points when None), sorted ascending: the reference ``step_confidence`` compares a projected
    step against. Depends only on the map's activations, so compute it once per map and keep it."""
    A = _matrix(real_acts, "real_acts", min_rows=2)
    rows = _sample_rows(A.shape[0], sample, seed)
    distances, _ = k_nearest(A, A[rows], 1, exclude=rows)
    return np.sort(distances[:, 0])


def _levels(values, name: str, min_size: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1) if np.ndim(values) else np.asarray([values], np.float64)
    if a.size < min_size:
        raise ValueError(f"{name} must hold at least {min_size} noise level(s), got {a.size}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite noise levels")
    return a


def step_confidence(step_acts, real_acts, real_nn_dist=None, step_levels=None, map_levels=None,
                    threshold: float = EXTRAPOLATION_PERCENTILE, level_tolerance: float = LEVEL_TOLERANCE) -> dict:
    """How much to trust each projected trajectory step's position on the map.

    ``step_acts`` (S, D): the steps' activations; ``real_acts`` (N, D): the map's activations
    (same space); ``real_nn_dist``: ``real_nn_distances(real_acts)``, computed here when None;
    ``step_levels`` (S,): each step's noise level (0-100); ``map_levels`` (L,): the levels the
    map was built at. A step is *extrapolated* when its level lies outside
    ``[min(map_levels), max(map_levels)]`` (± ``level_tolerance``) or it is farther from every
    real activation than ``threshold`` % of real points are from their nearest neighbour.

    Returns arrays of length S: ``distance`` (float64, to the nearest real activation),
    ``nearest`` (int64, its row), ``percentile`` (float64, 0-100: share of real points whose
    nearest-neighbour distance is smaller), ``inside_levels`` (bool), ``extrapolated`` (bool)
    and ``reason`` (str; "" for steps that are not flagged).
    """
    real = _matrix(real_acts, "real_acts", min_rows=1)
    steps = _matrix(step_acts, "step_acts", min_rows=0)
    if steps.shape[1] != real.shape[1]:
        raise ValueError(f"step_acts have {steps.shape[1]} features but real_acts have {real.shape[1]}; "
                         "pass both in the same space")
    if step_levels is None or map_levels is None:
        raise ValueError("step_levels (one per step) and map_levels (the map's recorded levels) are required")
    levels = _levels(step_levels, "step_levels", 0)
    if levels.size != steps.shape[0]:
        raise ValueError(f"step_levels has {levels.size} values but step_acts has {steps.shape[0]} steps")
    recorded = _levels(map_levels, "map_levels", 1)
    if not 0.0 <= float(threshold) <= 100.0:
        raise ValueError(f"threshold must be a percentile between 0 and 100, got {threshold}")
    if float(level_tolerance) < 0:
        raise ValueError(f"level_tolerance must be >= 0, got {level_tolerance}")
    if real_nn_dist is None:
        if real.shape[0] < 2:
            raise ValueError("real_acts needs at least 2 rows to know how far real points lie from each other")
        reference = real_nn_distances(real)
    else:
        reference = np.sort(np.asarray(real_nn_dist, dtype=np.float64).reshape(-1))
        if reference.size == 0 or not np.isfinite(reference).all():
            raise ValueError("real_nn_dist must be a non-empty array of finite distances")

    distance, nearest = k_nearest(real, steps, 1)
    distance, nearest = distance[:, 0], nearest[:, 0]
    percentile = 100.0 * np.searchsorted(reference, distance, side="left") / reference.size
    low, high = recorded.min(), recorded.max()
    inside = (levels >= low - level_tolerance) & (levels <= high + level_tolerance)
    far = percentile > float(threshold)
    span = f"{low:g} %" if low == high else f"{low:g}–{high:g} %"
    reasons = []
    for level, ok, is_far, pct in zip(levels, inside, far, percentile):
        why = [] if ok else [f"noise {level:g} % is outside the map's {span}"]
        if is_far:
            share = "every real point is" if pct >= 100 else f"{math.floor(pct)} % of real points are"
            why.append(f"farther from every real activation than {share} from their nearest neighbour")
        reasons.append("; ".join(why))
    return {"distance": distance, "nearest": nearest, "percentile": percentile, "inside_levels": inside,
            "extrapolated": ~inside | far, "reason": np.array(reasons, dtype=object)}


def _index_set(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of point indices, got shape {a.shape} and dtype {a.dtype}")
    if np.unique(a).size != a.size:
        raise ValueError(f"{name} repeats a point index")
    return a.astype(np.int64)


def neighbour_agreement(idx_map, idx_act) -> dict:
    """How many of a point's neighbours on the map (``idx_map``) are also its neighbours in
    activation space (``idx_act``), and the other way round.

    Returns ``{"overlap": int, "k_map": int, "k_act": int, "share_of_map": float (overlap / k_map),
    "share_of_act": float (overlap / k_act), "share": float (overlap / max(k_map, k_act)),
    "map_only": int64 array, "act_only": int64 array}``.
    """
    on_map, in_act = _index_set(idx_map, "idx_map"), _index_set(idx_act, "idx_act")
    both = np.intersect1d(on_map, in_act, assume_unique=True)
    overlap = int(both.size)
    return {
        "overlap": overlap, "k_map": int(on_map.size), "k_act": int(in_act.size),
        "share_of_map": overlap / on_map.size if on_map.size else 0.0,
        "share_of_act": overlap / in_act.size if in_act.size else 0.0,
        "share": overlap / max(on_map.size, in_act.size) if max(on_map.size, in_act.size) else 0.0,
        "map_only": on_map[~np.isin(on_map, both)], "act_only": in_act[~np.isin(in_act, both)],
    }


def _tree_candidates(data: np.ndarray, Q: np.ndarray, k: int, excl: np.ndarray) -> np.ndarray:
    """(M, k) rows nearest each query, by scikit-learn's KD-tree (maps: 2-3 columns)."""
    from sklearn.neighbors import NearestNeighbors

    points = np.asarray(data, dtype=np.float64)
    extra = int((excl >= 0).any())
    found = NearestNeighbors(n_neighbors=k + extra, algorithm="kd_tree").fit(points).kneighbors(
        Q, return_distance=False)
    return _drop_excluded(found, excl, k)


def _knn_candidates(data: np.ndarray, Q: np.ndarray, k: int, excl: np.ndarray) -> np.ndarray:
    """(M, k) rows nearest each query, by ``knn.exact_knn`` (in-memory data of more than 3 columns)."""
    from .knn import exact_knn  # imports numba: only when searching

    found, _ = exact_knn(data, k + int((excl >= 0).any()), queries=Q)
    return _drop_excluded(found, excl, k)


def _drop_excluded(found: np.ndarray, excl: np.ndarray, k: int) -> np.ndarray:
    """``found`` (M, k or k + 1) without each query's excluded row (or, when it was not among
    them, the farthest one), as (M, k) int64."""
    if found.shape[1] == k:
        return found.astype(np.int64)
    drop = found == excl[:, None]
    drop[~drop.any(axis=1), -1] = True
    return found[~drop].reshape(len(found), k).astype(np.int64)


def _blas_candidates(data: np.ndarray, Q: np.ndarray, k: int, excl: np.ndarray) -> np.ndarray:
    """(M, k) rows nearest each query: float32 BLAS on centred data, one block of data rows at a
    time; a block only costs a partial sort for the queries it can improve."""
    m = Q.shape[0]
    center = _column_mean(data)
    q32 = (Q - center).astype(np.float32)
    best_d = np.full((m, k), np.inf, dtype=np.float32)
    best_i = np.full((m, k), -1, dtype=np.int64)
    for start in range(0, data.shape[0], _DATA_BLOCK):
        block = (np.asarray(data[start:start + _DATA_BLOCK], dtype=np.float64) - center).astype(np.float32)
        sq = np.einsum("ij,ij->i", block, block)
        for q0 in range(0, m, _QUERY_BLOCK):
            sl = slice(q0, q0 + _QUERY_BLOCK)
            d2 = q32[sl] @ block.T
            d2 *= -2.0
            d2 += sq  # |q|² is the same along a row, so it does not change the ranking
            local = excl[sl] - start
            hit = np.flatnonzero((local >= 0) & (local < len(block)))
            d2[hit, local[hit]] = np.inf
            rows = np.flatnonzero(d2.min(axis=1) < best_d[sl].max(axis=1))  # queries this block improves
            if rows.size == 0:
                continue
            sub = d2[rows]
            kk = min(k, sub.shape[1])
            cand = np.argpartition(sub, kk - 1, axis=1)[:, :kk] if kk < sub.shape[1] else \
                np.broadcast_to(np.arange(sub.shape[1]), sub.shape)
            rows += q0
            both_d = np.concatenate([best_d[rows], np.take_along_axis(sub, cand, axis=1)], axis=1)
            both_i = np.concatenate([best_i[rows], cand + start], axis=1)
            keep = np.argpartition(both_d, k - 1, axis=1)[:, :k]
            best_d[rows] = np.take_along_axis(both_d, keep, axis=1)
            best_i[rows] = np.take_along_axis(both_i, keep, axis=1)
    return best_i
