"""Benchmark the app's handlers on built data (the issue's speed targets; not a test).

    python scripts/bench_app.py --data-dir data --model digits [--layer2 enc_8x8]

Prints p50 / p95 server time of hover, click (select), KNN (map and activation space), a
cached layer switch (layer on disk, not in memory), the figure payload in bytes per point,
and a 10-step generation with its trajectory projection. ``--layer2`` must already be built
(switch to it once in the app, or ``diffviews build-layer``) for the layer-switch number.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diffviews.processing.umap import warmup
from diffviews.visualization import callbacks as cb
from diffviews.visualization.visualizer import GradioVisualizer


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model", default="digits")
    p.add_argument("--layer2", default=None, help="a second, already built layer for the cached-switch timing")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    thread = warmup(background=True)
    vis = GradioVisualizer(args.data_dir, device="cpu", default_model=args.model)
    state = cb.initial_session(vis, args.model)
    n = vis.model(args.model).n_points
    rng = np.random.default_rng(0)
    points = rng.integers(0, n, size=args.repeats)
    cb.figure(vis, state)  # base traces encoded once per (model, layer, view)

    def hover(i):
        cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": int(points[i]), "m": "pts"}]}))

    def click(i):
        cb.select_point(vis, state, int(points[i]))

    selected, _ = cb.select_point(vis, state, 0)
    rows = {"hover": timed(hover, args.repeats), "click (select + figure + panels)": timed(click, args.repeats)}
    for space in cb.KNN_SPACES:
        vis.neighbours(args.model, state.layer, "2-D", 0, 10, space)
        rows[f"KNN k=10 ({space})"] = timed(
            lambda i, s=space: vis.neighbours(args.model, state.layer, "2-D", int(points[i]), 10, s), args.repeats)
    fig = cb.figure(vis, selected).json
    for name, (p50, p95) in rows.items():
        print(f"{name:40s} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms")
    print(f"{'figure payload':40s} {len(fig) / n:.1f} bytes/point ({len(fig)} bytes, {n} points)")
    if args.layer2:
        fresh = GradioVisualizer(args.data_dir, device="cpu", default_model=args.model)
        s = cb.initial_session(fresh, args.model)
        fresh.model(args.model)
        t0 = time.perf_counter()
        s2, out = cb.switch_layer(fresh, s, args.layer2)
        print(f"{'cached layer switch':40s} {1000 * (time.perf_counter() - t0):7.1f} ms  ({out['status']})")
    if thread is not None:
        thread.join()
    s, _ = cb.suggest_knn(vis, selected, 10, "map")
    gen = dict(class_choice=cb.FROM_SELECTION, steps=10, mask_steps=5, alpha=1.0, guidance=2.0, noise_max=100.0,
               noise_min=0.0, noise_mode="stochastic", seed=0, num_samples=1)
    cb.generate(vis, s, **gen)  # loads the weights and the projection pipeline once
    p50, p95 = timed(lambda i: cb.generate(vis, s, **{**gen, "seed": i}), 5)
    print(f"{'generate 10 steps + projection':40s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")


if __name__ == "__main__":
    main()
