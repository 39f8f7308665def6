"""The app's event handlers as plain functions, on the real tiny digits data (no browser).

Every feature of the UI is driven here through ``diffviews.visualization.callbacks``:
hover, click and box selection, KNN, class filter, model/layer/view switches, generation
with its trajectory, frame navigation, trajectories, exports, and bad input (a message in
``status``, never an exception).
"""

from __future__ import annotations

import base64
import json
import shutil
import zipfile
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pytest

from diffviews.backends.local import LocalBackend
from diffviews.data.activations import activations_valid, load_activations
from diffviews.data.layout import model_paths
from diffviews.visualization import callbacks as cb
from diffviews.visualization import gpu_ops
from diffviews.visualization.figures import is_mark, point_size
from diffviews.visualization.visualizer import GradioVisualizer

SECOND = "digits-b"  # a copy of the tiny digits folder under another name: a second model


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir, tmp_path_factory):
    """A writable copy of the tiny data (layer switches write to it), with a second model."""
    root = tmp_path_factory.mktemp("callbacks_data")
    shutil.copytree(tiny_data_dir / "digits", root / "digits")
    shutil.copytree(tiny_data_dir / "digits", root / SECOND)
    return root


@pytest.fixture(scope="module")
def vis(data_dir):
    return GradioVisualizer(data_dir, backend=LocalBackend(data_dir, device="cpu"), max_resident_models=1,
                            default_model="digits")


@pytest.fixture
def state(vis):
    return cb.initial_session(vis)


def fig_of(out) -> dict:
    """What the plot shows after ``out``: the full figure when the handler redrew the base (its
    Plotly overlays are the overlay message's traces but the marks, which the page paints from
    the message), with the marks added; else the overlay message's traces."""
    overlay = json.loads(out["overlay"])
    if "plot" not in out:
        return {"data": overlay["traces"]}
    fig = json.loads(out["plot"].json)
    view = "2-D" if "xaxis" in fig["layout"] else "3-D"
    plotted = [t for t in overlay["traces"] if not is_mark(t, view)]
    assert [t for t in fig["data"] if t.get("meta") != "pts"] == plotted
    assert fig["layout"]["meta"] == {"base": overlay["base"], "overlay": overlay["id"], "plotted": overlay["plotted"]}
    fig["data"] += [t for t in overlay["traces"] if is_mark(t, view)]
    return fig


def traces(fig: dict, meta: str) -> list[dict]:
    return [t for t in fig["data"] if t.get("meta") == meta]


def decode(spec) -> np.ndarray:
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))


def click(i: int, meta: str = "pts") -> str:
    return json.dumps({"kind": "click", "n": 1, "points": [{"i": i, "m": meta}]})


def is_error(out: dict) -> bool:
    return set(out) == {"status"} and out["status"].startswith("**Error:**")


# ---- map ---------------------------------------------------------------------------------------

def test_dense_maps_get_smaller_markers():
    sizes = [point_size(n) for n in (10, 4_000, 20_000, 20_001, 100_000, 1_000_000)]
    assert sizes == [6, 6, 6, 4, 4, 3]


def test_map_figure_points_carry_only_an_index(vis, state):
    md = vis.model("digits")
    fig = json.loads(cb.figure(vis, state).json)
    pts = traces(fig, "pts")
    classes = [md.class_names[k] for k in np.unique(md.metadata.class_label)]
    assert [t["name"] for t in pts if t["showlegend"]] == classes  # one legend entry per class
    assert sorted({t["name"] for t in pts}) == sorted(classes)
    ld = vis.layer("digits", "mid")
    seen = np.concatenate([decode(t["customdata"]) for t in pts])
    assert sorted(seen.tolist()) == list(range(md.n_points))
    for t in pts:
        assert t["type"] == "scattergl"
        assert {t["x"]["dtype"], t["y"]["dtype"], t["customdata"]["dtype"]} == {"f4", "i4"}
        assert not {"text", "hovertext", "ids"} & set(t)  # no per-point strings
        rows = decode(t["customdata"])
        np.testing.assert_allclose(decode(t["x"]), ld.embedding[rows, 0])
        assert len(set(md.metadata.noise_level[rows])) == 1  # 3 levels: one opacity band each
    assert {t["marker"]["size"] for t in pts} == {point_size(md.n_points)}
    # opacity by noise level (one number per trace): the lowest noise level is the most opaque
    opacity = {float(md.metadata.noise_level[decode(t["customdata"])[0]]): t["marker"]["opacity"] for t in pts}
    assert opacity[min(opacity)] > opacity[max(opacity)]
    per_point = sum(len(json.dumps(t["x"])) + len(json.dumps(t["y"])) + len(json.dumps(t["customdata"]))
                    for t in pts) / md.n_points
    assert per_point <= 40


