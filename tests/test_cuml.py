"""The GPU path: real cuML UMAP and NearestNeighbors, and cupy → numpy at the edges.

Skipped where cuML is not installed or no CUDA device is visible.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffviews.data.layout import model_paths
from diffviews.data.maps import load_embedding, load_pipeline, save_embedding
from diffviews.processing import umap_backend
from diffviews.processing.umap import UMAPPipeline

cuml = pytest.importorskip("cuml")
cupy = pytest.importorskip("cupy")

try:
    _GPUS = cupy.cuda.runtime.getDeviceCount()
except Exception:  # noqa: BLE001 - no driver / no device
    _GPUS = 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_GPUS == 0, reason="no CUDA device visible")]


def make_blobs(n_per_blob: int = 200, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(3, dim))
    X = np.concatenate([c + rng.normal(size=(n_per_blob, dim)) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(3), n_per_blob)


@pytest.fixture(scope="module")
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def gpu_pipe(blobs):
    return UMAPPipeline(n_neighbors=15, pca_components=16, backend="cuml").fit(blobs[0])


def test_cuml_is_selected_when_present(monkeypatch):
    monkeypatch.delenv("DIFFVIEWS_FORCE_CPU", raising=False)
    assert umap_backend.cuml_available()
    assert umap_backend.select_backend() == "cuml"
    monkeypatch.setenv("DIFFVIEWS_FORCE_CPU", "1")
    assert umap_backend.select_backend() == "umap-learn"


def test_to_numpy_brings_cupy_arrays_home():
    device = cupy.arange(12, dtype=cupy.float64).reshape(3, 4)
    host = umap_backend.to_numpy(device)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32 and host.shape == (3, 4)
    np.testing.assert_array_equal(host, np.arange(12).reshape(3, 4))
    assert umap_backend.to_numpy(cupy.arange(3), np.int64).dtype == np.int64


def test_cuml_nearest_neighbors_agree_with_scikit_learn(blobs):
    X = blobs[0]
    d_gpu, i_gpu = umap_backend.nearest_neighbors(X, 6, backend="cuml")
    d_cpu, i_cpu = umap_backend.nearest_neighbors(X, 6, backend="umap-learn")
    assert isinstance(d_gpu, np.ndarray) and d_gpu.dtype == np.float32 and i_gpu.dtype == np.int64
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-3, atol=1e-3)
    assert (i_gpu == i_cpu).mean() > 0.99  # ties may order differently


def test_cuml_umap_fit_and_transform(gpu_pipe, blobs):
    X, labels = blobs
    assert gpu_pipe.backend_ == "cuml"
    embedding = gpu_pipe.embedding_
    assert isinstance(embedding, np.ndarray) and embedding.shape == (600, 2) and embedding.dtype == np.float32
    d = np.linalg.norm(embedding[:, None] - embedding[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[np.argmin(d, axis=1)] == labels).mean() > 0.95
    projected = gpu_pipe.transform(X[::50])
    assert isinstance(projected, np.ndarray) and projected.shape == (12, 2) and projected.dtype == np.float32
    assert np.isfinite(projected).all()


def test_cuml_map_saves_portably_and_reloads(tmp_path, gpu_pipe, blobs):
    paths = model_paths(tmp_path, "m")
    save_embedding(paths, "mid", gpu_pipe)
    embedding, meta = load_embedding(paths, "mid")
    assert meta["backend"] == "cuml" and meta["versions"]["umap-learn"]
    np.testing.assert_array_equal(embedding, gpu_pipe.embedding_)
    # without a usable cache, a CPU-only process projects onto the saved GPU map by k-NN
    paths.reducer_cache("mid").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFVIEWS_FORCE_CPU", "1")
        cpu_side = load_pipeline(paths, "mid", blobs[0])
    np.testing.assert_array_equal(cpu_side.embedding_, embedding)
    assert cpu_side.reducer_ is None
    assert cpu_side.transform(blobs[0][:4]).shape == (4, 2) and cpu_side.transform_method_ == "knn"
