"""Serving the app to the public (issue 9): each numbered fault of the issue, reproduced.

Faults 1, 2 and 6 (uploads, Gradio's cache) are also checked against the launched app in
tests/test_app_api.py; fault 7 (the bucket) in tests/test_r2_cache.py; the wire and the
worker's timeouts of fault 9 in tests/test_wire.py and tests/test_process_backend.py.
"""

from __future__ import annotations

import json
import pickle
import shutil
import threading
import time
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pytest

from diffviews.backends.local import LocalBackend
from diffviews.backends.process import WorkerDiedError
from diffviews.core.spec import GenerationResult
from diffviews.data.layout import model_paths
from diffviews.data.maps import load_pipeline
from diffviews.data.r2_cache import LayerCache
from diffviews.data.signing import KEY_ENV, sign
from diffviews.visualization import callbacks as cb
from diffviews.visualization.exports import ExportFolder
from diffviews.visualization.generations import STEP_CACHE, GenerationRecord, GenerationStore, StoreFull
from diffviews.visualization.limits import Busy, HeavyGate
from diffviews.visualization.visualizer import GradioVisualizer

NEW_LAYER = "dec_4x4"  # a layer the tiny data folder does not have


@pytest.fixture(scope="module")
def backend(tiny_data_dir):
    return LocalBackend(tiny_data_dir, device="cpu")


@pytest.fixture(scope="module")
def two_models(app_data_dir, tmp_path_factory):
    """A copy of the app data (digits and shapes) this module may change."""
    root = tmp_path_factory.mktemp("serving_data")
    for name in ("digits", "shapes"):
        shutil.copytree(app_data_dir / name, root / name)
    return root


def hover(vis, state, i: int) -> dict:
    return cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": i, "m": "pts"}]}))


def record(owner: str = "", steps: int = 3, samples: int = 1, side: int = 8) -> GenerationRecord:
    """A generation record of the given size with random pixels (no model needed)."""
    rng = np.random.default_rng(0)
    pixels = lambda *shape: rng.integers(0, 255, shape, dtype=np.uint8)  # noqa: E731
    result = GenerationResult(images=pixels(samples, side, side, 1), denoised=pixels(steps, samples, side, side, 1),
                              noised=pixels(steps, samples, side, side, 1),
                              trajectory={"mid": rng.standard_normal((steps, samples, 16)).astype(np.float32)},
                              sigmas=np.linspace(1, 0, steps + 1), noise_levels=np.linspace(100, 0, steps + 1))
    import uuid

    return GenerationRecord(uuid.uuid4().hex, "digits", "mid", 0, "0", [], result, owner=owner)


# ---- 2: one session cannot starve everyone ------------------------------------------------------

def test_fault_2_a_session_with_jobs_waiting_is_told_busy_while_others_run():
    gate = HeavyGate(per_session=2, slots={"generate": 1}, wait_s=5.0)
    release, started = threading.Event(), threading.Event()

    def long_job():
        with gate.enter("flooder", "generate"):
            started.set()
            release.wait(5)

    first = threading.Thread(target=long_job)
    first.start()
    started.wait(5)
    second = threading.Thread(target=lambda: gate.enter("flooder", "generate").__enter__())  # waits for the slot
    second.start()
    time.sleep(0.1)
    with pytest.raises(Busy, match="busy, try again"):  # a third job of the same session: refused at once
        with gate.enter("flooder", "generate"):
            pass
    assert gate.jobs("flooder") == 2
    release.set()
    first.join(5)
    second.join(5)
    with gate.enter("visitor", "generate"):  # another visitor is not affected by the flooder's count
        assert gate.jobs("visitor") == 1


# ---- 3: two visitors on two models do not thrash -----------------------------------------------

def test_fault_3_two_sessions_on_two_models_interleaving_hovers_cause_no_reloads(two_models, backend):
    vis = GradioVisualizer(two_models, backend=LocalBackend(two_models, device="cpu"))  # the app's defaults
    a, b = cb.initial_session(vis, "digits"), cb.initial_session(vis, "shapes")
    for k in range(10):
        assert "#" in hover(vis, a, k)["preview_info"]
        assert "#" in hover(vis, b, k)["preview_info"]
    assert vis.cache.loads == {"digits": 1, "shapes": 1}
    assert vis.cache.nbytes() <= vis.cache.max_bytes


def test_map_data_stays_within_its_byte_budget_and_weights_are_single_resident(two_models):
    probe = GradioVisualizer(two_models, backend=LocalBackend(two_models, device="cpu"))
    one = probe.model("digits").nbytes
    vis = GradioVisualizer(two_models, backend=LocalBackend(two_models, device="cpu"), max_map_bytes=one + 1)
    vis.model("digits")
    vis.model("shapes")
    assert vis.cache.resident() == ["shapes"]  # both together exceed the budget
    local = LocalBackend(two_models, device="cpu")
    local.adapter("digits")
    local.adapter("shapes")
    assert list(local._adapters) == ["shapes"]


