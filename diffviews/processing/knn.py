"""Exact k nearest neighbours of every row among all rows, fast enough for maps of 10⁵ points.

``exact_knn(Z, k)`` is what a UMAP fit needs as ``precomputed_knn``: for each row its ``k``
nearest rows (itself first, at distance 0), exactly, nearest first, ties broken by row index.
``KnnIndex(Z)`` is the same search prepared once for many queries: ``umap_backend.ExactNeighbors``
(umap-learn's transform index: trajectories projected onto a map) and ``quality.k_nearest``
(in-memory data) search through it. The one other exact search is ``quality.k_nearest`` on
memory-mapped data, which reads its data one block of rows at a time instead of preparing it.

How: the data are centred and, one block of query rows at a time, squared distances (less the
query's own norm) come from one float32 BLAS product; a compiled loop keeps the ``k + SLACK``
smallest of each row (most entries fail one comparison against the current worst), and the
kept candidates' distances are recomputed in float64 so that float32 rounding cannot reorder
near ties. Blocks run on ``threads`` Python threads (BLAS and the compiled loop release the
GIL), each with a one-thread BLAS, so the result does not depend on the thread count.

On this 2-core machine, 100k × 50: about 15 s on two threads, where umap-learn's own
approximate search (pynndescent) needs 20-40 s of compilation in every process before it
starts. Cost grows as N², so above a few hundred thousand rows an approximate search or a
landmark fit is the better way.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["SLACK", "BLOCK_BYTES", "KnnIndex", "exact_knn", "default_threads"]

#: extra float32 candidates per row whose distances are recomputed in float64
SLACK = 8
#: memory for one block of squared distances (float32), per thread: 64 MiB, 167 query rows at 100k points
BLOCK_BYTES = 64 << 20


@numba.njit(nogil=True, cache=True)
def _smallest(d2, m, out_i):
    """Column indices of the ``m`` smallest entries of each row of ``d2``, unordered, into ``out_i``."""
    rows, n = d2.shape
    best = np.empty(m, dtype=d2.dtype)
    for r in range(rows):
        row = d2[r]
        for j in range(m):
            best[j] = row[j]
            out_i[r, j] = j
        worst, pos = best[0], 0
        for j in range(1, m):
            if best[j] > worst:
                worst, pos = best[j], j
        for j in range(m, n):
            v = row[j]
            if v < worst:
                best[pos] = v
                out_i[r, pos] = j
                worst, pos = best[0], 0
                for t in range(1, m):
                    if best[t] > worst:
                        worst, pos = best[t], t


def default_threads() -> int:
    """CPUs this process may run on, at most ``$OMP_NUM_THREADS`` when that is set (the limit
    BLAS keeps too)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        cpus = min(cpus, int(limit))
    return max(1, cpus)


class KnnIndex:
    """Exact Euclidean nearest neighbours among the rows of ``data`` (N, p), prepared once.

    Keeps what every query needs: the rows in float64 (for the exact distances of the chosen
    candidates), their mean, the centred rows in float32 and their squared norms (for the BLAS
    products), so repeated queries (a trajectory projected step by step) do not redo them.
    ``search`` answers as described in the module docs, the same for any ``threads`` and
    ``block_rows``.
    """

    def __init__(self, data):
        rows = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"Z must be a non-empty (N, p) array, got shape {rows.shape}")
        self.data64 = rows.astype(np.float64)
        self.mean = self.data64.mean(axis=0)
        self.centred = (self.data64 - self.mean).astype(np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.centred, self.centred)

    @property
    def shape(self) -> tuple[int, int]:
        return self.centred.shape

    def search(self, k: int, queries=None, threads: int | None = None,
               block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows to each row of ``queries`` (M, p) (default: the data's own rows,
        each its own first neighbour at distance 0); nearest first, ties by row. Returns
        ``(indices (M, k) int64, distances (M, k) float64)``. ``threads``: default
        ``default_threads()``; ``block_rows``: query rows per block (default: as many as fit
        ``BLOCK_BYTES`` of distances, 16 to 1024)."""
        from threadpoolctl import threadpool_limits

        n, p = self.shape
        if not 1 <= int(k) <= n:
            raise ValueError(f"k={k} is out of range: must be between 1 and the number of rows ({n})")
        threads = default_threads() if threads is None else int(threads)
        if block_rows is None:
            block_rows = max(16, min(1024, BLOCK_BYTES // (4 * n)))
        if threads < 1 or int(block_rows) < 1:
            raise ValueError(f"threads and block_rows must be >= 1, got {threads} and {block_rows}")
        k, block_rows = int(k), int(block_rows)
        m = min(n, k + SLACK)
        if queries is None:
            q64, q32 = self.data64, self.centred
        else:
            q64 = np.asarray(queries, dtype=np.float64)
            if q64.ndim != 2 or q64.shape[1] != p:
                raise ValueError(f"queries must be (M, {p}), got shape {q64.shape}")
            q32 = (q64 - self.mean).astype(np.float32)
        rows = q64.shape[0]
        indices = np.empty((rows, k), dtype=np.int64)
        distances = np.empty((rows, k), dtype=np.float64)

        def block(start: int) -> None:
            stop = min(rows, start + block_rows)
            d2 = q32[start:stop] @ self.centred.T
            d2 *= -2.0
            d2 += self.sq_norms
            cand = np.empty((stop - start, m), dtype=np.int64)
            _smallest(d2, m, cand)
            diff = self.data64[cand] - q64[start:stop, None, :]
            exact = np.sqrt(np.einsum("rmp,rmp->rm", diff, diff))
            order = np.lexsort((cand, exact), axis=1)[:, :k]
            indices[start:stop] = np.take_along_axis(cand, order, axis=1)
            distances[start:stop] = np.take_along_axis(exact, order, axis=1)

        starts = range(0, rows, block_rows)
        with threadpool_limits(limits=1, user_api="blas"):
            if threads == 1 or rows <= block_rows:
                for start in starts:
                    block(start)
            else:
                with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="exact-knn") as pool:
                    list(pool.map(block, starts))
        return indices, distances


def exact_knn(Z, k: int, queries=None, threads: int | None = None,
              block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``Z`` (N, p) to each of its rows (Euclidean, the row itself
    included at distance 0), or to each row of ``queries`` (M, p); nearest first, ties by row:
    ``KnnIndex(Z).search(k, queries, threads, block_rows)``, for one search over ``Z``.

    Returns ``(indices (M, k) int64, distances (M, k) float64)``, the same for any ``threads``
    (default: ``default_threads()``) and ``block_rows`` (query rows per block; default: as
    many as fit ``BLOCK_BYTES`` of distances, 16 to 1024)."""
    return KnnIndex(Z).search(k, queries, threads=threads, block_rows=block_rows)