def test_clicks_send_overlays_not_points(vis, state):
    s, out = cb.select_point(vis, state, 3)
    assert "plot" not in out  # the points stay as drawn
    msg = json.loads(out["overlay"])
    assert msg["base"] == json.loads(cb.figure(vis, s).json)["layout"]["meta"]["base"]
    assert [t["name"] for t in msg["traces"]] == ["selected"] and len(out["overlay"]) < 2000
    s2, out2 = cb.select_point(vis, s, 3)
    assert json.loads(out2["overlay"])["id"] == msg["id"]  # same overlays, same id: the browser skips it
    s3, out3 = cb.filter_class(vis, s2, "3")  # a new base: the whole figure, with the overlays in it
    assert "plot" in out3 and json.loads(out3["overlay"])["base"] != msg["base"]
    assert ring(fig_of(out3), "selected") == [3]


# ---- hover -------------------------------------------------------------------------------------

def test_hover_shows_the_point(vis, state):
    md = vis.model("digits")
    i = 7
    out = cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": i, "m": "pts"}]}))
    img = out["preview_image"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] >= 160
    np.testing.assert_array_equal(img[0, 0], np.repeat(md.sample_image(i)[0, 0], 3)[:3])
    info = out["preview_info"]
    for text in (f"#{i}", f"sample {md.metadata.sample_id[i]}", md.class_name(int(md.metadata.class_label[i])),
                 f"{md.metadata.noise_level[i]:.1f} %", "σ", f"{vis.layer('digits', 'mid').embedding[i, 0]:.3f}"):
        assert text in info


@pytest.mark.parametrize("payload", ["", "not json", "[]", '{"kind":"hover"}', '{"kind":"drag","points":[]}',
                                     '{"kind":"hover","points":[{"i":100000,"m":"pts"}]}',
                                     '{"kind":"hover","points":[{"i":"5","m":"pts"}]}',
                                     '{"kind":"hover","points":[{"i":1,"m":"traj:nope:0"}]}', None, 12])
def test_hover_bad_payload_gives_a_message(vis, state, payload):
    out = cb.hover(vis, state, payload)
    assert set(out) == {"preview_info"} and out["preview_info"].startswith("**Error:**")


# ---- click, neighbours, box select ------------------------------------------------------------

def ring(fig: dict, name: str) -> list[int]:
    found = [t for t in fig["data"] if t.get("meta") == "ring" and t["name"] == name]
    return found[0]["customdata"] if found else []


def test_click_selects_and_toggles_neighbours(vis, state):
    s, out = cb.plot_event(vis, state, click(3), False)
    assert s.selected == 3 and ring(fig_of(out), "selected") == [3]
    assert out["selected_image"] is not None and "#3" in out["selected_info"]
    s, out = cb.plot_event(vis, s, click(10), True)
    s, out = cb.plot_event(vis, s, click(11), True)
    assert s.manual == (10, 11) and ring(fig_of(out), "neighbours") == [10, 11]
    assert len(out["neighbor_gallery"]) == 2
    s, out = cb.plot_event(vis, s, click(10), True)  # clicking a neighbour again removes it
    assert s.manual == (11,)
    s, out = cb.plot_event(vis, s, click(3), True)  # the selected point itself: a message, nothing changes
    assert is_error(out) and s.manual == (11,)
    s, out = cb.plot_event(vis, s, click(20), False)  # a new point after a selection: no reset needed
    assert s.selected == 20 and s.manual == () and ring(fig_of(out), "selected") == [20]


def test_box_select_adds_neighbours(vis, state):
    s, _ = cb.select_point(vis, state, 0)
    payload = json.dumps({"kind": "select", "points": [{"i": i, "m": "pts"} for i in (0, 4, 5, 6, 5)]})
    s, out = cb.plot_event(vis, s, payload, False)
    assert s.selected == 0 and s.manual == (4, 5, 6)
    assert "3 point(s)" in out["status"]
    s2, out = cb.plot_event(vis, s, json.dumps({"kind": "select", "points": []}), False)  # cleared selection box
    assert s2 == s and out == {}


