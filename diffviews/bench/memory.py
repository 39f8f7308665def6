"""Resident memory while one session switches between two models, in a fresh process.

The app keeps one model resident: switching to B evicts A (its data, maps and weights) and
switching back loads A again. Each visit selects a point, suggests neighbours and runs a
short generation, so the weights and the projection pipeline are loaded too. RSS is read
after loading A and after each of ``cycles`` round trips A → B → A; ``rss_growth_pct`` is
the growth from the first round trip to the last (the first one sets the allocator's
high-water mark, which the C allocator keeps whether or not anything leaks).
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from .timing import emit_result, rounded, rss_bytes, run_worker, seconds

MIB = 2**20


def _visit(vis, state, model: str):
    from ..visualization import callbacks as cb

    if state.model != model:
        state, out = cb.switch_model(vis, state, model)
        if state.model != model:
            raise RuntimeError(f"switching to model {model!r} failed: {out.get('status')}")
    state, _ = cb.select_point(vis, state, 0)
    state, _ = cb.suggest_knn(vis, state, 5, "map")
    new_state, out = cb.generate(vis, state, cb.FROM_SELECTION, 4, 2, 1.0, 2.0, 100.0, 0.0, "fixed", 0, 1)
    if new_state.active is None:
        raise RuntimeError(f"generation on {model!r} failed: {out.get('status')}")
    return cb.clear_trajectories(vis, new_state)[0]


def _rss_mib() -> float:
    gc.collect()
    return rounded(rss_bytes() / MIB, 1)


def worker(data_dir: Path, model_a: str, model_b: str, cycles: int) -> dict:
    from ..visualization import callbacks as cb
    from ..visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data_dir, device="cpu", max_resident_models=1, default_model=model_a)
    state = _visit(vis, cb.initial_session(vis, model_a), model_a)
    after_load = _rss_mib()
    rss, times = [], []
    for _ in range(cycles):
        t, state = seconds(lambda s=state: _visit(vis, _visit(vis, s, model_b), model_a))
        times.append(t)
        rss.append(_rss_mib())
    return {"models": [model_a, model_b], "cycles": cycles, "rss_after_load_mib": after_load,
            "rss_after_cycle_mib": rss, "round_trip_s": [rounded(t, 2) for t in times],
            "loads": dict(vis.cache.loads),
            "rss_growth_pct": rounded(100 * (rss[-1] - rss[0]) / rss[0], 2),
            "rss_growth_from_first_load_pct": rounded(100 * (rss[-1] - after_load) / after_load, 2)}


def measure(data_dir: Path, model_a: str, model_b: str, cycles: int = 5) -> dict:
    return run_worker(__name__, ["--data-dir", data_dir, "--models", model_a, model_b, "--cycles", cycles])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the memory benchmark, in a fresh process")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--models", nargs=2, required=True)
    p.add_argument("--cycles", type=int, default=5)
    args = p.parse_args(argv)
    emit_result(worker(args.data_dir, *args.models, args.cycles))


if __name__ == "__main__":
    main()
