"""processing/quality.py (how far a map can be trusted) and processing/landmarks.py (large maps
fitted on landmarks). Everything here is small: the two UMAP fits are of 60 and 100 points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from diffviews.processing import quality
from diffviews.processing.landmarks import fit_map, select_landmarks, stratum_ids
from diffviews.processing.quality import (
    k_nearest,
    knn_preservation,
    map_quality,
    nearest_in_activations,
    neighbour_agreement,
    real_nn_distances,
    step_confidence,
    trustworthiness_sampled,
)


def planted_map(n_clusters: int = 8, per_cluster: int = 60, dim: int = 20, seed: int = 0):
    """A 2-D map of well-separated clusters and activations that are that map, rotated into
    ``dim`` dimensions with a little noise: a faithful map of them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-100, 100, size=(n_clusters, 2))
    Y = np.concatenate([c + rng.uniform(-1, 1, size=(per_cluster, 2)) for c in centres])
    basis = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T  # (2, dim), orthonormal rows
    X = Y @ basis + rng.normal(scale=1e-3, size=(len(Y), dim))
    return X.astype(np.float32), Y.astype(np.float32)


def brute_knn(data: np.ndarray, k: int) -> np.ndarray:
    return NearestNeighbors(n_neighbors=k + 1).fit(data).kneighbors(data, return_distance=False)[:, 1:]


# ---- map quality -------------------------------------------------------------------------------

def test_faithful_map_scores_near_one_and_a_shuffled_one_near_chance():
    X, Y = planted_map()
    good = map_quality(X, Y, k=15, sample=300, trust_sample=300)
    assert good["knn_preservation"] > 0.9 and good["trustworthiness"] > 0.99
    shuffled = np.random.default_rng(1).permutation(Y)
    bad = map_quality(X, shuffled, k=15, sample=300, trust_sample=300)
    chance = 15 / (len(X) - 1)
    assert bad["knn_chance"] == pytest.approx(chance, rel=1e-3)
    assert bad["knn_preservation"] < 4 * chance
    assert 0.4 < bad["trustworthiness"] < 0.6  # a random map's trustworthiness is about 0.5
    assert good["k"] == 15 and good["sample"] == 300 and good["trust_sample"] == 300 and good["n_points"] == len(X)
    assert good["summary"].startswith(f"15-NN kept {good['knn_preservation']:.2f} · trustworthiness ")
    assert "300-point sample" in good["summary"] and "\n" not in good["summary"]


def test_knn_preservation_over_all_points_matches_a_brute_force_count():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    Y = X[:, :2] + rng.normal(scale=0.3, size=(200, 2)).astype(np.float32)
    a, b = brute_knn(X, 10), brute_knn(Y, 10)
    expected = np.mean([len(set(u) & set(v)) / 10 for u, v in zip(a, b)])
    assert knn_preservation(X, Y, k=10, sample=None) == pytest.approx(expected, abs=1e-12)
    # a sample is a seeded subset of those same per-point shares
    assert knn_preservation(X, Y, k=10, sample=50, seed=1) == knn_preservation(X, Y, k=10, sample=50, seed=1)


def test_trustworthiness_sample_is_fixed_size_and_seeded():
    X, Y = planted_map()
    assert trustworthiness_sampled(X, Y, sample=100, seed=2) == trustworthiness_sampled(X, Y, sample=100, seed=2)
    with pytest.raises(ValueError, match="k=60 is out of range"):
        trustworthiness_sampled(X, Y, k=60, sample=100)


def test_bad_input_names_the_problem():
    X, Y = planted_map()
    with pytest.raises(ValueError, match="X_high has 480 rows but Y_low has 10"):
        map_quality(X, Y[:10])
    with pytest.raises(ValueError, match="k=480 is out of range"):
        knn_preservation(X, Y, k=480)
    with pytest.raises(ValueError, match="2-D"):
        knn_preservation(X[0], Y)


# ---- exact neighbours --------------------------------------------------------------------------

