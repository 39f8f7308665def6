"""The 3-D view across noise levels: one 2-D map per noise level, aligned with each other.

Rows are points (sample i at noise level j); the same sample id links its rows across
levels. All rows share one StandardScaler → PCA; umap-learn's ``AlignedUMAP`` then lays out
one map per level, pulled into register through the sample links between consecutive
levels. ``embedding_`` is (N, 3): x, y from the row's level map, z = the row's noise level.

    aligned = AlignedNoiseUMAP().fit(activations, level_of_row, sample_of_row)
    aligned.embedding_                       # (N, 3) float32
    aligned.transform(trajectory_step, level=40.0)

New points are projected into the map of the nearest level by k-NN interpolation of that
map in the shared PCA space (AlignedUMAP has no transform of its own). Saved and loaded by
``data.maps`` like the 2-D maps, under the suffix ``"_aligned"``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .umap import EstimatorParams, KNNProjector, as_matrix, fit_scaled_pca, reduce_features
from .umap_backend import UMAP_LEARN

__all__ = ["AlignedNoiseUMAP"]


class AlignedNoiseUMAP(EstimatorParams):
    """Aligned UMAP maps, one per noise level, stacked along z = noise level.

    Fitted attributes: ``scaler_``, ``pca_`` (None when PCA was skipped), ``levels_`` (sorted
    distinct levels), ``level_of_row_`` (N,), ``train_features_`` (N, p) float32,
    ``embedding_`` (N, 3) float32, ``backend_`` ("umap-learn"), ``n_features_in_``,
    ``fit_seconds_``; after ``transform``, ``transform_method_`` = "knn".
    """

    n_components = 3

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, pca_components: int | None = 50,
                 random_state: int | None = 42):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.pca_components = pca_components
        self.random_state = random_state

    def fit(self, X, level_of_row, sample_of_row) -> AlignedNoiseUMAP:
        X = as_matrix(X, "activations", min_rows=3)
        levels = _as_vector(level_of_row, "level_of_row", X.shape[0], np.float64)
        samples = _as_vector(sample_of_row, "sample_of_row", X.shape[0], None)
        t0 = time.perf_counter()
        self._fit_preprocessing(X, levels)
        rows = [np.flatnonzero(levels == level) for level in self.levels_]
        smallest = min(len(r) for r in rows)
        if len(self.levels_) < 2 or smallest < 3:
            raise ValueError(f"aligned maps need at least 2 noise levels with 3 rows each; got levels "
                             f"{self.levels_.tolist()} with at least {smallest} rows")
        relations = [_links(samples[a], samples[b], lo, hi)
                     for a, b, lo, hi in zip(rows, rows[1:], self.levels_, self.levels_[1:])]

        from umap import AlignedUMAP

        aligned = AlignedUMAP(n_neighbors=int(min(self.n_neighbors, smallest - 1)), min_dist=float(self.min_dist),
                              n_components=2, random_state=self.random_state)
        with warnings.catch_warnings(), _single_numba_thread(self.random_state is not None):
            warnings.simplefilter("ignore", UserWarning)
            aligned.fit([self.train_features_[r] for r in rows], relations=relations)
        embedding = np.empty((X.shape[0], 3), dtype=np.float32)
        for r, level, xy in zip(rows, self.levels_, aligned.embeddings_):
            embedding[r, :2] = _fill_disconnected(np.asarray(xy, dtype=np.float32), self.train_features_[r],
                                                  self.n_neighbors)
            embedding[r, 2] = level
        self.embedding_ = embedding
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _fit_preprocessing(self, X: np.ndarray, levels: np.ndarray) -> None:
        self.scaler_, self.pca_, self.train_features_ = fit_scaled_pca(X, self.pca_components, self.random_state)
        self.level_of_row_ = levels.astype(np.float32)
        self.levels_ = np.unique(levels)
        self.n_features_in_ = X.shape[1]
        self.backend_ = UMAP_LEARN
        self._projectors = {}

    @classmethod
    def from_embedding(cls, activations, embedding, fit_seconds: float = 0.0, **params) -> AlignedNoiseUMAP:
        """Rebuild from the saved (N, 3) map and the activations, without any UMAP fit: the
        noise level of each row is the map's z column."""
        model = cls(**params)
        X = as_matrix(activations, "activations")
        E = as_matrix(embedding, "embedding")
        if E.shape != (X.shape[0], 3):
            raise ValueError(f"an aligned map must be ({X.shape[0]}, 3) for these activations, got {E.shape}")
        model._fit_preprocessing(X, E[:, 2].astype(np.float64))
        model.embedding_ = E
        model.fit_seconds_ = float(fit_seconds)
        return model

    def nearest_level(self, level: float) -> float:
        self._check_fitted()
        return float(self.levels_[int(np.argmin(np.abs(self.levels_ - float(level))))])

    def transform(self, X, level: float) -> np.ndarray:
        """Project (M, D) activations into the map of the level nearest ``level`` → (M, 3)
        float32, with z = ``level`` itself."""
        self._check_fitted()
        Z = reduce_features(self.scaler_, self.pca_, as_matrix(X, "X", n_features=self.n_features_in_))
        nearest = self.nearest_level(level)
        if nearest not in self._projectors:
            rows = np.flatnonzero(self.level_of_row_ == np.float32(nearest))
            self._projectors[nearest] = KNNProjector(self.train_features_[rows], self.embedding_[rows, :2],
                                                     self.n_neighbors)
        out = np.empty((Z.shape[0], 3), dtype=np.float32)
        out[:, :2] = self._projectors[nearest](Z)
        out[:, 2] = float(level)
        self.transform_method_ = "knn"
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_projectors"] = {}
        return state


def _as_vector(values, name: str, n: int, dtype) -> np.ndarray:
    v = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if v.shape != (n,):
        raise ValueError(f"{name} must have one entry per row ({n}), got shape {v.shape}")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return v


def _links(samples_a: np.ndarray, samples_b: np.ndarray, level_a: float, level_b: float) -> dict[int, int]:
    """{row within level a: row within level b} for the sample ids present at both levels."""
    for samples, level in ((samples_a, level_a), (samples_b, level_b)):
        if len(np.unique(samples)) != len(samples):
            raise ValueError(f"sample ids repeat within noise level {level}; each sample may appear once per level")
    position_b = {s: j for j, s in enumerate(samples_b.tolist())}
    links = {i: position_b[s] for i, s in enumerate(samples_a.tolist()) if s in position_b}
    if not links:
        raise ValueError(f"no sample id links noise level {level_a} to {level_b}; "
                         "the same samples must appear at every level")
    return links


def _fill_disconnected(xy: np.ndarray, features: np.ndarray, n_neighbors: int) -> np.ndarray:
    """AlignedUMAP leaves points without graph edges at NaN; place them by k-NN interpolation
    of the connected points of the same level."""
    missing = ~np.isfinite(xy).all(axis=1)
    if missing.any() and (~missing).any():
        xy[missing] = KNNProjector(features[~missing], xy[~missing], n_neighbors)(features[missing])
    return xy


class _single_numba_thread:
    """AlignedUMAP optimises in parallel, which makes a seeded fit vary from run to run; a
    fixed seed asks for one numba thread (restored afterwards)."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        if self.active:
            import numba

            self.previous = numba.get_num_threads()
            numba.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.active:
            import numba

            numba.set_num_threads(self.previous)
        return False
