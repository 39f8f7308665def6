"""processing/ and data/maps: backend choice, the UMAP pipeline, its artefacts on disk, the aligned 3-D map.

Every UMAP fit costs seconds here (the first one in a process tens of seconds of numba JIT),
so the fitted pipelines are module-scoped and the tests share them.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from diffviews.data.layout import DataLayoutError, model_paths
from diffviews.data.maps import (
    ALIGNED_SUFFIX,
    embedding_is_valid,
    fit_aligned_embedding,
    fit_layer_embedding,
    load_aligned,
    load_embedding,
    load_pipeline,
    save_embedding,
)
from diffviews.data.signing import open_signed, sign
from diffviews.processing import umap_backend
from diffviews.processing.aligned_umap import AlignedNoiseUMAP
from diffviews.processing.umap import UMAPPipeline, warmup
from diffviews.processing.umap_backend import (
    nearest_neighbors,
    select_backend,
    to_numpy,
)

LAYER = "mid"
PARAMS = {"n_neighbors": 10, "pca_components": 16, "random_state": 42, "backend": "umap-learn"}


def make_blobs(n_per_blob: int = 100, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(3, dim))
    X = np.concatenate([c + rng.normal(size=(n_per_blob, dim)) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(3), n_per_blob)


def nearest_label(points: np.ndarray, embedding: np.ndarray, labels: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(points[:, None, :] - embedding[None, :, :], axis=2)
    return labels[np.argmin(d, axis=1)]


def spread(embedding: np.ndarray) -> float:
    return float(np.ptp(embedding, axis=0).max())


@pytest.fixture(scope="module")
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def pipe(blobs):
    return UMAPPipeline(**PARAMS).fit(blobs[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe):
    """A model folder holding the saved map of ``pipe`` (read-only: copy it to change it)."""
    paths = model_paths(tmp_path_factory.mktemp("saved"), "blobs")
    save_embedding(paths, LAYER, pipe, extra_meta={"noise_levels": [80.0, 50.0]})
    return paths


@pytest.fixture
def saved_copy(saved, tmp_path):
    paths = model_paths(tmp_path, "blobs")
    shutil.copytree(saved.root, paths.root)
    return paths


# -- importing is cheap -------------------------------------------------------------------------

def test_importing_processing_does_not_import_umap_numba_or_sklearn():
    code = ("import sys, diffviews.processing.umap, diffviews.processing.aligned_umap, "
            "diffviews.processing.umap_backend; "
            "print(sorted(m for m in ('umap', 'numba', 'sklearn', 'cuml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- backend choice ------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "gpu", "expected"), [
    (None, True, "cuml"),
    ("1", True, "umap-learn"),
    ("yes", True, "umap-learn"),
    ("0", True, "cuml"),
    ("", True, "cuml"),
    (None, False, "umap-learn"),
    ("1", False, "umap-learn"),
])
def test_backend_choice_honours_force_cpu(monkeypatch, env, gpu, expected):
    if env is None:
        monkeypatch.delenv("DIFFVIEWS_FORCE_CPU", raising=False)
    else:
        monkeypatch.setenv("DIFFVIEWS_FORCE_CPU", env)
    monkeypatch.setattr(umap_backend, "cuml_available", lambda: gpu)
    assert select_backend() == expected
    assert select_backend("umap-learn") == "umap-learn"


def test_asking_for_cuml_where_it_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DIFFVIEWS_FORCE_CPU", raising=False)
    monkeypatch.setattr(umap_backend, "cuml_available", lambda: False)
    with pytest.raises(RuntimeError, match="cuML is not usable"):
        select_backend("cuml")
    monkeypatch.setattr(umap_backend, "cuml_available", lambda: True)
    monkeypatch.setenv("DIFFVIEWS_FORCE_CPU", "1")
    with pytest.raises(RuntimeError, match="DIFFVIEWS_FORCE_CPU"):
        select_backend("cuml")
    with pytest.raises(ValueError, match="umap-learn"):
        select_backend("sklearn")


def test_pipeline_records_the_backend_that_fit(monkeypatch, pipe):
    monkeypatch.setenv("DIFFVIEWS_FORCE_CPU", "1")
    monkeypatch.setattr(umap_backend, "cuml_available", lambda: True)
    assert pipe.backend_ == "umap-learn"
    with pytest.raises(RuntimeError):
        UMAPPipeline(backend="cuml").fit(np.zeros((5, 3)))


def test_nearest_neighbors_and_to_numpy(blobs):
    X = blobs[0]
    distances, indices = nearest_neighbors(X, 5, backend="umap-learn")
    assert distances.shape == indices.shape == (len(X), 5)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(X)))  # each row is its own nearest
    assert np.all(np.diff(distances, axis=1) >= 0)
    d_q, i_q = nearest_neighbors(X, 3, backend="umap-learn", queries=X[:4] + 0.01)
    np.testing.assert_array_equal(i_q[:, 0], np.arange(4))
    with pytest.raises(ValueError, match="between 1 and"):
        nearest_neighbors(X[:3], 4, backend="umap-learn")
    out = to_numpy([[1, 2], [3, 4]])
    assert out.dtype == np.float32 and out.flags.c_contiguous


# -- fitting and projecting ----------------------------------------------------------------------

def test_fit_gives_a_map_that_separates_the_blobs(pipe, blobs):
    X, labels = blobs
    assert pipe.embedding_.shape == (300, 2) and pipe.embedding_.dtype == np.float32
    assert pipe.n_features_in_ == 64 and pipe.pca_.n_components_ == 16
    assert pipe.train_features_.shape == (300, 16)
    assert pipe.fit_seconds_ > 0
    # each point's nearest other point on the map comes from its own blob
    d = np.linalg.norm(pipe.embedding_[:, None] - pipe.embedding_[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[np.argmin(d, axis=1)] == labels).mean() > 0.98


def test_training_points_project_near_their_own_position(pipe, blobs):
    X, labels = blobs
    rows = np.arange(0, 300, 7)
    projected = pipe.transform(X[rows])
    assert pipe.transform_method_ == "reducer"
    assert projected.shape == (len(rows), 2) and projected.dtype == np.float32
    distance = np.linalg.norm(projected - pipe.embedding_[rows], axis=1)
    assert np.median(distance) < 0.05 * spread(pipe.embedding_)
    assert (nearest_label(projected, pipe.embedding_, labels) == labels[rows]).all()


def test_batched_transform_equals_one_call(pipe, blobs):
    rng = np.random.default_rng(1)
    trajectory = blobs[0][:45] + rng.normal(scale=0.5, size=(45, 64)).astype(np.float32)
    whole = pipe.transform(trajectory)
    np.testing.assert_array_equal(pipe.transform(trajectory, batch_size=8), whole)
    np.testing.assert_array_equal(pipe.transform(trajectory[:1]), whole[:1])
    assert pipe.transform(trajectory[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        pipe.transform(trajectory, batch_size=0)


def test_transform_rejects_bad_input(pipe, blobs):
    with pytest.raises(ValueError, match="fitted on 64"):
        pipe.transform(blobs[0][:3, :10])
    bad = blobs[0][:3].copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        pipe.transform(bad)
    with pytest.raises(RuntimeError, match="not fitted"):
        UMAPPipeline().transform(bad)


def test_fit_is_deterministic(pipe, blobs):
    again = UMAPPipeline(**PARAMS).fit(blobs[0])
    np.testing.assert_array_equal(again.embedding_, pipe.embedding_)


def test_pca_is_skipped_when_activations_are_small(blobs):
    X = blobs[0][:, :12]
    small = UMAPPipeline(n_neighbors=10, pca_components=50, backend="umap-learn").fit(X)
    assert small.pca_ is None and small.train_features_.shape == (300, 12)
    assert small.transform(X[:3]).shape == (3, 2)
    assert UMAPPipeline(pca_components=None).set_params(n_neighbors=10).fit(X).pca_ is None


def test_params_like_scikit_learn():
    p = UMAPPipeline(n_neighbors=7)
    assert p.get_params()["n_neighbors"] == 7 and set(p.get_params()) == {
        "n_components", "n_neighbors", "min_dist", "pca_components", "random_state", "metric", "backend"}
    assert p.set_params(min_dist=0.3) is p and p.min_dist == 0.3
    with pytest.raises(ValueError, match="valid parameters"):
        p.set_params(n_neighbours=5)
    assert "n_neighbors=7" in repr(p)


def test_knn_fallback_when_the_reducer_cannot_transform(pipe, blobs):
    X, labels = blobs
    no_reducer = copy.deepcopy(pipe)
    no_reducer.reducer_ = None
    own = no_reducer.transform(X[:20])
    assert no_reducer.transform_method_ == "knn"
    np.testing.assert_allclose(own, pipe.embedding_[:20], atol=1e-4)  # a training row lands on itself
    rng = np.random.default_rng(2)
    new = X[::10] + rng.normal(scale=0.5, size=X[::10].shape).astype(np.float32)
    by_knn = no_reducer.transform(new, batch_size=7)
    assert (nearest_label(by_knn, pipe.embedding_, labels) == labels[::10]).all()
    np.testing.assert_array_equal(by_knn, no_reducer.transform(new))

    rebuilt = UMAPPipeline.from_embedding(X, pipe.embedding_, **PARAMS)
    np.testing.assert_allclose(rebuilt.transform(new), by_knn, atol=1e-5)
    assert rebuilt.transform_method_ == "knn" and rebuilt.reducer_ is None


# -- artefacts on disk ---------------------------------------------------------------------------

def test_save_load_round_trip(saved, pipe, blobs):
    embedding, meta = load_embedding(saved, LAYER)
    np.testing.assert_array_equal(embedding, pipe.embedding_)
    assert embedding.dtype == np.float32
    assert saved.embedding(LAYER).read_text().splitlines()[0] == "x,y"
    assert meta["n_points"] == 300 and meta["n_features"] == 64 and meta["backend"] == "umap-learn"
    assert meta["params"]["n_neighbors"] == 10 and meta["noise_levels"] == [80.0, 50.0]
    assert meta["versions"]["umap-learn"] and meta["versions"]["scikit-learn"] and meta["created"]
    assert embedding_is_valid(saved, LAYER, 300) and not embedding_is_valid(saved, LAYER, 299)
    assert not embedding_is_valid(saved, "enc_8x8", 300)
    assert not list(saved.embeddings_dir.glob("*.tmp"))

    loaded = load_pipeline(saved, LAYER, blobs[0])  # from the pickle cache
    assert loaded is not pipe and loaded.reducer_ is not None
    np.testing.assert_array_equal(loaded.transform(blobs[0][:5]), pipe.transform(blobs[0][:5]))


def test_extra_meta_cannot_overwrite_built_in_fields(tmp_path, pipe):
    with pytest.raises(ValueError, match="n_points"):
        save_embedding(model_paths(tmp_path, "m"), LAYER, pipe, extra_meta={"n_points": 1})


@pytest.mark.parametrize(("damage", "names"), [
    (lambda p: p.embedding(LAYER).unlink(), "mid.csv"),
    (lambda p: p.embedding_meta(LAYER).unlink(), "mid.json"),
    (lambda p: p.embedding_meta(LAYER).write_text("{not json"), "mid.json"),
    (lambda p: p.embedding(LAYER).write_text("x,y\n1,2\nfoo,bar\n"), "mid.csv"),
    (lambda p: p.embedding(LAYER).write_text("a,b\n1,2\n"), "mid.csv"),
    (lambda p: p.embedding(LAYER).write_text("\n".join(p.embedding(LAYER).read_text().splitlines()[:-1]) + "\n"),
     "mid.csv"),
    (lambda p: p.embedding(LAYER).write_text("x,y\n" + "1,nan\n" * 300), "mid.csv"),
    (lambda p: p.embedding(LAYER).write_text("x,y\n"), "mid.csv"),
])
def test_damaged_artefacts_raise_naming_the_file(saved_copy, damage, names):
    damage(saved_copy)
    with pytest.raises(DataLayoutError, match=names) as info:
        load_embedding(saved_copy, LAYER)
    assert str(saved_copy.embeddings_dir) in str(info.value)
    assert not embedding_is_valid(saved_copy, LAYER, 300)


def test_wrong_row_count_says_what_was_expected(saved_copy):
    lines = saved_copy.embedding(LAYER).read_text().splitlines()
    saved_copy.embedding(LAYER).write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(DataLayoutError, match=r"mid\.csv holds 295 rows.*300 rows"):
        load_embedding(saved_copy, LAYER)


def test_corrupt_cache_is_refitted_to_the_same_map(saved_copy, pipe, blobs, caplog):
    cache = saved_copy.reducer_cache(LAYER)
    cache.write_bytes(b"\x80\x04 definitely not a pickle")
    with caplog.at_level(logging.WARNING, logger="diffviews.data.maps"):
        refitted = load_pipeline(saved_copy, LAYER, blobs[0])
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and str(cache) in warnings_logged[0].getMessage()
    np.testing.assert_array_equal(refitted.embedding_, pipe.embedding_)
    assert refitted.reducer_ is not None
    # the cache was rewritten (signed by this machine) and is valid again
    assert isinstance(pickle.loads(open_signed(cache.read_bytes())), UMAPPipeline)


def test_cache_for_other_data_is_not_trusted(saved_copy, blobs):
    other = UMAPPipeline.from_embedding(blobs[0][:, :12], np.zeros((300, 2)), **PARAMS)
    saved_copy.reducer_cache(LAYER).write_bytes(sign(pickle.dumps(other)))  # signed here, but for other data
    rebuilt = load_pipeline(saved_copy, LAYER, blobs[0], refit=False)  # no UMAP fit: k-NN on the saved map
    assert rebuilt.n_features_in_ == 64 and rebuilt.reducer_ is None
    np.testing.assert_array_equal(rebuilt.embedding_, load_embedding(saved_copy, LAYER)[0])
    assert rebuilt.transform(blobs[0][:2]).shape == (2, 2)


def test_activations_must_match_the_saved_map(saved_copy, blobs):
    with pytest.raises(DataLayoutError, match="n_points=300"):
        load_pipeline(saved_copy, LAYER, blobs[0][:200])
    with pytest.raises(DataLayoutError, match="n_features=64"):
        load_pipeline(saved_copy, LAYER, blobs[0][:, :32])


def test_fit_layer_embedding_writes_all_three_files(tmp_path, blobs):
    paths = model_paths(tmp_path, "m")
    X = blobs[0][::3, :12]
    fitted = fit_layer_embedding(paths, "enc_8x8", X, n_components=3, n_neighbors=8, backend="umap-learn")
    embedding, meta = load_embedding(paths, "enc_8x8")
    assert embedding.shape == (100, 3) and meta["columns"] == ["x", "y", "z"]
    assert paths.reducer_cache("enc_8x8").is_file()
    np.testing.assert_array_equal(embedding, fitted.embedding_)


# -- speed-ups: exact neighbours below EXACT_KNN_MAX_POINTS, umap-learn's kernels cached on disk -----

def test_exact_neighbors_match_brute_force_and_ignore_batching(blobs):
    X = blobs[0][:, :16]
    index = umap_backend.ExactNeighbors(X)
    distances, indices = index.kneighbors(X, 6)
    full = np.linalg.norm(X[:, None].astype(np.float64) - X[None].astype(np.float64), axis=2)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(X)))  # each row first, at distance exactly 0
    assert (distances[:, 0] == 0).all()
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :6], rtol=1e-9)
    queries = X[:5] + 0.1
    q_indices, q_distances = index.query(queries, 4)  # umap-learn's search-index call
    assert q_indices.dtype == np.int32 and q_distances.dtype == np.float32 and q_indices.shape == (5, 4)
    one_by_one = np.concatenate([index.query(queries[r:r + 1], 4)[0] for r in range(5)])
    np.testing.assert_array_equal(q_indices, one_by_one)
    with pytest.raises(ValueError, match="between 1 and"):
        index.kneighbors(X, len(X) + 1)
    with pytest.raises(ValueError, match="queries must be"):
        index.kneighbors(X[:, :3], 2)


def test_small_maps_get_exact_neighbours_and_keep_umaps_transform(pipe, monkeypatch):
    from diffviews.processing.umap import EXACT_KNN_MAX_POINTS, exact_knn_wanted

    assert pipe.knn_method_ == "exact"
    assert isinstance(pipe.reducer_.knn_search_index, umap_backend.ExactNeighbors)
    assert exact_knn_wanted(EXACT_KNN_MAX_POINTS - 1, "umap-learn", "euclidean")
    assert not exact_knn_wanted(EXACT_KNN_MAX_POINTS, "umap-learn", "euclidean")
    assert not exact_knn_wanted(100, "cuml", "euclidean") and not exact_knn_wanted(100, "umap-learn", "cosine")
    monkeypatch.setenv("DIFFVIEWS_EXACT_KNN", "0")
    assert not exact_knn_wanted(100, "umap-learn", "euclidean")


def test_jit_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("DIFFVIEWS_CACHE_DIR", str(tmp_path))
    assert umap_backend.jit_cache_dir() == tmp_path / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nb"))  # numba's own setting wins
    assert umap_backend.jit_cache_dir() == tmp_path / "nb"


def test_jit_cache_switches_on_once_and_can_be_switched_off(tmp_path):
    code = "from diffviews.processing.umap_backend import enable_jit_cache as e; print(e(), e())"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "DIFFVIEWS_JIT_CACHE": "0"})
    assert off.stdout.split() == ["0", "0"]
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={**env, "DIFFVIEWS_CACHE_DIR": str(tmp_path)})
    first, second = map(int, on.stdout.split())
    assert first == second > 20 and (tmp_path / "numba").is_dir()


def test_warmup_runs_once_in_the_background():
    thread = warmup(background=True, large=False)  # large=True also compiles the N >= 4096 path (slow)
    if thread is not None:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert warmup(background=True, large=False) is None  # already done in this process


# -- the aligned 3-D map -------------------------------------------------------------------------

LEVELS = [80.0, 50.0, 20.0]


@pytest.fixture(scope="module")
def noisy_levels():
    """60 samples from the blobs at 3 noise levels, noise-level-major like the real extraction."""
    X, labels = make_blobs(n_per_blob=20, dim=32, seed=3)
    rng = np.random.default_rng(4)
    rows = [X * (1 - lv / 100) + rng.normal(scale=1 + lv / 25, size=X.shape) for lv in LEVELS]
    acts = np.concatenate(rows).astype(np.float32)
    return acts, np.repeat(LEVELS, len(X)), np.tile(np.arange(len(X)), len(LEVELS)), np.tile(labels, len(LEVELS))


@pytest.fixture(scope="module")
def aligned_saved(tmp_path_factory, noisy_levels):
    """(paths, model): the aligned map fitted and saved by ``fit_aligned_embedding`` (read-only)."""
    acts, levels, samples, _ = noisy_levels
    paths = model_paths(tmp_path_factory.mktemp("aligned"), "m")
    model = fit_aligned_embedding(paths, LAYER, acts, levels, samples, n_neighbors=8, pca_components=10)
    return paths, model


@pytest.fixture(scope="module")
def aligned(aligned_saved):
    return aligned_saved[1]


def test_aligned_map_stacks_levels_along_z(aligned, noisy_levels):
    acts, levels, _, labels = noisy_levels
    assert aligned.embedding_.shape == (180, 3) and aligned.embedding_.dtype == np.float32
    np.testing.assert_array_equal(aligned.embedding_[:, 2], levels)
    assert aligned.levels_.tolist() == sorted(LEVELS)
    assert np.isfinite(aligned.embedding_).all()
    low = levels == 20.0  # the least noisy level keeps the blobs apart
    xy = aligned.embedding_[low, :2]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[low][np.argmin(d, axis=1)] == labels[low]).mean() > 0.9


def test_aligned_transform_projects_into_the_nearest_level(aligned, noisy_levels):
    acts, levels, _, _ = noisy_levels
    rows = np.flatnonzero(levels == 50.0)[:6]
    out = aligned.transform(acts[rows], level=45.0)
    assert out.shape == (6, 3) and aligned.transform_method_ == "knn"
    np.testing.assert_array_equal(out[:, 2], 45.0)
    np.testing.assert_allclose(out[:, :2], aligned.embedding_[rows, :2], atol=1e-4)
    assert aligned.nearest_level(100.0) == 80.0


def test_aligned_rejects_samples_repeated_within_a_level(noisy_levels):
    acts, levels, samples, _ = noisy_levels
    broken = samples.copy()
    broken[1] = broken[0]
    with pytest.raises(ValueError, match="repeat within noise level 80"):
        AlignedNoiseUMAP().fit(acts, levels, broken)
    with pytest.raises(ValueError, match="one entry per row"):
        AlignedNoiseUMAP().fit(acts, levels[:-1], samples)


def test_aligned_save_load_and_corrupt_cache(tmp_path, aligned_saved, noisy_levels):
    acts = noisy_levels[0]
    saved_paths, aligned = aligned_saved
    assert saved_paths.embedding(LAYER, ALIGNED_SUFFIX).name == "mid_aligned.csv"
    assert not saved_paths.embedding(LAYER).exists()
    assert embedding_is_valid(saved_paths, LAYER, 180, suffix=ALIGNED_SUFFIX)
    paths = model_paths(tmp_path, "m")
    shutil.copytree(saved_paths.root, paths.root)
    embedding, meta = load_embedding(paths, LAYER, suffix=ALIGNED_SUFFIX)
    np.testing.assert_array_equal(embedding, aligned.embedding_)
    assert meta["kind"] == "AlignedNoiseUMAP" and meta["columns"] == ["x", "y", "z"]

    cached = load_aligned(paths, LAYER, acts)
    np.testing.assert_array_equal(cached.transform(acts[:3], 20.0), aligned.transform(acts[:3], 20.0))
    paths.reducer_cache(LAYER, ALIGNED_SUFFIX).write_bytes(b"garbage")
    rebuilt = load_aligned(paths, LAYER, acts)  # from the CSV and the activations, no refit needed
    np.testing.assert_array_equal(rebuilt.embedding_, aligned.embedding_)
    np.testing.assert_allclose(rebuilt.transform(acts[:3], 20.0), aligned.transform(acts[:3], 20.0), atol=1e-5)
    assert isinstance(pickle.loads(open_signed(paths.reducer_cache(LAYER, ALIGNED_SUFFIX).read_bytes())),
                      AlignedNoiseUMAP)
