"""Server-side latency of the app's event handlers, called as the app calls them (the
functions in ``visualization.callbacks``), and the size of the figure they send.

hover (preview of a point), click (select a point: new figure, preview, gallery), knn (the
10 nearest on the map, and in activation space), class_filter (show one class, or all):
p50 / p95 over ``calls`` calls at random points. Every class is drawn once before the
class-filter timing (its figure traces are then cached, as in a running app); those first
draws are reported on their own.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .timing import latency, rounded, seconds


def _checked(name: str, fn):
    """``fn`` for timing; its first call must not come back as an error message (the handlers
    turn failures into a status text, which would otherwise be timed as if it worked)."""
    def call(i):
        out = fn(i)
        if i == 0:
            outputs = out[1] if isinstance(out, tuple) else out
            message = str(outputs.get("status", outputs.get("preview_info", "")))
            if message.startswith("**Error"):
                raise RuntimeError(f"{name} handler failed: {message}")
        return out

    return call


def measure(data_dir: Path, model: str, calls: int) -> dict:
    from ..visualization import callbacks as cb
    from ..visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data_dir, device="cpu", default_model=model)
    state = cb.initial_session(vis, model)
    n = vis.model(model).n_points
    first_figure, figure = seconds(lambda: cb.figure(vis, state))  # encodes the base traces (then cached)
    points = np.random.default_rng(0).integers(0, n, size=calls)
    selected, _ = cb.select_point(vis, state, int(points[0]))

    def hover(i):
        return cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": int(points[i]), "m": "pts"}]}))

    def click(i):
        return cb.select_point(vis, state, int(points[i]))

    def knn(space):
        return lambda i: cb.suggest_knn(vis, replace(selected, selected=int(points[i])), 10, space)

    md = vis.model(model)
    choices = [cb.ALL_CLASSES, *md.class_names]
    class_first = [seconds(lambda c=c: cb.filter_class(vis, state, c))[0] for c in choices[1:]]

    def class_filter(i):
        return cb.filter_class(vis, state, choices[i % len(choices)])

    result = {
        "n_points": n,
        "hover": latency(_checked("hover", hover), calls),
        "click": latency(_checked("click", click), calls),
        "knn": latency(_checked("knn", knn("map")), calls),
        "knn_activations": latency(_checked("knn", knn("activations")), calls),
        "class_filter": latency(_checked("class filter", class_filter), calls),
        "class_filter_first_draw_ms": rounded(1000 * float(np.mean(class_first))),
        "first_figure_ms": rounded(1000 * first_figure),
    }
    with_rings = cb.suggest_knn(vis, selected, 10, "map")[0]
    base_bytes = len(figure.json)
    click_bytes = len(cb.figure(vis, with_rings).json)
    result["figure"] = {"bytes": base_bytes, "bytes_per_point": rounded(base_bytes / n, 1),
                        "with_selection_bytes": click_bytes}
    return result