def region_event(region) -> str:
    return json.dumps({"kind": "select", "n": 1, "points": [], "region": region})


def test_box_region_adds_exactly_the_points_inside(vis, state):
    xy = vis.layer("digits", "mid").coords("2-D")
    s, _ = cb.select_point(vis, state, 0)
    (x0, x1), (y0, y1) = np.percentile(xy[:, 0], [30, 60]), np.percentile(xy[:, 1], [20, 70])
    inside = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    assert inside.size > 3
    # corners in any order, as the page reports a box dragged from any corner
    s, out = cb.plot_event(vis, s, region_event({"box": [[float(x1), float(x0)], [float(y0), float(y1)]]}), False)
    assert s.manual == tuple(int(i) for i in inside if i != 0)
    assert f"Added {len(s.manual)} point(s)" in out["status"]
    assert "selected_image" not in out  # the selected point did not change
    assert rings(out, "neighbours") == list(s.manual)
    # the same box again adds nothing new, and the gallery (its first rows unchanged) is not resent
    s2, out = cb.plot_event(vis, s, region_event({"box": [[float(x0), float(x1)], [float(y0), float(y1)]]}), False)
    assert s2.manual == s.manual and "Added 0 point(s)" in out["status"] and "neighbor_gallery" not in out


def rings(out: dict, name: str) -> list[int]:
    found = [t for t in json.loads(out["overlay"])["traces"] if t.get("meta") == "ring" and t["name"] == name]
    return found[0]["customdata"] if found else []


