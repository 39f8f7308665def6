"""The float32 layout optimisation (``processing.layout``) against umap-learn's own."""

from __future__ import annotations

import numpy as np
import pytest

from diffviews.processing.quality import k_nearest, knn_preservation
from diffviews.processing.umap import SMALL_MAP_EPOCHS, UMAPPipeline
from diffviews.processing.umap_backend import UMAP_LEARN, fast_layout_applies, make_umap


@pytest.fixture(scope="module")
def blobs():
    """500 points in 16-D: 5 clusters with some spread inside each."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=5.0, size=(5, 16))
    labels = rng.integers(5, size=500)
    return (centres[labels] + rng.normal(size=(500, 16))).astype(np.float32), labels


def test_optimize_layout_is_seeded_and_moves_both_ends():
    from diffviews.processing.layout import optimize_layout

    rng = np.random.default_rng(0)
    start = rng.uniform(0, 10, size=(40, 2)).astype(np.float32)
    head = np.repeat(np.arange(40), 2).astype(np.int32)
    tail = ((head + np.tile([1, 2], 40)) % 40).astype(np.int32)
    epochs_per_sample = np.ones(head.size)
    state = np.array([1, 2, 3], dtype=np.int64)
    one = optimize_layout(start.copy(), head, tail, epochs_per_sample, 1.58, 0.9, 1.0, 1.0, 5, 50, state)
    two = optimize_layout(start.copy(), head, tail, epochs_per_sample, 1.58, 0.9, 1.0, 1.0, 5, 50, state)
    np.testing.assert_array_equal(one, two)
    assert np.isfinite(one).all() and not np.allclose(one, start)
    # attraction along the ring: linked points end up closer than unlinked ones
    linked = np.linalg.norm(one[head] - one[tail], axis=1).mean()
    anywhere = np.linalg.norm(one[:, None] - one[None], axis=2).mean()
    assert linked < 0.5 * anywhere
    with pytest.raises(ValueError, match="n_epochs must be >= 1"):
        optimize_layout(start.copy(), head, tail, epochs_per_sample, 1.58, 0.9, 1.0, 1.0, 5, 0, state)


def test_fast_layout_applies_only_to_seeded_plain_layouts(monkeypatch):
    assert fast_layout_applies({"random_state": 0})
    assert not fast_layout_applies({"random_state": None})
    assert not fast_layout_applies({"random_state": 0, "densmap": True})
    assert not fast_layout_applies({"random_state": 0, "output_metric": "cosine"})
    assert type(make_umap(UMAP_LEARN, random_state=0)).__name__ == "FastLayoutUMAP"
    monkeypatch.setenv("DIFFVIEWS_FAST_LAYOUT", "0")
    assert not fast_layout_applies({"random_state": 0})
    assert type(make_umap(UMAP_LEARN, random_state=0)).__name__ == "UMAP"


def test_fast_layout_keeps_neighbourhoods_like_umap_learns_and_transforms(blobs, monkeypatch):
    X, labels = blobs
    params = {"n_neighbors": 10, "pca_components": None, "random_state": 0, "backend": UMAP_LEARN}
    fast = UMAPPipeline(**params).fit(X)
    assert fast.fit_info()["layout"] == "float32" and fast.fit_info()["n_epochs"] == SMALL_MAP_EPOCHS
    again = UMAPPipeline(**params).fit(X)
    np.testing.assert_array_equal(fast.embedding_, again.embedding_)  # seeded: the same map, bit for bit
    monkeypatch.setenv("DIFFVIEWS_FAST_LAYOUT", "0")
    own = UMAPPipeline(**params).fit(X)
    assert own.fit_info()["layout"] == UMAP_LEARN and own.fit_info()["n_epochs"] is None
    kept_fast = knn_preservation(X, fast.embedding_, k=10, sample=None)
    kept_own = knn_preservation(X, own.embedding_, k=10, sample=None)
    assert kept_fast > 0.25 and abs(kept_fast - kept_own) <= 0.03, (kept_fast, kept_own)  # chance: 10 / 499 = 0.02
    _, idx = k_nearest(fast.embedding_, fast.embedding_, 6)
    assert np.mean(labels[idx[:, 1:]] == labels[:, None]) > 0.95
    # umap-learn's transform still works on the fitted model: a training row lands near its place
    moved = fast.transform(X[:5])
    spread = np.ptp(fast.embedding_, axis=0).max()
    assert np.linalg.norm(moved - fast.embedding_[:5], axis=1).max() < 0.1 * spread