def test_k_nearest_is_exact_across_data_blocks_and_excludes_the_query_row(monkeypatch):
    monkeypatch.setattr(quality, "_DATA_BLOCK", 37)  # many blocks, the excluded rows on their borders too
    monkeypatch.setattr(quality, "_QUERY_BLOCK", 16)
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(300, 12)) + 50.0).astype(np.float32)  # far from the origin: float32 must cope
    rows = np.arange(0, 300, 7)
    distances, indices = k_nearest(X, X[rows], 5, exclude=rows)
    ref_d, ref_i = NearestNeighbors(n_neighbors=6).fit(X.astype(np.float64)).kneighbors(X[rows].astype(np.float64))
    np.testing.assert_array_equal(indices, ref_i[:, 1:])
    np.testing.assert_allclose(distances, ref_d[:, 1:], rtol=1e-9)
    # without exclusion each row finds itself first, at distance exactly 0
    d0, i0 = k_nearest(X, X[rows], 1)
    np.testing.assert_array_equal(i0[:, 0], rows)
    assert (d0 == 0).all()


def test_nearest_in_activations_for_one_query():
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(150, 32)).astype(np.float32)
    idx, dist = nearest_in_activations(acts, acts[10], k=8, exclude=10)
    ref = brute_knn(acts, 8)[10]
    np.testing.assert_array_equal(idx, ref)
    assert 10 not in idx and np.all(np.diff(dist) >= 0)
    with pytest.raises(ValueError, match="one activation vector"):
        nearest_in_activations(acts, acts[:2])
    with pytest.raises(ValueError, match="exclude=150 is not a row"):
        nearest_in_activations(acts, acts[0], exclude=150)


def test_neighbour_agreement_counts_both_ways():
    result = neighbour_agreement(np.array([4, 8, 15, 16, 23]), np.array([42, 16, 4, 7]))
    assert result["overlap"] == 2 and result["k_map"] == 5 and result["k_act"] == 4
    assert result["share_of_map"] == pytest.approx(2 / 5) and result["share_of_act"] == pytest.approx(2 / 4)
    assert result["share"] == pytest.approx(2 / 5)
    assert sorted(result["map_only"]) == [8, 15, 23] and sorted(result["act_only"]) == [7, 42]
    assert neighbour_agreement([1, 2, 3], [3, 2, 1])["share"] == 1.0
    with pytest.raises(ValueError, match="repeats a point index"):
        neighbour_agreement([1, 1], [2, 3])


# ---- per-step confidence -----------------------------------------------------------------------

MAP_LEVELS = np.arange(40.0, 86.0, 5.0)  # 40, 45, ..., 85


