"""Steering and map-honesty in the app, through the handlers (``visualization/steering.py``,
``honesty.py``, ``interventions.py``) on the real tiny digits data (no browser).

Set B, blend/add with the noise window, several layers (one built on demand), sweeps with
their grid, chart and zip, the landing report, the map's quality in its title (also for a map
saved without it), the extrapolated trajectory steps and the KNN agreement line.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from diffviews.backends.local import LocalBackend
from diffviews.backends.protocol import GenerationResult
from diffviews.data.layout import model_paths
from diffviews.visualization import callbacks as cb
from diffviews.visualization import honesty
from diffviews.visualization import steering as st
from diffviews.visualization.generations import GenerationRecord
from diffviews.visualization.visualizer import GradioVisualizer

STEER = dict(class_choice=cb.FROM_SELECTION, steps=8, window_from=50.0, window_to=100.0, mode="add", alpha=2.0,
             layers=["mid"], reference="second selection", guidance=2.0, noise_max=100.0, noise_min=0.0,
             noise_mode="fixed", seed=1, num_samples=1)


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("steering_data")
    shutil.copytree(tiny_data_dir / "digits", root / "digits")
    return root


@pytest.fixture(scope="module")
def vis(data_dir):
    return GradioVisualizer(data_dir, backend=LocalBackend(data_dir, device="cpu"), default_model="digits")


def fig_of(out) -> dict:
    """The overlay traces a handler sent (rings, set B, trajectories) as a figure's ``data``."""
    return {"data": json.loads(out["overlay"])["traces"]}


def is_error(out: dict) -> bool:
    return set(out) == {"status"} and out["status"].startswith("**Error:**")


@pytest.fixture(scope="module")
def with_b(vis):
    """A session with set B (point 12 and 4 KNN) and set A (point 40 and 4 KNN)."""
    s, _ = cb.select_point(vis, cb.initial_session(vis), 12)
    s, _ = st.suggest_knn(vis, s, 4, "map")
    b = (12, *s.knn)
    s, out = st.use_as_set_b(vis, s)
    assert s.set_b == b and s.selected is None and s.knn == () and "5 point(s)" in out["set_b_info"]
    s, _ = cb.select_point(vis, s, 40)
    s, _ = st.suggest_knn(vis, s, 4, "map")
    return s


def test_set_b_is_drawn_apart_from_set_a(vis, with_b):
    rings = {t["name"]: t for t in json.loads(cb.overlay(vis, with_b))["traces"] if t.get("meta") == "ring"}
    assert rings["set B"]["customdata"] == list(with_b.set_b)
    assert rings["set B"]["marker"]["symbol"] == "square-open"
    assert rings["set B"]["marker"]["color"] != rings["knn"]["marker"]["color"]
    s, out = st.clear_set_b(vis, with_b)
    assert s.set_b == () and not any(t.get("name") == "set B" for t in fig_of(out)["data"])


def test_set_b_needs_points(vis):
    s, out = st.use_as_set_b(vis, cb.initial_session(vis))
    assert is_error(out) and "nothing to move to set B" in out["status"]
    s, _ = cb.select_point(vis, s, 3)
    _, out = st.steer(vis, s, **STEER)  # "second selection" with an empty B
    assert is_error(out) and "set B is empty" in out["status"]


def test_steer_adds_a_direction_inside_the_window_and_says_where_it_landed(vis, with_b):
    s, out = st.steer(vis, with_b, **STEER)
    rec = vis.generations.get(s.active)
    p = rec.result.params
    assert (p["mask_mode"], p["alpha"], p["noise_window"], p["masked_layers"]) == ("add", 2.0, [50.0, 100.0], ["mid"])
    levels = rec.result.noise_levels[:-1]
    assert p["mask_schedule"] == [bool(50 - 1e-4 <= v <= 100 + 1e-4) for v in levels]
    assert rec.neighbours == [40, *with_b.knn]  # set A: the selected point and its neighbours
    assert "Landed (vote of 10 nearest map points at 20 % noise" in out["status"]
    assert "distance to set A's centroid" in out["status"]
    # α = 0 in add mode changes nothing: same image as no intervention at all
    s0, _ = st.steer(vis, with_b, **{**STEER, "alpha": 0.0})
    plain = vis.generate("digits", "mid", rec.class_label, [], num_steps=8, mask_steps=0, alpha=1.0,
                         guidance_scale=2.0, noise_max=100.0, noise_min=0.0, noise_mode="fixed", seed=1,
                         num_samples=1)
    assert np.array_equal(vis.generations.get(s0.active).result.images, plain.result.images)
    assert not np.array_equal(rec.result.images, plain.result.images)


