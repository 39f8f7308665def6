"""Exact neighbours for large map fits (``processing.knn.exact_knn``) and what a fit records."""

from __future__ import annotations

import numpy as np
import pytest

from diffviews.processing.knn import exact_knn
from diffviews.processing.umap_backend import ExactNeighbors


@pytest.fixture(scope="module")
def clustered():
    """600 points in 12-D: 6 tight clusters, with one exact duplicate row (a tie at distance 0)."""
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=6.0, size=(6, 12))
    X = (centres[rng.integers(6, size=600)] + rng.normal(size=(600, 12))).astype(np.float32)
    X[450] = X[3]
    return X


def test_exact_knn_matches_brute_force_with_itself_first(clustered):
    X = clustered
    indices, distances = exact_knn(X, 10, threads=2, block_rows=64)
    full = np.linalg.norm(X[:, None].astype(np.float64) - X[None].astype(np.float64), axis=2)
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :10], rtol=1e-9, atol=1e-12)
    expected = np.lexsort((np.broadcast_to(np.arange(len(X)), full.shape), full), axis=1)[:, :10]
    np.testing.assert_array_equal(indices, expected)  # nearest first, ties by row index
    assert indices.dtype == np.int64 and distances.dtype == np.float64
    assert indices[3, :2].tolist() == [3, 450] and indices[450, :2].tolist() == [3, 450]


def test_exact_knn_does_not_depend_on_threads_or_blocks(clustered):
    one = exact_knn(clustered, 15, threads=1, block_rows=1000)
    for threads, block in ((2, 37), (3, 128)):
        other = exact_knn(clustered, 15, threads=threads, block_rows=block)
        np.testing.assert_array_equal(one[0], other[0])
        np.testing.assert_array_equal(one[1], other[1])


def test_exact_knn_answers_queries_like_exact_neighbors(clustered):
    queries = clustered[:50] + 0.3
    indices, distances = exact_knn(clustered, 7, queries=queries, threads=2, block_rows=16)
    ref_d, ref_i = ExactNeighbors(clustered).kneighbors(queries, 7)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(distances, ref_d)


def test_exact_knn_refuses_bad_input(clustered):
    with pytest.raises(ValueError, match="between 1 and the number of rows"):
        exact_knn(clustered, 601)
    with pytest.raises(ValueError, match="non-empty"):
        exact_knn(np.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match=r"queries must be \(M, 12\)"):
        exact_knn(clustered, 3, queries=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="threads and block_rows"):
        exact_knn(clustered, 3, threads=0)


def test_fit_with_exact_neighbours_keeps_neighbourhoods_like_umaps_own_search(clustered, monkeypatch):
    from diffviews.processing.quality import knn_preservation
    from diffviews.processing.umap import UMAPPipeline, exact_knn_wanted

    assert exact_knn_wanted(100_000, "umap-learn", "euclidean")  # pynndescent's compile no longer above 16k
    params = {"n_neighbors": 10, "pca_components": None, "random_state": 0, "backend": "umap-learn"}
    fast = UMAPPipeline(**params).fit(clustered)
    assert fast.fit_info() == {"knn": "exact", "deterministic": True, "layout": "float32", "n_epochs": 300}
    monkeypatch.setenv("DIFFVIEWS_EXACT_KNN", "0")
    own = UMAPPipeline(**params).fit(clustered)
    assert own.fit_info()["knn"] == "umap"
    kept_fast = knn_preservation(clustered, fast.embedding_, k=10, sample=None)
    kept_own = knn_preservation(clustered, own.embedding_, k=10, sample=None)
    assert kept_fast > 0.2 and abs(kept_fast - kept_own) <= 0.02  # chance: 10 / 599 = 0.017


def test_default_threads_follow_omp_num_threads(monkeypatch):
    from diffviews.processing.knn import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() >= 1


def test_the_three_exact_searches_match_brute_force(clustered):
    """``exact_knn`` (fits), ``ExactNeighbors`` (umap-learn's transform index) and
    ``quality.k_nearest`` (map quality, neighbour lists) all give numpy's brute-force answer."""
    from diffviews.processing.knn import KnnIndex
    from diffviews.processing.quality import k_nearest

    queries = np.concatenate([clustered[[3, 450, 77]], clustered[:40] + 0.25])
    full = np.linalg.norm(queries[:, None].astype(np.float64) - clustered[None].astype(np.float64), axis=2)
    expected = np.lexsort((np.broadcast_to(np.arange(len(clustered)), full.shape), full), axis=1)[:, :9]
    expected_d = np.take_along_axis(full, expected, axis=1)
    index = ExactNeighbors(clustered)
    answers = {"exact_knn": exact_knn(clustered, 9, queries=queries),
               "ExactNeighbors": index.kneighbors(queries, 9)[::-1],
               "k_nearest": k_nearest(clustered, queries, 9)[::-1]}
    for name, (indices, distances) in answers.items():
        np.testing.assert_array_equal(indices, expected, err_msg=name)
        np.testing.assert_allclose(distances, expected_d, rtol=1e-12, atol=1e-12, err_msg=name)
    # ExactNeighbors prepares its index once: the next query (a trajectory step) reuses it
    prepared = index._index
    assert isinstance(prepared, KnnIndex)
    index.query(queries[:2], 3)
    assert index._index is prepared