# ---- 4: a light request never builds a layer; the disk budget spares what sessions show ----------

def test_fault_4_hover_click_and_knn_never_build_a_layer(two_models, backend, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(two_models / "digits", root / "digits")
    vis = GradioVisualizer(root, backend=LocalBackend(root, device="cpu"))
    state = replace(cb.initial_session(vis), layer=NEW_LAYER, selected=3)  # a layer nobody built
    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=AssertionError("extracted")), \
            patch("diffviews.data.layers.fit_here", side_effect=AssertionError("fitted")):
        for out in (hover(vis, state, 5), cb.select_point(vis, state, 5)[1], cb.suggest_knn(vis, state, 3)[1],
                    cb.filter_class(vis, state, cb.ALL_CLASSES)[1]):
            message = out.get("status") or out.get("preview_info")
            assert "not ready" in message and "internal error" not in message, message
    assert not model_paths(root, "digits").activations(NEW_LAYER).exists()


@pytest.mark.slow
def test_fault_4_the_disk_budget_never_evicts_a_layer_a_live_session_shows(two_models, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(two_models / "digits", root / "digits")
    paths = model_paths(root, "digits")
    cache = LayerCache(root, settings=None, max_local_mb=0.001)  # every layer is over budget
    backend = LocalBackend(root, device="cpu")
    vis = GradioVisualizer(root, backend=backend, layer_cache=cache, max_map_bytes=1)  # nothing stays in memory
    a = cb.initial_session(vis)
    a, out = cb.switch_layer(vis, a, NEW_LAYER)
    assert "Error" not in out["status"], out["status"]
    b = cb.initial_session(vis)
    b, out = cb.switch_layer(vis, b, "enc_4x4")  # builds another layer; the budget is enforced
    assert "Error" not in out["status"], out["status"]
    assert paths.activations(NEW_LAYER).is_file()  # session a still shows it: kept
    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=AssertionError("extracted")):
        assert f"#{7}**" in hover(vis, a, 7)["preview_info"]
    vis.forget_session(a.sid)  # a's session ended: its layer may go now
    cache.enforce_budget(protect=vis.shown_layers())
    assert not paths.activations(NEW_LAYER).exists()


# ---- 5: memory bounded per session, step images bounded per record -------------------------------

def test_fault_5_step_images_are_a_bounded_cache():
    rec = record(steps=40, samples=4)
    for step in range(40):
        for sample in range(4):
            rec.step_image(step, sample)
    assert len(rec._composites) == STEP_CACHE
    np.testing.assert_array_equal(rec.step_image(0, 0), rec.step_image(0, 0))


def test_fault_5_one_session_never_evicts_another_sessions_generations():
    store = GenerationStore(max_items=1000, per_session=3)
    mine = record("visitor-14")
    store.add(mine, "visitor-14")
    for k in range(13):
        for _ in range(5):
            store.add(record(f"visitor-{k}"), f"visitor-{k}")
    assert store.get(mine.id) is mine
    assert all(len(store.owned(f"visitor-{k}")) == 3 for k in range(13))
    dropped = store.add(record("visitor-14"), "visitor-14")
    assert dropped == [] and store.get(mine.id) is mine


def test_fault_5_the_byte_budget_refuses_rather_than_evicts():
    size = record().nbytes
    store = GenerationStore(max_items=100, per_session=10, max_bytes=int(2.5 * size))
    first, second = record("a"), record("b")
    store.add(first, "a")
    store.add(second, "b")
    with pytest.raises(StoreFull, match="try again later"):
        store.add(record("c"), "c")
    assert store.get(first.id) is first and store.get(second.id) is second
    assert store.add(record("a"), "a") == [first.id]  # room made from a's own records only
    assert store.nbytes <= store.max_bytes and store.get(second.id) is second
    store.discard_owner("a")
    assert store.owned("a") == [] and store.get(second.id) is second


# ---- 6: exports are deleted once served, per session, and at exit --------------------------------

def test_fault_6_exports_are_deleted_when_the_session_exports_again_or_ends():
    folder = ExportFolder(served_after_s=3600)
    a1 = folder.zip_path("x", "a")
    a1.write_bytes(b"zip")
    b1 = folder.zip_path("x", "b")
    b1.write_bytes(b"zip")
    a2 = folder.zip_path("x", "a")
    a2.write_bytes(b"zip")
    assert not a1.exists() and b1.exists()  # a's earlier export went, b's stays
    folder.discard("b")
    assert not b1.exists() and a2.exists()
    root = folder.path
    folder.close()
    assert not root.exists()


def test_fault_6_old_exports_are_swept():
    folder = ExportFolder(served_after_s=0.0)
    old = folder.zip_path("x", "a")
    old.write_bytes(b"zip")
    time.sleep(0.01)
    folder.zip_path("x", "b")
    assert not old.exists()
    folder.close()


# ---- 8: no pickle is loaded unless this machine wrote it ---------------------------------------