@pytest.mark.parametrize("field, value, allowed", [
    ("alpha", 1.5, "[0.0, 1.0]"), ("window_from", 101, "[0.0, 100.0]"), ("window_from", 90, "must not exceed"),
    ("layers", ["nope"], "unknown layer 'nope'"), ("reference", "median", "unknown reference set B"),
    ("mode", "replace", "unknown mode"),
])
def test_steer_checks_every_field(vis, with_b, field, value, allowed):
    kw = {**STEER, "mode": "blend", "alpha": 1.0, "window_to": 80.0, field: value}
    s, out = st.steer(vis, with_b, **kw)
    assert is_error(out) and allowed in out["status"] and s == with_b
    _, out = st.steer(vis, with_b, **{**STEER, "alpha": -4.5})
    assert is_error(out) and "[-4.0, 4.0]" in out["status"]


def test_the_alpha_slider_follows_the_mode(vis, state=None):
    _, out = st.switch_mode(vis, cb.initial_session(vis), "add", 0.5)
    assert (out["gen_alpha"]["minimum"], out["gen_alpha"]["maximum"], out["gen_alpha"]["value"]) == (-4.0, 4.0, 0.5)
    _, out = st.switch_mode(vis, cb.initial_session(vis), "blend", -3)
    assert (out["gen_alpha"]["minimum"], out["gen_alpha"]["maximum"], out["gen_alpha"]["value"]) == (0.0, 1.0, 0.0)


def test_several_layers_one_built_on_demand(vis, with_b):
    layer = next(name for name in ("enc_8x8", "dec_8x8", *vis.layers("digits")) if not vis.layer_is_built("digits",
                                                                                                         name))
    s, out = st.steer(vis, with_b, **{**STEER, "mode": "blend", "alpha": 1.0, "layers": ["mid", layer],
                                      "reference": "global mean"})
    assert not is_error(out), out["status"]
    assert vis.layer_is_built("digits", layer)  # through the app's one layer path: cached for a later switch
    assert vis.generations.get(s.active).result.params["masked_layers"] == sorted(["mid", layer])
    assert f"**mid, {layer}**" in out["status"]


def test_sweep_grid_chart_trajectories_and_zip(vis, with_b):
    s, out = st.sweep(vis, with_b, **{**STEER, "reference": "class mean"}, over="alpha", values="-2, -1, 0, 1, 2")
    assert not is_error(out), out["status"]
    assert len(s.sweep) == 5 and s.generations[-5:] == s.sweep
    captions = [c for _, c in out["sweep_gallery"]]
    assert [c.split(" · ")[0] for c in captions] == [f"α = {v}" for v in (-2, -1, 0, 1, 2)]
    drawn = {t["meta"].split(":")[1] for t in fig_of(out)["data"] if str(t.get("meta")).startswith("traj:")}
    assert set(s.sweep) <= drawn  # every value's trajectory is on the map
    chart = out["sweep_chart"].to_plotly_json()["data"]
    assert [len(t["x"]) for t in chart] == [5, 5] and list(chart[0]["x"]) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    seeds = {vis.generations.get(g).result.params["seed"] for g in s.sweep}
    assert seeds == {1}
    s, out = st.export_sweep(vis, s)
    with zipfile.ZipFile(out["export_file"]) as z:
        assert {"params.csv", "sweep.json", *(f"value_{k}.png" for k in range(5))} <= set(z.namelist())
        rows = list(csv.DictReader(io.StringIO(z.read("params.csv").decode())))
    assert [float(r["value"]) for r in rows] == [-2, -1, 0, 1, 2] and {r["mode"] for r in rows} == {"add"}
    assert all(r["landed"] and 0 <= float(r["landed_share"]) <= 1 for r in rows)


