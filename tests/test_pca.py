"""The float32 standardiser → PCA of map fits (``processing.pca``) against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from diffviews.processing.pca import _solver, fit_pca, fit_standardiser, standardise
from diffviews.processing.umap import fit_scaled_pca, reduce_features


def _data(n: int, d: int, seed: int = 0, decay: float = 0.9) -> np.ndarray:
    """Rows with a decaying spectrum (clear gaps between the leading components), offset and scaled per column."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    X = (rng.normal(size=(n, d)) * decay ** np.arange(d)) @ basis.T
    return (X * rng.uniform(0.5, 3.0, size=d) + rng.uniform(-5, 5, size=d)).astype(np.float32)


def test_standardiser_matches_scikit_learn_and_reads_memory_maps(tmp_path):
    X = _data(700, 40)
    X[:, 5] = 2.5  # a constant column
    path = tmp_path / "x.npy"
    np.save(path, X)
    mine = fit_standardiser(np.load(path, mmap_mode="r"))
    ref = StandardScaler().fit(X)
    np.testing.assert_allclose(mine.mean_, ref.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mine.scale_, ref.scale_, rtol=1e-6)
    assert mine.scale_[5] == 1.0
    np.testing.assert_allclose(standardise(X, mine), ref.transform(X), atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        fit_standardiser(np.zeros((0, 3), np.float32))


@pytest.mark.parametrize(("n", "d", "k", "solver"), [(600, 120, 10, "randomized"), (2000, 60, 10, "covariance_eigh"),
                                                     (300, 80, 70, "full")])
def test_pca_finds_scikit_learns_components_with_their_signs(n, d, k, solver):
    X = _data(n, d)
    assert _solver(n, d, k) == solver
    Z = StandardScaler().fit_transform(X).astype(np.float32)
    ref = PCA(n_components=k, random_state=3).fit(Z)
    assert ref._fit_svd_solver == solver
    mine = fit_pca(Z.copy(), k, random_state=3)
    assert mine.components_.shape == (k, d) and mine.n_components_ == k
    np.testing.assert_allclose(mine.components_, ref.components_, atol=2e-4)
    np.testing.assert_allclose(mine.explained_variance_, ref.explained_variance_, rtol=1e-4)
    with pytest.raises(ValueError, match="n_components=0 is out of range"):
        fit_pca(Z, 0)


def test_flat_spectrum_gives_scikit_learns_subspace():
    # 4096-D-like case in small: no gap after the k-th component, so only the same algorithm
    # with the same random start finds the same subspace
    X = _data(800, 200, seed=1, decay=0.999)
    Z = StandardScaler().fit_transform(X).astype(np.float32)
    ref = PCA(n_components=20, random_state=42).fit(Z)
    mine = fit_pca(Z.copy(), 20, random_state=42)
    cosines = np.linalg.svd(mine.components_ @ ref.components_.T, compute_uv=False)
    assert cosines.min() > 0.9999


def test_fit_scaled_pca_projects_like_the_scikit_learn_pipeline():
    X = _data(600, 120)
    scaler, pca, Z = fit_scaled_pca(X, 10, random_state=0)
    ref = PCA(n_components=10, random_state=0).fit_transform(StandardScaler().fit_transform(X))
    np.testing.assert_allclose(Z, ref, atol=2e-3 * np.abs(ref).max())
    # a row gets the same bits whichever rows it is batched with
    np.testing.assert_array_equal(reduce_features(scaler, pca, X[7:9]), Z[7:9])
    np.testing.assert_array_equal(reduce_features(scaler, pca, X, chunk_rows=37), Z)
    assert fit_scaled_pca(X, 200, 0)[1] is None  # D <= pca_components: no PCA