def level_activations(levels: np.ndarray, per_level: int, seed: int) -> np.ndarray:
    """Activations that move along one direction with the noise level (5 levels apart is 10
    units, far more than the spread of 0.05 per coordinate in 16 dimensions)."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(16)
    direction[0] = 2.0
    lv = np.repeat(levels, per_level)
    return (lv[:, None] * direction + rng.normal(scale=0.05, size=(len(lv), 16))).astype(np.float32), lv


@pytest.fixture(scope="module")
def real_map():
    acts, levels = level_activations(MAP_LEVELS, 40, seed=0)
    return acts, levels, real_nn_distances(acts, sample=None)


def test_steps_outside_the_map_levels_are_flagged_exactly(real_map):
    acts, levels, reference = real_map
    step_levels = np.linspace(100.0, 0.0, 21)  # a 20-step schedule: 100, 95, ..., 0
    # steps at recorded levels lie close to a real activation of their level; the others lie
    # where activations of their level would be, where the map has none
    steps, _ = level_activations(step_levels, 1, seed=7)
    outside = (step_levels < 40) | (step_levels > 85)
    rng = np.random.default_rng(8)
    for i in np.flatnonzero(~outside):
        steps[i] = acts[np.flatnonzero(levels == step_levels[i])[0]] + rng.normal(scale=0.005, size=16)
    result = step_confidence(steps, acts, reference, step_levels, MAP_LEVELS)
    np.testing.assert_array_equal(result["inside_levels"], ~outside)
    np.testing.assert_array_equal(result["extrapolated"], outside)
    assert set(result) == {"distance", "nearest", "percentile", "inside_levels", "extrapolated", "reason"}
    assert all(len(v) == 21 for v in result.values())
    first = result["reason"][0]
    assert first.startswith("noise 100 % is outside the map's 40–85 %; farther from every real activation than ")
    assert all(reason == "" for reason in result["reason"][~outside])


def test_a_real_points_own_activation_is_never_flagged(real_map):
    acts, levels, reference = real_map
    rows = np.arange(0, len(acts), 13)
    result = step_confidence(acts[rows], acts, reference, levels[rows], MAP_LEVELS)
    assert not result["extrapolated"].any()
    assert (result["distance"] == 0).all() and (result["percentile"] == 0).all()
    np.testing.assert_array_equal(result["nearest"], rows)
    # the reference is computed when not given, with the same verdicts
    again = step_confidence(acts[rows], acts, None, levels[rows], MAP_LEVELS)
    np.testing.assert_array_equal(again["extrapolated"], result["extrapolated"])


def test_each_reason_on_its_own(real_map):
    acts, _, reference = real_map
    far = acts[0] + 5.0  # inside the levels, but nowhere near a real activation
    result = step_confidence(np.stack([acts[0], far]), acts, reference, [97.0, 60.0], MAP_LEVELS)
    assert list(result["extrapolated"]) == [True, True]
    assert result["reason"][0] == "noise 97 % is outside the map's 40–85 %"
    assert result["reason"][1] == ("farther from every real activation than every real point is from "
                                   "their nearest neighbour")
    # a threshold of 100 never flags by distance; the tolerance admits levels just outside
    lenient = step_confidence(np.stack([acts[0], far]), acts, reference, [85.4, 60.0], MAP_LEVELS, threshold=100)
    assert not lenient["extrapolated"].any()
    with pytest.raises(ValueError, match="step_levels has 1 values but step_acts has 2 steps"):
        step_confidence(np.stack([acts[0], far]), acts, reference, [50.0], MAP_LEVELS)
    with pytest.raises(ValueError, match="step_acts have 3 features but real_acts have 16"):
        step_confidence(np.zeros((1, 3)), acts, reference, [50.0], MAP_LEVELS)


# ---- landmarks ---------------------------------------------------------------------------------

def unequal_strata(seed: int = 0):
    """3 classes × 4 noise levels with very unequal stratum sizes (one stratum of 3 points)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 200, size=12)
    sizes[5] = 3
    ids = np.repeat(np.arange(12), sizes)
    rng.shuffle(ids)
    return ids // 4, (ids % 4) * 20.0 + 20.0, ids


def test_landmarks_are_stratified_and_deterministic():
    classes, levels, ids = unequal_strata()
    n = len(ids)
    rows = select_landmarks(n, 120, strata=(classes, levels), seed=0)
    assert rows.size == 120 and np.all(np.diff(rows) > 0)
    # class × level strata are the planted ones (up to numbering)
    strata = stratum_ids((classes, levels), n)
    assert len(np.unique(strata)) == 12 and all(len(np.unique(ids[strata == s])) == 1 for s in range(12))
    counts = np.bincount(ids[rows], minlength=12)
    expected = 120 * np.bincount(ids) / n
    assert np.all(np.abs(counts - expected) < 1.0 + 1e-9) and counts.min() >= 1
    np.testing.assert_array_equal(rows, select_landmarks(n, 120, strata=(classes, levels), seed=0))
    assert not np.array_equal(rows, select_landmarks(n, 120, strata=(classes, levels), seed=1))
    # fewer landmarks than strata: one each from the largest strata
    few = select_landmarks(n, 5, strata=(classes, levels))
    assert sorted(ids[few]) == sorted(np.argsort(-np.bincount(ids), kind="stable")[:5])
    with pytest.raises(ValueError, match="n_landmarks=0 is out of range"):
        select_landmarks(n, 0)
    with pytest.raises(ValueError, match=r"strata\[1\] must hold one label per point"):
        select_landmarks(n, 10, strata=(classes, levels[:5]))


