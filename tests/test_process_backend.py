"""The worker-process backend: every request and result crosses a real process boundary
(pickle-free), and the wire format and worker loop it shares with every remote backend."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_data_dir, tiny_request

from diffviews.backends import wire
from diffviews.backends.local import LocalBackend
from diffviews.backends.process import WorkerBusyError, WorkerDiedError, WorkerTimeoutError, process_backend
from diffviews.backends.protocol import Backend, ExtractionRequest, FitRequest
from diffviews.backends.remote import RemoteBackend
from diffviews.data.layout import DataLayoutError

pytestmark = pytest.mark.slow  # every test here starts a worker process (a fresh interpreter with torch)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tiny_data_dir(tmp_path_factory.mktemp("procdata"))


@pytest.fixture(scope="module")
def local(data_dir):
    return LocalBackend(data_dir, device="cpu")


@pytest.fixture(scope="module")
def proc(data_dir):
    # this process's torch thread count in the worker too; results still agree only to float
    # rounding: a numba compile in a background thread (the app's umap warm-up) may change this
    # process's thread count later, and with it the order of the sums
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    backend = process_backend(data_dir, device="cpu", timeout=120, env=threads)
    yield backend
    pid = backend.transport.pid
    assert pid is not None
    backend.close()
    assert backend.transport.pid is None
    with pytest.raises(ProcessLookupError):  # the worker really is gone
        os.kill(pid, 0)


def test_process_and_local_give_the_same_generation(proc, local):
    ours, theirs = proc.generate(tiny_request()), local.generate(tiny_request())
    assert ours.images.dtype == np.uint8 and ours.images.shape == (2, 8, 8, 1)
    assert np.abs(ours.images.astype(int) - theirs.images).max() <= 1
    np.testing.assert_allclose(ours.denoised, theirs.denoised, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ours.sigmas, theirs.sigmas)
    assert set(ours.trajectory) == {"mid", "dec_8x8"}
    for layer in ours.trajectory:
        np.testing.assert_allclose(ours.trajectory[layer], theirs.trajectory[layer], rtol=1e-4, atol=1e-5)
    assert ours.params == theirs.params
    other_seed = proc.generate(tiny_request(seed=12))
    assert not np.array_equal(other_seed.images, ours.images)


def test_extract_layer_and_shapes_round_trip(proc, local):
    rng = np.random.default_rng(0)
    request = ExtractionRequest(model="tiny", layers=["enc_8x8", "mid"],
                                images=rng.uniform(-1, 1, (5, 1, 8, 8)).astype(np.float32),
                                labels=np.array([0, 1, 2, 0, 1]), noise_levels=[80.0, 40.0], seed=4)
    ours, theirs = proc.extract_layer(request), local.extract_layer(request)
    assert ours["enc_8x8"].shape == (10, 512) and ours["mid"].shape == (10, 256)
    for layer in request.layers:
        assert ours[layer].dtype == np.float32
        np.testing.assert_allclose(ours[layer], theirs[layer], rtol=1e-4, atol=1e-5)
    assert proc.layer_shapes("tiny") == local.layer_shapes("tiny") == {
        "enc_8x8": (8, 8, 8), "enc_4x4": (16, 4, 4), "bottleneck": (16, 4, 4), "mid": (16, 4, 4),
        "dec_4x4": (8, 4, 4), "dec_8x8": (8, 8, 8)}


def test_worker_extracts_and_maps_a_new_layer(proc):
    pytest.importorskip("diffviews.processing.umap")
    rng = np.random.default_rng(1)
    request = ExtractionRequest(model="tiny", layers=["dec_4x4"], images=rng.uniform(-1, 1, (30, 1, 8, 8)).astype(
        np.float32), labels=rng.integers(0, 3, 30), noise_levels=[70.0, 30.0])
    acts = proc.extract_layer(request)["dec_4x4"]
    fit = proc.fit_umap(FitRequest(acts, n_components=2, params={"n_neighbors": 5, "pca_components": 10}))
    assert fit.embedding.shape == (60, 2) and np.isfinite(fit.embedding).all()
    assert isinstance(fit.backend, str) and fit.seconds > 0


def test_worker_errors_keep_their_type_and_the_worker_survives(proc):
    pid = proc.transport.pid
    with pytest.raises(ValueError, match="class_label must be an integer within"):
        proc.generate(tiny_request(class_label=7))
    with pytest.raises(DataLayoutError, match="missing model config"):
        proc.layer_shapes("no-such-model")
    with pytest.raises(wire.WireError, match=r"masks\['mid'\]: torch.Tensor cannot cross the wire"):
        proc.generate(tiny_request(masks={"mid": torch.zeros(1, 16, 4, 4)}))
    # a malformed message reaches the worker too: answered with an error, the worker lives on
    reply = wire.decode(proc.transport(b"\x05\x00\x00\x00\x00\x00\x00\x00{}xyz"))
    assert reply["error"]["type"] == "WireError"
    assert proc.transport.pid == pid


def test_worker_dying_during_a_request_gives_a_clear_error_then_restarts(proc):
    transport = proc.transport
    starts = transport.starts
    killer = threading.Timer(0.5, os.kill, (transport.pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(WorkerDiedError, match="killed by signal 9 during a 'generate' request.*fresh worker"):
        proc.generate(tiny_request(num_steps=1000, num_samples=8))
    killer.join()
    assert transport.pid is None
    proc.unload("tiny")  # forget the cached shapes: ask the fresh worker
    assert transport.starts == starts + 1
    assert proc.layer_shapes("tiny")["mid"] == (16, 4, 4)


def test_worker_dying_between_requests_is_logged_and_replaced(proc, caplog):
    transport = proc.transport
    starts = transport.starts
    os.kill(transport.pid, signal.SIGKILL)
    while transport.pid is not None:  # until the kill has landed
        threading.Event().wait(0.01)
    proc.unload("tiny")  # this request itself is fine (and starts the fresh worker)
    assert transport.starts == starts + 1
    assert any("killed by signal 9 between requests" in r.getMessage() for r in caplog.records)


def test_timeout_stops_the_worker_and_the_next_request_restarts_it(proc):
    transport = proc.transport
    old_pid, transport.timeout = transport.pid, 0.01
    try:
        with pytest.raises(WorkerTimeoutError, match="did not finish its 'generate' request within 0.01 s"):
            proc.generate(tiny_request(num_steps=50))
    finally:
        transport.timeout = 120.0
    assert transport.pid is None
    assert proc.generate(tiny_request(num_steps=2)).images.shape == (2, 8, 8, 1)
    assert transport.pid != old_pid


def test_a_caller_waits_for_a_busy_worker_only_up_to_busy_timeout(proc):
    transport = proc.transport
    transport.busy_timeout = 0.05
    transport._lock.acquire()  # another request holds the worker
    try:
        with pytest.raises(WorkerBusyError, match="busy with another request for 0.05 s; the 'generate' request"):
            proc.generate(tiny_request(num_steps=2))
    finally:
        transport._lock.release()
        transport.busy_timeout = transport.timeout
    assert proc.generate(tiny_request(num_steps=2)).images.shape == (2, 8, 8, 1)


def test_capabilities_are_explicit(proc, local):
    assert isinstance(proc, RemoteBackend) and isinstance(proc, Backend)
    assert proc.fits_remotely and proc.runs_models and proc.name == "process"
    assert not local.fits_remotely and local.runs_models


def test_app_on_the_process_backend_extracts_and_maps_a_new_layer_in_the_worker(tiny_data_dir, tmp_path,
                                                                               monkeypatch):
    """Hybrid mode: a layer nobody extracted before is extracted AND its map fitted in the
    worker; the UI process saves the map and projects trajectories onto it by k-NN."""
    import shutil

    from diffviews.data.layout import model_paths
    from diffviews.data.maps import load_embedding
    from diffviews.processing.umap import UMAPPipeline
    from diffviews.visualization.visualizer import GradioVisualizer

    shutil.copytree(tiny_data_dir / "digits", tmp_path / "digits")
    paths = model_paths(tmp_path, "digits")

    def no_fit_here(self, *args, **kwargs):
        raise AssertionError("a map was fitted in the UI process")

    monkeypatch.setattr(UMAPPipeline, "fit", no_fit_here)  # the worker is another interpreter: unaffected
    with process_backend(tmp_path, device="cpu", timeout=300) as backend:
        vis = GradioVisualizer(tmp_path, backend=backend)
        layer = vis.layer("digits", "dec_4x4")
        assert layer.embedding.shape == (180, 2) and layer.activations.shape == (180, 512)
        _, meta = load_embedding(paths, "dec_4x4")
        assert meta["fitted_on"] == "process" and meta["backend"] == "umap-learn"
        rec = vis.generate("digits", "dec_4x4", 3, [0, 1, 2], num_steps=4, mask_steps=2, alpha=1.0,
                           guidance_scale=1.5, noise_max=100.0, noise_min=0.0, noise_mode="stochastic", seed=3,
                           num_samples=1)
    coords = rec.coords["2-D"]
    assert coords.shape == (4, 1, 2) and np.isfinite(coords).all()
    assert layer.pipeline(paths).transform_method_ == "knn"
