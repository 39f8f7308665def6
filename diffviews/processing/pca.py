"""Standardise → PCA for map fits: scikit-learn's result with less work around it.

``StandardScaler().fit_transform(X)`` → ``PCA(n, random_state=r).fit(...)`` finds the same
principal axes as ``fit_standardiser`` → ``standardise`` → ``fit_pca`` (the same solver, the
same randomized SVD from the same random start, the same signs; components agree to ~1e-5),
but scikit-learn also spends time around its SVD: float64 running statistics in the scaler,
a scaled copy, a centred copy, and a squared pass for the explained-variance ratio. At
4000 × 4096 (a demo layer) on this 2-core machine: scaler 0.28 s → 0.03 s, copies and passes
~0.15 s → 0.04 s; the randomized SVD itself (~0.7 s) is unchanged.

The subspace matters beyond accuracy: on real activations the spectrum is flat around the
50th component (the 50th and 51st variances of that layer differ by 0.4 %), so any other
solver or random start finds a different, equally approximate 50-D subspace (scikit-learn's
shares 92 % of the exact one), in which a map's 15-NN preservation, judged in scikit-learn's
PCA space as ``bench/layer_switch.py`` does, drops by ~0.013.

``fit_standardiser`` sums each block of ``_BLOCK_ROWS`` rows in float32 and the blocks in
float64 (a memory-mapped array is read block by block); a constant column is scaled by 1.
The results are plain objects with the attributes ``umap.reduce_features`` reads (``mean_``,
``scale_``; ``mean_``, ``components_``, ``n_components_``), named as in scikit-learn, so
pipelines pickled with scikit-learn's estimators keep working.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_OVERSAMPLES", "ONE_THREAD_MAX_VALUES", "Standardiser", "PrincipalComponents", "fit_standardiser",
           "standardise", "fit_pca"]

#: extra random directions of the randomized SVD (scikit-learn's PCA default)
N_OVERSAMPLES = 10
#: a randomized SVD of at most this many values runs on one BLAS thread: its products and
#: 14 small LU factorisations are short, and handing them to threads that compete with the
#: app's (torch's pool has just extracted the layer) cost more than it saves. In the app's
#: layer switch at 4000 × 4096 on this 2-core machine: 0.50 s on one thread (4 runs), 0.78-1.5 s
#: on two. Larger data keep BLAS's own thread count.
ONE_THREAD_MAX_VALUES = 32 << 20
# rows per block when reading activations (4 MiB of 4096-D float32: stays in cache)
_CHUNK_ROWS = 2048
_BLOCK_ROWS = 256


class Standardiser:
    """Column ``mean_`` and ``scale_`` (float64, (D,)): ``(X - mean_) / scale_``."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, n_samples: int):
        self.mean_ = mean
        self.scale_ = scale
        self.var_ = scale ** 2
        self.n_features_in_ = int(mean.shape[0])
        self.n_samples_seen_ = int(n_samples)


class PrincipalComponents:
    """The top ``n_components_`` principal axes: ``components_`` (n, D) float64 orthonormal rows,
    ``mean_`` (D,) zeros (the data were centred by the standardiser), ``singular_values_`` (n,)
    and ``explained_variance_`` (n,)."""

    def __init__(self, components: np.ndarray, singular_values: np.ndarray, n_samples: int):
        self.components_ = components
        self.n_components_ = int(components.shape[0])
        self.mean_ = np.zeros(components.shape[1])
        self.singular_values_ = singular_values
        self.explained_variance_ = singular_values ** 2 / max(int(n_samples) - 1, 1)


def fit_standardiser(X) -> Standardiser:
    """Means and population standard deviations of the columns of ``X`` (N, D): two passes over
    blocks of ``_BLOCK_ROWS`` rows, summed in float32 within a block and in float64 across."""
    n = X.shape[0]
    if n < 1:
        raise ValueError("cannot standardise an empty array")
    total = np.zeros(X.shape[1])
    for start in range(0, n, _BLOCK_ROWS):
        total += np.add.reduce(np.asarray(X[start:start + _BLOCK_ROWS], dtype=np.float32), axis=0)
    mean = total / n
    mean32 = mean.astype(np.float32)
    squares = np.zeros(X.shape[1])
    for start in range(0, n, _BLOCK_ROWS):
        block = np.subtract(np.asarray(X[start:start + _BLOCK_ROWS], dtype=np.float32), mean32)
        np.square(block, out=block)
        squares += np.add.reduce(block, axis=0)
    scale = np.sqrt(squares / n)
    scale[scale == 0] = 1.0  # a constant column stays 0 after centring, as in scikit-learn
    return Standardiser(mean, scale, n)


def standardise(X, scaler: Standardiser) -> np.ndarray:
    """``(X - mean_) / scale_`` as one new float32 array (N, D)."""
    out = np.empty(X.shape, dtype=np.float32)
    mean, inverse = scaler.mean_.astype(np.float32), (1.0 / scaler.scale_).astype(np.float32)
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        np.subtract(np.asarray(X[rows], dtype=np.float32), mean, out=out[rows])
        out[rows] *= inverse
    return out


def _solver(n: int, d: int, k: int) -> str:
    """The solver scikit-learn's ``PCA(svd_solver="auto")`` picks for (n, d) data and k components."""
    if d <= 1000 and n >= 10 * d:
        return "covariance_eigh"
    if max(n, d) <= 500 or not 1 <= k < 0.8 * min(n, d):
        return "full"
    return "randomized"


def fit_pca(Z: np.ndarray, n_components: int, random_state: int | None = None) -> PrincipalComponents:
    """The top ``n_components`` principal axes of ``Z`` (N, D) float32, as scikit-learn's
    ``PCA(n_components, random_state=random_state).fit(Z)`` finds them (same solver, same
    random start, same signs), centring ``Z`` in place instead of in a copy."""
    from sklearn.decomposition import PCA
    from sklearn.utils.extmath import randomized_svd, svd_flip
    from threadpoolctl import threadpool_limits

    n, d = Z.shape
    k = int(n_components)
    if not 1 <= k <= min(n, d):
        raise ValueError(f"n_components={k} is out of range: must be between 1 and min(N, D) = {min(n, d)}")
    if _solver(n, d, k) != "randomized":  # exact solvers: scikit-learn as it is
        pca = PCA(n_components=k, random_state=random_state, copy=False).fit(Z)
        return PrincipalComponents(pca.components_.astype(np.float64), pca.singular_values_.astype(np.float64), n)
    Z -= Z.mean(axis=0)
    with threadpool_limits(limits=1 if Z.size <= ONE_THREAD_MAX_VALUES else None, user_api="blas"):
        u, singular, vt = randomized_svd(Z, k, n_oversamples=N_OVERSAMPLES, n_iter="auto",
                                         power_iteration_normalizer="auto", flip_sign=False,
                                         random_state=random_state)
    _, vt = svd_flip(u, vt, u_based_decision=False)
    return PrincipalComponents(np.ascontiguousarray(vt, dtype=np.float64), singular.astype(np.float64), n)