def test_lasso_region_adds_the_points_inside_the_polygon(vis, state):
    xy = vis.layer("digits", "mid").coords("2-D").astype(np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    lo = lo - 0.01 * (hi - lo)  # no point on an edge
    tri = np.array([lo, [hi[0], lo[1]], [lo[0], hi[1]]])  # about the lower-left half of the map's box
    # inside the triangle: on the inner side of each edge (an independent test from regions.py's)
    a, b, c = tri

    def side(p, q, r):
        return (q[0] - p[0]) * (r[:, 1] - p[1]) - (q[1] - p[1]) * (r[:, 0] - p[0])

    d1, d2, d3 = side(a, b, xy), side(b, c, xy), side(c, a, xy)
    inside = np.flatnonzero(((d1 > 0) & (d2 > 0) & (d3 > 0)) | ((d1 < 0) & (d2 < 0) & (d3 < 0)))
    assert 0 < inside.size < len(xy)
    s, out = cb.plot_event(vis, state, region_event({"lasso": [tri[:, 0].tolist(), tri[:, 1].tolist()]}), False)
    assert s.manual == tuple(int(i) for i in inside)


def test_a_lasso_too_costly_to_test_is_refused_and_changes_nothing(vis, state, monkeypatch):
    from diffviews.visualization import regions

    monkeypatch.setattr(regions, "MAX_LASSO_TESTS", 10)  # the tiny map's lasso needs more tests than that
    xy = vis.layer("digits", "mid").coords("2-D").astype(np.float64)
    lo, hi = xy.min(axis=0) - 1, xy.max(axis=0) + 1
    tri = [[lo[0], hi[0], lo[0]], [lo[1], lo[1], hi[1]]]
    s, out = cb.plot_event(vis, state, region_event({"lasso": tri}), False)
    assert s.manual == state.manual
    assert is_error(out) and "point-edge tests, at most 10" in str(out["status"])


@pytest.mark.parametrize("region, message", [
    ({"circle": [[0, 1], [0, 1]]}, "one key of ['box', 'lasso']"),
    ({"box": [[0, 1]]}, "[x values, y values]"),
    ({"box": [[0, 1, 2], [0, 1]]}, "box x range must have 2 numbers"),
    ({"box": [[0, "a"], [0, 1]]}, "box x range must be a list of numbers"),
    ({"box": [[0, 1e400], [0, 1]]}, "finite"),
    ({"lasso": [[0, 1], [0, 1]]}, "3 to"),
    ({"lasso": [[0, 1, 2], [0, 1]]}, "as many x as y"),
    ("box", "one key of"),
])
def test_bad_region_is_refused(vis, state, region, message):
    s, out = cb.plot_event(vis, state, region_event(region), False)
    assert is_error(out) and message in out["status"] and s.manual == state.manual


def test_region_outside_the_points_or_in_3d(vis, state):
    s, out = cb.plot_event(vis, state, region_event({"box": [[1e6, 2e6], [1e6, 2e6]]}), False)
    assert s.manual == () and out == {"status": "No point inside the drawn region."}
    s, out = cb.plot_event(vis, replace(state, view="3-D"), region_event({"box": [[-1e6, 1e6], [-1e6, 1e6]]}), False)
    assert is_error(out) and "2-D map only" in out["status"]
    s, out = cb.plot_event(vis, state, json.dumps({"kind": "click", "points": [], "region": {"box": [[0, 1], [0, 1]]}}))
    assert is_error(out) and "only a select event has a region" in out["status"]


# ---- KNN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", ["map", "activations"])
def test_knn_matches_brute_force(vis, state, space):
    ld = vis.layer("digits", "mid")
    s, _ = cb.select_point(vis, state, 12)
    s, out = cb.suggest_knn(vis, s, 6, space)
    X = ld.embedding if space == "map" else np.asarray(ld.activations, dtype=np.float64)
    d = np.linalg.norm(X - X[12], axis=1)
    d[12] = np.inf
    want = np.argsort(d, kind="stable")[:6]
    assert list(s.knn) == want.tolist()
    np.testing.assert_allclose(s.knn_dist, d[want], rtol=1e-4)
    assert ring(fig_of(out), "knn") == want.tolist()
    captions = [c for _, c in out["neighbor_gallery"]]
    assert len(captions) == 6 and all("d=" in c for c in captions)
    assert s.neighbours() == want.tolist()


@pytest.mark.parametrize("k", [0, 51, -3, 2.5, "ten", None, float("nan")])
def test_knn_bad_k(vis, state, k):
    s, _ = cb.select_point(vis, state, 1)
    s2, out = cb.suggest_knn(vis, s, k, "map")
    assert is_error(out) and "[1, 50]" in out["status"] and s2 == s


def test_knn_needs_a_selection_and_a_known_space(vis, state):
    assert is_error(cb.suggest_knn(vis, state, 5, "map")[1])
    s, _ = cb.select_point(vis, state, 1)
    _, out = cb.suggest_knn(vis, s, 5, "cosine")
    assert is_error(out) and "map, activations" in out["status"]


# ---- class filter ------------------------------------------------------------------------------

def test_class_filter(vis, state):
    md = vis.model("digits")
    s, out = cb.filter_class(vis, state, "3")
    count = int(np.sum(md.metadata.class_label == 3))
    assert s.class_filter == 3 and f"{count} points" in out["status"]
    for t in traces(fig_of(out), "pts"):
        assert (t["marker"]["opacity"] > 0.2) == (t["name"] == "3")
    s, out = cb.filter_class(vis, s, cb.ALL_CLASSES)
    assert s.class_filter is None
    s2, out = cb.filter_class(vis, s, "eleven")
    assert is_error(out) and s2 == s


# ---- generation --------------------------------------------------------------------------------

GEN = dict(class_choice=cb.FROM_SELECTION, steps=6, mask_steps=3, alpha=1.0, guidance=2.0, noise_max=100.0,
           noise_min=0.0, noise_mode="fixed", seed=3, num_samples=2)


@pytest.fixture(scope="module")
def generated(vis):
    """A session with a selection, KNN neighbours and two generations."""
    s, _ = cb.select_point(vis, cb.initial_session(vis), 12)
    s, _ = cb.suggest_knn(vis, s, 5, "map")
    from diffviews.processing.umap import UMAPPipeline

    real = UMAPPipeline.transform
    calls = []

    def counting(self, X, *a, **k):
        calls.append(len(X))
        return real(self, X, *a, **k)

    with patch.object(UMAPPipeline, "transform", counting):
        s, out = cb.generate(vis, s, **GEN)
    s2, out2 = cb.generate(vis, s, **{**GEN, "class_choice": "7", "mask_steps": 0, "num_samples": 1})
    return s, out, s2, out2, calls


def test_generate_from_neighbours(vis, generated):
    s, out, _, _, calls = generated
    rec = vis.generations.get(s.active)
    md = vis.model("digits")
    assert "masked at **mid** by the mean of 5 neighbour(s)" in out["status"]
    assert rec.class_label == int(md.metadata.class_label[12]) and rec.neighbours == list(s.knn)
    assert rec.result.images.shape == (2, 16, 16, 1) and rec.num_steps == 6
    assert calls == [6 * 2]  # the whole trajectory projected in one batched transform
    assert rec.coords["2-D"].shape == (6, 2, 2) and np.isfinite(rec.coords["2-D"]).all()
    assert out["generated_image"].shape[2] == 3
    assert len(out["steps_gallery"]) == 6 and "σ=" in out["steps_gallery"][0][1]
    fig = fig_of(out)
    lines = [t for t in fig["data"] if t.get("meta", "").startswith(f"traj:{rec.id}:") and t["name"].startswith("traj")]
    assert len(lines) == 2 and lines[0]["customdata"] == list(range(6))
    assert {t["name"] for t in fig["data"] if t.get("meta") == f"traj:{rec.id}:0"} >= {"start", "end", "frame"}
    assert s.frame == 5 and "step **6/6**" in out["frame_info"]


def test_masking_changes_the_result(vis, generated):
    s = generated[0]
    masked = vis.generations.get(s.active).result.images
    unmasked = vis.generate("digits", "mid", vis.generations.get(s.active).class_label, [], num_steps=6,
                            mask_steps=0, alpha=1.0, guidance_scale=2.0, noise_max=100.0, noise_min=0.0,
                            noise_mode="fixed", seed=3, num_samples=2).result.images
    assert not np.array_equal(masked, unmasked)


def test_hover_on_a_trajectory_step(vis, generated):
    s = generated[0]
    rec = vis.generations.get(s.active)
    out = cb.hover(vis, s, json.dumps({"kind": "hover", "points": [{"i": 2, "m": f"traj:{rec.id}:1"}]}))
    np.testing.assert_array_equal(out["preview_image"], rec.step_image(2, 1))
    assert "step **3/6**" in out["preview_info"] and f"{rec.result.sigmas[2]:.4g}" in out["preview_info"]
    other = cb.initial_session(vis)  # another session cannot look at this session's generation
    assert cb.hover(vis, other, json.dumps({"kind": "hover", "points": [{"i": 2, "m": f"traj:{rec.id}:1"}]})) \
        ["preview_info"].startswith("**Error:**")


def test_frames_and_trajectories(vis, generated):
    s, _, s2, out2, _ = generated
    assert len(s2.generations) == 2 and s2.active != s.active
    assert [v for _, v in out2["trajectory_dropdown"]["choices"]] == list(s2.generations)
    assert "without masking" in out2["status"]
    s3, out = cb.step_frame(vis, s2, -1)
    assert s3.frame == 4 and "step **5/6**" in out["frame_info"]
    s3, _ = cb.step_frame(vis, s3, 1)
    s3, _ = cb.step_frame(vis, s3, 1)  # clamps at the last step
    assert s3.frame == 5
    s3, out = cb.plot_event(vis, s3, click(1, f"traj:{s.active}:0"), False)  # clicking a trajectory step
    assert s3.active == s.active and s3.frame == 1
    s4, out = cb.choose_trajectory(vis, s3, s2.active)
    assert s4.active == s2.active and out["generated_image"] is not None
    assert is_error(cb.choose_trajectory(vis, s4, "../../etc/passwd")[1])
    assert is_error(cb.choose_trajectory(vis, cb.initial_session(vis), s2.active)[1])  # not that session's


def test_clear_trajectories(vis, state):
    s, _ = cb.select_point(vis, state, 2)
    for seed in (1, 2):
        s, out = cb.generate(vis, s, **{**GEN, "steps": 2, "mask_steps": 0, "seed": seed, "num_samples": 1})
    ids = s.generations
    assert len(ids) == 2 and len(out["trajectory_dropdown"]["choices"]) == 2
    s, out = cb.clear_trajectories(vis, s)
    assert s.generations == () and s.active is None
    assert out["trajectory_dropdown"]["choices"] == [] and out["generated_image"] is None
    assert not [t for t in fig_of(out)["data"] if t.get("meta", "").startswith("traj:")]
    assert all(vis.generations.get(g) is None for g in ids)
    assert is_error(cb.step_frame(vis, s, 1)[1])


BAD_GEN = [("steps", 0, "[1, 100]"), ("steps", 101, "[1, 100]"), ("mask_steps", 7, "[0, 6]"),
           ("alpha", 1.5, "[0.0, 1.0]"), ("guidance", -1, "[0.0, 20.0]"), ("noise_max", 120, "[0.0, 100.0]"),
           ("noise_min", 100.0, "greater than noise min"), ("noise_mode", "turbo", "stochastic, fixed, zero"),
           ("seed", -1, "[0, 2147483647]"), ("num_samples", 9, "[1, 8]"), ("class_choice", "eleven", "choose one"),
           ("steps", "six", "[1, 100]"), ("alpha", float("nan"), "[0.0, 1.0]")]


@pytest.mark.parametrize("field,value,allowed", BAD_GEN)
def test_generate_validates_every_field(vis, state, field, value, allowed):
    s, _ = cb.select_point(vis, state, 2)
    s2, out = cb.generate(vis, s, **{**GEN, field: value})
    assert is_error(out) and allowed in out["status"] and s2 == s


def test_generate_without_a_selection_needs_a_class(vis, state):
    _, out = cb.generate(vis, state, **GEN)
    assert is_error(out) and "choose a class" in out["status"]


# ---- export ------------------------------------------------------------------------------------

def test_exports(vis, generated):
    s = generated[0]
    s, out = cb.export_selection(vis, s)
    with zipfile.ZipFile(out["export_file"]) as z:
        names = z.namelist()
        rows = z.read("points.csv").decode().strip().splitlines()
        meta = json.loads(z.read("selection.json"))
    assert meta["selected"] == 12 and meta["knn"] == list(s.knn)
    assert len(rows) == 1 + 1 + len(s.knn) and sum(n.startswith("images/") for n in names) == 1 + len(s.knn)
    s, out = cb.export_generation(vis, s)
    rec = vis.generations.get(s.active)
    with zipfile.ZipFile(out["export_file"]) as z:
        names = set(z.namelist())
        params = json.loads(z.read("params.json"))
        traj = z.read("trajectory.csv").decode().strip().splitlines()
    assert {"final_0.png", "final_1.png", "params.json", "trajectory.csv"} <= names
    assert params["params"]["num_steps"] == 6 and params["neighbours"] == rec.neighbours
    assert len(traj) == 1 + 6 * 2
    assert is_error(cb.export_selection(vis, cb.initial_session(vis))[1])
    assert is_error(cb.export_generation(vis, cb.initial_session(vis))[1])


# ---- model, layer and view switches ------------------------------------------------------------

def test_switch_model_and_isolated_sessions(vis):
    a, _ = cb.select_point(vis, cb.initial_session(vis), 5)
    b, out = cb.switch_model(vis, cb.initial_session(vis), SECOND)
    assert b.model == SECOND and b.selected is None and "digits-b" in out["status"]
    assert out["layer_dropdown"]["value"] == b.layer and out["class_filter"]["value"] == cb.ALL_CLASSES
    loads = dict(vis.cache.loads)
    for _ in range(2):  # interleave: with one resident model, each call reloads its model transparently
        a, out_a = cb.suggest_knn(vis, a, 3, "map")
        b, out_b = cb.select_point(vis, b, 9)
        assert json.loads(out_a["overlay"])["base"].startswith("digits/")
        assert json.loads(out_b["overlay"])["base"].startswith(f"{SECOND}/")
    assert a.model == "digits" and a.selected == 5 and len(a.knn) == 3 and b.selected == 9 and b.knn == ()
    assert vis.cache.resident() == [SECOND] and vis.cache.loads["digits"] > loads.get("digits", 0)
    assert cb.switch_model(vis, a, "digits") == (a, {})  # the shown model again: nothing to do, nothing reset
    assert cb.switch_layer(vis, a, a.layer) == (a, {}) and cb.switch_view(vis, a, a.view) == (a, {})
    s2, out = cb.switch_model(vis, a, "../digits")
    assert is_error(out) and "digits, digits-b" in out["status"] and s2 == a


def test_switch_layer_extracts_through_gpu_ops_then_loads_from_cache(vis, data_dir):
    layer = "enc_4x4"
    paths = model_paths(data_dir, "digits")
    assert not activations_valid(paths, layer)
    real = gpu_ops._extract_layer_on_gpu
    calls, progress = [], []

    def spy(backend, request):
        assert backend is vis.backend
        calls.append(request)
        return real(backend, request)

    def record(frac, desc=None):
        progress.append(desc)

    state, _ = cb.select_point(vis, cb.initial_session(vis), 4)
    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=spy):
        s, out = cb.switch_layer(vis, state, layer, progress=record)
    assert s.layer == layer and s.selected == 4 and "extracted and mapped" in out["status"]
    assert len(calls) == 1 and calls[0].layers == [layer] and calls[0].model == "digits"
    assert len(calls[0].images) == vis.model("digits").metadata.num_samples
    assert any("Extracting" in (d or "") for d in progress) and any("Fitting" in (d or "") for d in progress)
    assert load_activations(paths, layer).shape[0] == vis.model("digits").n_points
    assert paths.embedding(layer).is_file()
    assert ring(fig_of(out), "selected") == [4]

    fresh = GradioVisualizer(data_dir, backend=LocalBackend(data_dir, device="cpu"))  # as a new process: from disk
    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=AssertionError("extracted")), \
            patch("diffviews.data.layers.fit_here", side_effect=AssertionError("refitted")):
        s2, out2 = cb.switch_layer(fresh, cb.initial_session(fresh), layer)
    assert s2.layer == layer and "loaded from cache" in out2["status"]
    np.testing.assert_array_equal(fresh.layer("digits", layer).embedding, vis.layer("digits", layer).embedding)

    s3, out = cb.switch_layer(vis, s, "not_a_layer")
    assert is_error(out) and "enc_16x16" in out["status"] and s3 == s


