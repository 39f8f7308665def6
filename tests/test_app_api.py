"""The launched app through its named API endpoints, with ``gradio_client`` (no browser).

Each ``Client`` is its own session. The app (``running_app`` in conftest.py) serves two
models (tiny digits and tiny shapes) with one resident at a time, so two clients on
different models force evictions and transparent reloads between their requests.
"""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import wait
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from gradio_client import Client

from diffviews.visualization import gpu_ops
from diffviews.visualization.app import ENDPOINT_OUTPUTS
from diffviews.visualization.callbacks import ALL_CLASSES, FROM_SELECTION

GEN_ARGS = (FROM_SELECTION, 4, 2, 1.0, 2.0, 100.0, 0.0, "fixed", 0, 1)


def call(client: Client, api: str, *args) -> dict:
    """One endpoint call → {output name: value}."""
    result = client.predict(*args, api_name=f"/{api}")
    result = result if isinstance(result, (list, tuple)) else (result,)
    return dict(zip(ENDPOINT_OUTPUTS[api], result, strict=True))


def figure(out: dict) -> dict:
    """The full figure (sent by the handlers that change the base: model, layer, view, class)."""
    return json.loads(out["plot"]["plot"])


def overlay(out: dict) -> dict:
    """The overlay message every plot handler sends (see ``figures.overlay_payload``)."""
    return json.loads(out["overlay"])


def rings(out: dict, name: str) -> list[int]:
    found = [t for t in overlay(out)["traces"] if t.get("meta") == "ring" and t["name"] == name]
    return found[0]["customdata"] if found else []


def client_for(app) -> Client:
    return Client(app.url, verbose=False, download_files=str(app.data_dir / "downloads"))


@pytest.fixture(scope="module")
def client(running_app) -> Client:
    return client_for(running_app)


def test_named_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {f"/{n}" for n in ENDPOINT_OUTPUTS} <= names
    assert {"/select_point", "/knn", "/generate", "/switch_model", "/switch_layer", "/hover"} <= names


def test_select_hover_knn_generate_export(running_app, client):
    vis = running_app.visualizer
    out = call(client, "select_point", 5, False)
    assert out["session_info"]["selected"] == 5 and rings(out, "selected") == [5]
    assert Path(out["selected_image"]).is_file() and "#5" in out["selected_info"]

    out = call(client, "hover", json.dumps({"kind": "hover", "points": [{"i": 9, "m": "pts"}]}))
    md = vis.model("digits")
    assert Path(out["preview_image"]).is_file()
    assert f"sample {md.metadata.sample_id[9]}" in out["preview_info"]

    out = call(client, "knn", 4, "activations")
    want, _ = vis.neighbours("digits", "mid", "2-D", 5, 4, "activations")
    assert out["session_info"]["knn"] == want.tolist() and rings(out, "knn") == want.tolist()
    assert len(out["neighbor_gallery"]) == 4

    out = call(client, "generate", *GEN_ARGS)
    info = out["session_info"]
    assert "Generated 1 × class" in out["status"] and info["active"] in info["generations"]
    assert Path(out["generated_image"]).is_file() and len(out["steps_gallery"]) == 4
    assert any(t.get("meta") == f"traj:{info['active']}:0" for t in overlay(out)["traces"])
    out = call(client, "prev_frame")
    assert out["session_info"]["frame"] == 2 and "step **3/4**" in out["frame_info"]

    out = call(client, "export_generation")
    with zipfile.ZipFile(out["export_file"]) as z:
        assert {"params.json", "trajectory.csv", "final_0.png"} <= set(z.namelist())
    out = call(client, "export_selection")
    with zipfile.ZipFile(out["export_file"]) as z:
        assert json.loads(z.read("selection.json"))["knn"] == want.tolist()


def test_bad_input_gives_a_message_and_the_app_keeps_serving(client):
    out = call(client, "plot_event", "{not json", False)
    assert out["status"].startswith("**Error:**") and "JSON" in out["status"]
    out = call(client, "select_point", 10**6, False)
    assert out["status"].startswith("**Error:**") and "[0, 179]" in out["status"]
    out = call(client, "plot_event", json.dumps({"kind": "click", "points": [{"i": 3, "m": "pts"}]}), False)
    assert out["session_info"]["selected"] == 3


def test_layer_switch_extracts_once_then_loads_from_cache(running_app):
    a, b = client_for(running_app), client_for(running_app)
    real = gpu_ops._extract_layer_on_gpu
    calls = []

    def spy(backend, request):
        assert backend is running_app.visualizer.backend
        calls.append(request.layers)
        return real(backend, request)

    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=spy):
        out_a = call(a, "switch_layer", "dec_8x8")
        out_b = call(b, "switch_layer", "dec_8x8")
    assert calls == [["dec_8x8"]]
    assert "extracted and mapped now" in out_a["status"] and "loaded from cache" in out_b["status"]
    assert out_a["session_info"]["layer"] == out_b["session_info"]["layer"] == "dec_8x8"
    assert (running_app.data_dir / "digits" / "embeddings" / "dec_8x8.csv").is_file()