def test_sweep_over_the_window_start_and_bad_values(vis, with_b):
    s, out = st.sweep(vis, with_b, **{**STEER, "steps": 4}, over="window_start", values="0 40 80")
    assert not is_error(out), out["status"]
    windows = [vis.generations.get(g).result.params["noise_window"] for g in s.sweep]
    assert windows == [[0.0, 100.0], [40.0, 100.0], [80.0, 100.0]]
    for values, message in (("1", "2 to 12 values"), ("0, 5", "[-4.0, 4.0]"), ("a, b", "sweep value")):
        _, out = st.sweep(vis, with_b, **STEER, over="alpha", values=values)
        assert is_error(out) and message in out["status"]
    _, out = st.sweep(vis, with_b, **{**STEER, "window_to": 60.0}, over="window_start", values="0, 70")
    assert is_error(out) and "[0.0, 60.0]" in out["status"]


def test_knn_status_says_how_many_neighbours_both_spaces_share(vis):
    s, _ = cb.select_point(vis, cb.initial_session(vis), 7)
    s, out = st.suggest_knn(vis, s, 10, "map")
    on_map = set(s.knn)
    in_acts, _ = vis.neighbours("digits", "mid", "2-D", 7, 10, "activations")
    n = len(on_map & set(in_acts.tolist()))
    assert f"{n} of these 10 map neighbours are also among the 10 nearest in activation space" in out["status"]
    s, out = st.suggest_knn(vis, s, 10, "activations")
    assert f"{n} of these 10 activation-space neighbours are also among the 10 nearest on the map" in out["status"]


# ---- map honesty ---------------------------------------------------------------------------------

def test_map_quality_is_in_the_title(vis):
    title = json.loads(cb.figure(vis, cb.initial_session(vis)).json)["layout"]["title"]["text"]
    assert "map quality: 15-NN kept" in title and "trustworthiness" in title


def test_a_map_saved_without_quality_gets_it_once_on_load(tiny_data_dir, tmp_path):
    shutil.copytree(tiny_data_dir / "digits", tmp_path / "digits")
    meta_path = model_paths(tmp_path, "digits").embedding_meta("mid")
    meta = json.loads(meta_path.read_text())
    kept = meta.pop("quality")
    meta_path.write_text(json.dumps(meta))
    vis = GradioVisualizer(tmp_path, backend=LocalBackend(tmp_path, device="cpu"))
    ld = vis.layer("digits", "mid")
    assert ld.embedding_meta["quality"] == kept  # same figures: the same space the map was fitted in
    assert json.loads(meta_path.read_text())["quality"] == kept  # written back: computed once


def _flags(vis, rec):
    return honesty.trajectory_flags(vis, rec)[0]


def test_steps_outside_the_recorded_levels_are_flagged_and_drawn_hollow(vis):
    s = cb.initial_session(vis)
    s, out = st.steer(vis, s, **{**STEER, "class_choice": "3", "steps": 12})  # no set A: no steering
    rec = vis.generations.get(s.active)
    levels = np.round(rec.result.noise_levels[:rec.num_steps], 1)
    outside = (levels > 80.5) | (levels < 19.5)  # the tiny map holds 80, 50 and 20 %
    flags = _flags(vis, rec)
    assert outside.any() and (~outside).any()
    assert np.array_equal(flags["inside_levels"], ~outside)
    # the level check flags exactly the steps outside; a step inside may still be flagged as far
    # from every real activation (between the tiny map's widely spaced levels), never for its level
    assert flags["extrapolated"][outside].all()
    assert all("outside the map's 20–80 %" in r for r in flags["reason"][outside])
    assert not any("outside" in r for r in flags["reason"][~outside])
    assert all("farther from every real activation" in r for r in flags["reason"][~outside & flags["extrapolated"]])
    hollow = [t for t in fig_of(out)["data"] if t.get("name") == "extrapolated"]
    assert len(hollow) == 1 and hollow[0]["customdata"] == np.flatnonzero(flags["extrapolated"]).tolist()
    assert hollow[0]["meta"] == f"traj:{rec.id}:0" and "extrapolated position" in hollow[0]["hovertemplate"]
    assert all(t == r for t, r in zip(hollow[0]["text"], flags["reason"][flags["extrapolated"]]))
    step = int(np.flatnonzero(outside)[0])
    info = cb.hover(vis, s, json.dumps({"kind": "hover", "points": [{"i": step, "m": f"traj:{rec.id}:0"}]}))
    assert "**extrapolated position:** noise" in info["preview_info"]
    inside = int(np.flatnonzero(~flags["extrapolated"])[0])
    info = cb.hover(vis, s, json.dumps({"kind": "hover", "points": [{"i": inside, "m": f"traj:{rec.id}:0"}]}))
    assert "within the map's data" in info["preview_info"]


