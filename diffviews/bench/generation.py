"""Generation through the app's handler (``callbacks.generate``): 10 steps, one sample.

- ``s``: masked at the shown layer by the mean of a point's 10 nearest neighbours for the
  first 5 steps, the trajectory projected onto the map (what a user normally runs);
- ``no_mask_s``: the same with no neighbours (no masking);
- ``projection_ms``: the trajectory projection alone;
- ``first_s``: the first call of a process (loads the weights and the projection pipeline).

When torch uses more than one thread, the masked run is repeated with one thread
(``s_1_thread``): on small shared machines one thread is often faster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .timing import median_seconds, rounded, seconds

STEPS = 10
GEN = dict(steps=STEPS, mask_steps=5, alpha=1.0, guidance=2.0, noise_max=100.0, noise_min=0.0,
           noise_mode="stochastic", num_samples=1)


def measure(data_dir: Path, model: str, repeats: int) -> dict:
    import torch

    from ..data.build import torch_threads
    from ..visualization import callbacks as cb
    from ..visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data_dir, device="cpu", default_model=model)
    state = cb.initial_session(vis, model)
    plain, _ = cb.select_point(vis, state, 0)
    masked, _ = cb.suggest_knn(vis, plain, 10, "map")

    def run(session, seed: int):
        new_state, out = cb.generate(vis, session, cb.FROM_SELECTION, seed=seed, **GEN)
        if new_state.active is None or new_state.active == session.active:
            raise RuntimeError(f"generation failed: {out.get('status')}")
        return vis.generations.get(new_state.active)

    first, rec = seconds(lambda: run(masked, 0))
    result = {"steps": STEPS, "neighbours": len(masked.neighbours()), "first_s": rounded(first, 2),
              "s": rounded(median_seconds(lambda i: run(masked, i + 1), repeats), 3),
              "no_mask_s": rounded(median_seconds(lambda i: run(plain, i + 1), repeats), 3),
              "torch_threads": torch.get_num_threads()}

    def project(_i):
        rec.coords.clear()
        vis.trajectory_coords(rec, "2-D")

    result["projection_ms"] = rounded(1000 * median_seconds(project, max(repeats, 3)), 1)
    result["projection_method"] = vis.layer(model, state.layer).pipeline(vis.model(model).paths).transform_method_
    if torch.get_num_threads() > 1:
        with torch_threads(1):
            result["s_1_thread"] = rounded(median_seconds(lambda i: run(masked, i + 1), repeats), 3)
    result["trajectory_points"] = int(np.prod(rec.result.trajectory[state.layer].shape[:2]))
    return result