class _Payload:
    """Unpickling this writes a marker file: what a planted pickle could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fault_8_a_planted_pickle_is_never_loaded(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key"))
    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "digits", root / "digits")
    paths = model_paths(root, "digits")
    acts = np.load(paths.activations("mid"))
    marker = tmp_path / "pwned"
    paths.reducer_cache("mid").write_bytes(pickle.dumps(_Payload(marker)))  # planted, unsigned
    pipe = load_pipeline(paths, "mid", acts, refit=False)
    assert not marker.exists() and pipe.n_features_in_ == acts.shape[1]
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600

    monkeypatch.setenv(KEY_ENV, str(tmp_path / "other-key"))  # signed, but by another machine
    paths.reducer_cache("mid").write_bytes(sign(pickle.dumps(_Payload(marker))))
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key"))
    load_pipeline(paths, "mid", acts, refit=False)
    assert not marker.exists()
    assert load_pipeline(paths, "mid", acts, refit=False).n_features_in_ == acts.shape[1]  # its own cache loads


# ---- 9: every user-reachable error is a user error ---------------------------------------------

@pytest.fixture(scope="module")
def vis(two_models):
    return GradioVisualizer(two_models, backend=LocalBackend(two_models, device="cpu"), default_model="digits")


def test_fault_9_huge_numbers_and_deep_json_are_user_errors(vis):
    state = cb.initial_session(vis)
    _, out = cb.suggest_knn(vis, replace(state, selected=0), 10**400)
    assert "k must be a number within [1, 50]" in out["status"] and len(out["status"]) < 200
    deep = "[" * 100_000 + "]" * 100_000
    for payload in (deep, json.dumps({"kind": "click", "points": []})[:-1] + "," + '"x":' + deep + "}"):
        _, out = cb.plot_event(vis, state, payload)
        assert "internal error" not in out["status"] and "Error" in out["status"], out["status"]
        assert "internal error" not in hover(vis, state, 0).get("preview_info", "")
        assert "nested too deeply" in cb.hover(vis, state, payload)["preview_info"]


def test_fault_9_a_dying_worker_never_shows_its_stderr(vis):
    state = replace(cb.initial_session(vis), selected=0)
    stderr = 'Traceback (most recent call last):\n  File "/srv/secret/worker.py", line 3\nMemoryError'
    with patch("diffviews.visualization.gpu_ops.generate", side_effect=WorkerDiedError(stderr)):
        _, out = cb.generate(vis, state, cb.FROM_SELECTION, 4, 2, 1.0, 2.0, 100.0, 0.0, "fixed", 0, 1)
    assert out["status"].startswith("**Error:** internal error (WorkerDiedError)")
    assert "/srv" not in out["status"] and "Traceback" not in out["status"]


def test_fault_9_server_paths_never_reach_the_status_line(vis):
    state = cb.initial_session(vis)
    with patch.object(vis, "ensure_view", side_effect=FileNotFoundError(f"missing {vis.data_dir}/digits/x.csv")):
        _, out = cb.switch_view(vis, state, "3-D")
    assert str(vis.data_dir) not in out["status"] and "digits/x.csv" in out["status"]


def test_fault_9_frame_errors_reach_the_status_line(vis):
    from diffviews.visualization.app import ENDPOINT_OUTPUTS

    assert "status" in ENDPOINT_OUTPUTS["prev_frame"] and "status" in ENDPOINT_OUTPUTS["next_frame"]
    _, out = cb.step_frame(vis, cb.initial_session(vis), 1)
    assert "generate first" in out["status"]


# ---- 1 and 6 on every host: the app's own settings ---------------------------------------------

def test_fault_1_and_6_every_host_gets_a_closed_bounded_queue_and_an_upload_cap(vis):
    from diffviews.hosting import ui_options
    from diffviews.visualization.app import CACHE_CLEANUP, QUEUE_SIZE, SERVE_OPTIONS, create_gradio_app

    demo = create_gradio_app(vis, warmup=False)  # what launch_app, app.py and mount_on_fastapi all serve
    assert demo.api_open is False and demo._queue.max_size == QUEUE_SIZE
    assert demo.delete_cache == CACHE_CLEANUP
    assert ui_options()["max_file_size"] == SERVE_OPTIONS["max_file_size"] <= 1 << 20  # Modal's mount
    hover = [d for d in demo.fns.values() if d.api_name == "hover"][0]
    assert hover.queue is not False  # light work is queued too (its own concurrency group)


def test_fault_5_one_session_keeps_within_its_byte_quota():
    size = record().nbytes
    store = GenerationStore(max_items=100, per_session=10, per_session_bytes=int(2.5 * size))
    first, second, third = record("a"), record("a"), record("a")
    other = record("b")
    store.add(other, "b")
    store.add(first, "a")
    store.add(second, "a")
    assert store.add(third, "a") == [first.id] and store.get(other.id) is other


def test_records_without_an_owner_never_evict_each_other():
    store = GenerationStore(max_items=100, per_session=2)
    records = [record() for _ in range(5)]
    for rec in records:
        assert store.add(rec) == []
    assert all(store.get(rec.id) is rec for rec in records)