def test_a_training_samples_own_noising_is_never_flagged(vis):
    md, ld = vis.model("digits"), vis.layer("digits", "mid")
    m = md.metadata
    for sample in np.unique(m.sample_id)[:10]:
        rows = np.flatnonzero(m.sample_id == sample)
        rows = rows[np.argsort(-m.noise_level[rows])]  # highest noise first, as a trajectory runs
        acts = np.asarray(ld.activations[rows], dtype=np.float32)
        result = GenerationResult(images=np.zeros((1, 16, 16, 1), np.uint8),
                                  denoised=np.zeros((len(rows), 1, 16, 16, 1), np.uint8),
                                  noised=np.zeros((len(rows), 1, 16, 16, 1), np.uint8),
                                  trajectory={"mid": acts[:, None, :]}, sigmas=np.append(m.sigma[rows], 0.0),
                                  noise_levels=np.append(m.noise_level[rows], 0.0), params={})
        rec = GenerationRecord(f"real{sample}", "digits", "mid", int(m.class_label[rows[0]]), "x", [], result)
        flags = _flags(vis, rec)
        assert not flags["extrapolated"].any(), flags["reason"]


# ---- quality (slow): the landing report against the demo classifier ------------------------------

@pytest.mark.slow
def test_landing_class_agrees_with_the_demo_classifier(tmp_path):
    """On a 300-sample digits map at the demo's levels (85–40 %), the landed class (vote at the
    landing step: the last step still inside the map's levels) matches the classifier's reading
    of the final image on ≥ 80 % of generations, plain and steered towards another class."""
    from demo_classifier import features, fit_classifier

    from diffviews.data.build import build_model_data
    from diffviews.visualization import interventions as iv

    build_model_data(tmp_path, "digits", num_samples=300, seed=0, progress=False, threads=1)
    vis = GradioVisualizer(tmp_path, backend=LocalBackend(tmp_path, device="cpu"))
    md = vis.model("digits")
    _, clf, _ = fit_classifier("digits")
    agree = total = steered_away = 0
    for label in range(10):
        other = (label + 3) % 10
        target = np.flatnonzero((md.metadata.class_label == other) & (md.level_rank >= 1))[:30].tolist()
        masks = iv.intervention_masks(vis, "digits", ["mid"], target, "blend")
        for kw in ({}, {"masks": masks, "noise_window": (50.0, 100.0)}):
            rec = vis.generate("digits", "mid", label, target if kw else [], num_steps=20, mask_steps=0, alpha=1.0,
                               guidance_scale=1.0, noise_max=100.0, noise_min=0.0, noise_mode="stochastic",
                               seed=label, num_samples=4, **kw)
            seen = clf.predict(features(rec.result.images))
            landed = iv.landing(vis, rec, target).landed
            agree += int(np.sum(landed == seen))
            total += len(seen)
            steered_away += int(np.sum(seen == other)) if kw else 0
    print(f"\nlanding class = classifier on {agree}/{total} generations; {steered_away}/40 steered to another class")
    assert steered_away >= 20, "the steered half did not change class: the test would only check plain samples"
    assert agree / total >= 0.8, f"landing class agreed with the classifier on {agree}/{total}"