@pytest.fixture(scope="module")
def small_activations():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(3, 24))
    labels = np.repeat(np.arange(3), 100)
    return (centres[labels] + rng.normal(size=(300, 24))).astype(np.float32), labels


def test_landmark_fit_places_every_point_and_says_how(small_activations):
    X, labels = small_activations
    params = {"n_neighbors": 10, "pca_components": None, "random_state": 0, "backend": "umap-learn"}
    fit = fit_map(X, strata=labels, threshold=200, n_landmarks=100, seed=0, batch_size=64, place="transform",
                  **params)
    assert fit.embedding.shape == (300, 2) and fit.embedding.dtype == np.float32
    assert np.isfinite(fit.embedding).all()
    info = fit.info
    assert info["method"] == "landmarks" and info["n_landmarks"] == 100 and info["threshold"] == 200
    assert info["n_strata"] == 3 and info["seed"] == 0
    rows = select_landmarks(300, 100, strata=labels, seed=0)
    np.testing.assert_array_equal(fit.embedding[rows], fit.pipeline.embedding_)
    # the placed points keep their clusters: each point's map neighbours share its label
    _, idx = k_nearest(fit.embedding, fit.embedding, 6)
    assert np.mean(labels[idx[:, 1:]] == labels[:, None]) > 0.95
    # placed by k-NN interpolation instead: the same landmark map, the others near their landmarks
    knn = fit_map(X, strata=labels, threshold=200, n_landmarks=100, seed=0, **params)
    assert knn.info["placement"] == "knn" and info["placement"] == "transform"
    np.testing.assert_array_equal(knn.embedding[rows], fit.embedding[rows])
    _, idx = k_nearest(knn.embedding, knn.embedding, 6)
    assert np.mean(labels[idx[:, 1:]] == labels[:, None]) > 0.95
    small = fit_map(X[:60], threshold=200, n_landmarks=100, **params)
    assert small.info == {"method": "full", "knn": "exact", "deterministic": True, "layout": "float32", "n_epochs": 300}
    assert small.embedding.shape == (60, 2)
    assert info["knn"] == "exact" and info["deterministic"] is True  # how the landmark map itself was made
    unseeded = fit_map(X[:60], threshold=200, n_landmarks=100, **{**params, "random_state": None})
    assert unseeded.info["deterministic"] is False
    with pytest.raises(ValueError, match="n_landmarks \\(300\\) must not exceed threshold \\(200\\)"):
        fit_map(X, threshold=200, n_landmarks=300)
    with pytest.raises(ValueError, match="unknown placement 'umap'; choose one of knn, transform"):
        fit_map(X, place="umap")


def test_k_nearest_paths_match_brute_force(tmp_path):
    """In-memory data (``knn.exact_knn``), memory-mapped data (blocked BLAS) and a map (KD-tree)
    all give numpy's brute-force answer: nearest first, ties by row, excluded rows left out."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(700, 20)).astype(np.float32)
    data[400] = data[9]  # a tie at distance 0
    rows = np.array([3, 9, 400, 650])
    path = tmp_path / "d.npy"
    np.save(path, data)
    for X in (data, np.load(path, mmap_mode="r"), data[:, :2].copy()):
        queries = np.asarray(X[rows])
        full = np.linalg.norm(np.asarray(X, np.float64)[None] - queries[:, None].astype(np.float64), axis=2)
        full[np.arange(len(rows)), rows] = np.inf
        expected = np.lexsort((np.broadcast_to(np.arange(len(X)), full.shape), full), axis=1)[:, :6]
        distances, indices = k_nearest(X, queries, 6, exclude=rows)
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(distances, np.take_along_axis(full, expected, axis=1), rtol=1e-12)