def test_two_clients_on_different_models_do_not_cross_talk(running_app):
    vis = running_app.visualizer
    a, b = client_for(running_app), client_for(running_app)
    out = call(b, "switch_model", "shapes")
    assert out["session_info"]["model"] == "shapes" and out["session_info"]["n_points"] == 60
    assert [t["name"] for t in figure(out)["data"] if t.get("meta") == "pts"][0] == "circle"
    loads = dict(vis.cache.loads)

    for i in (3, 8):  # interleaved requests, one model resident: every call finds the other model loaded
        out_a = call(a, "select_point", i, False)
        out_b = call(b, "select_point", i + 1, False)
        assert out_a["session_info"]["model"] == "digits" and out_a["session_info"]["selected"] == i
        assert out_b["session_info"]["model"] == "shapes" and out_b["session_info"]["selected"] == i + 1
        out_a = call(a, "knn", 3, "map")
        out_b = call(b, "knn", 3, "map")
        assert out_a["session_info"]["knn"] == vis.neighbours("digits", "mid", "2-D", i, 3)[0].tolist()
        assert out_b["session_info"]["knn"] == vis.neighbours("shapes", "mid", "2-D", i + 1, 3)[0].tolist()
        hover = json.dumps({"kind": "hover", "points": [{"i": 20, "m": "pts"}]})
        info_a, info_b = call(a, "hover", hover)["preview_info"], call(b, "hover", hover)["preview_info"]
        for model, info in (("digits", info_a), ("shapes", info_b)):
            md = vis.model(model)
            assert f"sample {md.metadata.sample_id[20]}" in info
            assert f"class **{md.class_name(int(md.metadata.class_label[20]))}**" in info
    assert vis.cache.loads["digits"] > loads.get("digits", 0) and vis.cache.loads["shapes"] > loads["shapes"]

    out = call(b, "filter_class", "circle")  # the class list follows the session's model
    assert "Class **circle**" in out["status"] and out["session_info"]["class_filter"] == "circle"
    assert call(b, "filter_class", ALL_CLASSES)["session_info"]["class_filter"] is None

    jobs = [(a, 10, "digits"), (b, 11, "shapes"), (a, 12, "digits"), (b, 13, "shapes")]
    futures = [(c.submit(i, False, api_name="/select_point"), i, m) for c, i, m in jobs]  # at the same time
    wait([f for f, _, _ in futures], timeout=120)
    for future, i, model in futures:
        info = dict(zip(ENDPOINT_OUTPUTS["select_point"], future.result()))["session_info"]
        assert (info["model"], info["selected"]) == (model, i)

    out = call(b, "generate", "square", 3, 0, 1.0, 1.0, 100.0, 0.0, "zero", 1, 2)
    assert "2 × class **square**" in out["status"]
    rec = vis.generations.get(out["session_info"]["active"])
    assert rec.model == "shapes" and rec.result.images.shape == (2, 32, 32, 3)
    assert np.isfinite(rec.coords["2-D"]).all()
    assert call(a, "select_point", 2, False)["session_info"]["generations"] == []


# ---- serving to the public (issue 9) ------------------------------------------------------------

def _post(url: str, body: bytes, content_type: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_fault_1_the_queue_is_the_only_way_in(running_app):
    for api, data in (("generate", list(GEN_ARGS)), ("hover", ['{"kind":"hover","points":[]}']),
                      ("select_point", [1, False])):
        code = _post(f"{running_app.url}gradio_api/run/{api}", json.dumps({"data": data}).encode(), "application/json")
        assert code == 404, f"/run/{api} answered {code}: the REST route skips the queue"


def test_fault_6_uploads_are_capped_and_gradios_cache_is_cleaned(running_app):
    from diffviews.visualization.app import CACHE_CLEANUP, SERVE_OPTIONS

    boundary = "diffviews-test"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + b"\0" * (SERVE_OPTIONS["max_file_size"] + 1024) + f"\r\n--{boundary}--\r\n".encode()
    assert _post(f"{running_app.url}gradio_api/upload", body, f"multipart/form-data; boundary={boundary}") == 413
    assert running_app.demo.delete_cache == CACHE_CLEANUP


def test_fault_2_a_flooding_session_is_told_busy_and_others_still_generate(running_app):
    flooder, visitor = client_for(running_app), client_for(running_app)
    call(flooder, "select_point", 4, False)
    call(visitor, "select_point", 5, False)
    jobs = [flooder.submit(FROM_SELECTION, 30, 2, 1.0, 2.0, 100.0, 0.0, "fixed", s, 4, api_name="/generate")
            for s in range(8)]
    out = call(visitor, "generate", *GEN_ARGS)
    assert "Generated" in out["status"], out["status"]
    wait(jobs, timeout=300)
    statuses = [dict(zip(ENDPOINT_OUTPUTS["generate"], j.result()))["status"] for j in jobs]
    assert sum("busy, try again" in s for s in statuses) >= len(jobs) - 2, statuses
    assert any(s.startswith("Generated") for s in statuses), statuses


def test_fault_9_frame_errors_reach_the_status_line_through_the_api(client):
    call(client, "clear_trajectories")
    out = call(client, "next_frame")
    assert out["status"].startswith("**Error:**") and "generate first" in out["status"]


def test_fault_5_a_visitor_that_leaves_frees_its_generations(running_app):
    import time

    vis, visitor = running_app.visualizer, client_for(running_app)
    call(visitor, "select_point", 2, False)
    gen = call(visitor, "generate", *GEN_ARGS)["session_info"]["active"]
    assert vis.generations.get(gen).owner == visitor.session_hash  # owned by its Gradio session
    visitor.close()  # its heartbeat ends: Gradio runs the app's unload handler
    deadline = time.monotonic() + 30
    while vis.generations.get(gen) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vis.generations.get(gen) is None