def test_3d_view(vis):
    s, _ = cb.select_point(vis, cb.initial_session(vis), 30)
    s, out = cb.switch_view(vis, s, "3-D")
    assert s.view == "3-D" and s.layer == "mid"
    md = vis.model("digits")
    fig = fig_of(out)
    pts = traces(fig, "pts")
    assert pts and all(t["type"] == "scatter3d" for t in pts)
    z = np.concatenate([decode(t["z"]) for t in pts])
    assert set(np.round(z, 3)) == set(np.round(md.noise_levels, 3))  # levels stacked along z
    assert ring(fig, "selected") == [30] and [t for t in fig["data"] if t["name"] == "selected"][0]["type"] \
        == "scatter3d"
    s, out = cb.select_point(vis, s, 100)  # clicking and hovering work on every level's points
    assert s.selected == 100
    assert cb.hover(vis, s, json.dumps({"kind": "hover", "points": [{"i": 150, "m": "pts"}]}))["preview_image"] \
        is not None
    s, out = cb.suggest_knn(vis, s, 4, "map")
    assert len(ring(fig_of(out), "knn")) == 4
    s, _ = cb.generate(vis, s, **{**GEN, "num_samples": 1})
    rec = vis.generations.get(s.active)
    assert rec.coords["3-D"].shape == (6, 1, 3)
    s, out = cb.switch_view(vis, s, "2-D")
    assert s.view == "2-D" and s.layer == "mid" and traces(fig_of(out), "pts")[0]["type"] == "scattergl"
    assert is_error(cb.switch_view(vis, s, "4-D")[1])


# ---- bad input everywhere ----------------------------------------------------------------------

GARBAGE = [None, "", "abc", -1, 10**9, float("inf"), [1, 2], {"a": 1}, "../../etc/passwd"]


@pytest.mark.parametrize("value", GARBAGE)
def test_every_handler_answers_garbage_with_a_message(vis, state, value):
    s, _ = cb.select_point(vis, state, 1)
    handlers = [
        lambda: cb.select_point(vis, s, value),
        lambda: cb.plot_event(vis, s, value, False),
        lambda: cb.suggest_knn(vis, s, value, "map"),
        lambda: cb.suggest_knn(vis, s, 5, value),
        lambda: cb.filter_class(vis, s, value),
        lambda: cb.switch_model(vis, s, value),
        lambda: cb.switch_layer(vis, s, value),
        lambda: cb.switch_view(vis, s, value),
        lambda: cb.generate(vis, s, **{**GEN, "steps": value}),
        lambda: cb.choose_trajectory(vis, s, value),
        lambda: cb.step_frame(vis, s, value),
    ]
    for call in handlers:
        new_state, out = call()
        assert new_state == s and is_error(out), out
