"""Layer switch as a user sees it, through the app's own handler (``callbacks.switch_layer``).

- miss: a layer never mapped before: extract its activations for every point, fit its map,
  save both, draw it (umap-learn's JIT already warm, as the app warms it at start-up);
  ``miss_extract_s`` + ``miss_fit_s`` + ``miss_rest_s`` (saving, the map's quality, drawing),
  and how the map was made (``miss_map``: the map JSON's "map" entry, layout and epochs);
- hit: a layer built on disk but not in this process's memory (a restarted app);
- hit from memory: back to a layer this process already holds.

Against it, the plain cold pipeline on the same layer's activations (``plain_cold_s``): what a
user would write, StandardScaler → PCA(50) → umap-learn ``UMAP`` (``map_fit``'s baseline), in a
fresh process, imports and numba JIT included; ``speedup_vs_plain`` is ``plain_cold_s / miss_s``
and ``miss_knn_preservation`` / ``plain_knn_preservation`` say that the faster map is not a
worse one (15-NN kept, judged in the same PCA space).

The full run also repeats the miss with the exact-neighbour speed-up switched off
(``miss_before_s``), on the same layer, after compiling that path too.
"""

from __future__ import annotations

import os
from pathlib import Path

from .timing import rounded, run_worker, seconds


def _switch(vis, state, layer: str):
    from ..visualization import callbacks as cb

    new_state, out = cb.switch_layer(vis, state, layer)
    status = str(out.get("status", ""))
    if new_state.layer != layer or status.startswith("**Error"):
        raise RuntimeError(f"switching to layer {layer!r} failed: {status}")
    return new_state


def _fresh(data_dir: Path, model: str):
    """A new visualizer and session showing the model's first layer (drawn once)."""
    from ..visualization import callbacks as cb
    from ..visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data_dir, device="cpu", default_model=model)
    state = cb.initial_session(vis, model)
    cb.figure(vis, state)
    return vis, state


def _timed_extraction(vis) -> list[float]:
    """Record the wall time of every extraction this visualizer's backend runs."""
    times: list[float] = []
    inner = vis.backend.extract_layer

    def extract_layer(request):
        t, out = seconds(lambda: inner(request))
        times.append(t)
        return out

    vis.backend.extract_layer = extract_layer
    return times


def _forget_layer(paths, layer: str) -> None:
    from ..data.activations import delete_activations
    from ..data.layers import delete_maps

    delete_activations(paths, layer)
    delete_maps(paths, layer)


def _miss(data_dir: Path, model: str) -> tuple[dict, str]:
    from ..data.maps import load_embedding

    vis, state = _fresh(data_dir, model)
    target = next((name for name in vis.layers(model) if not vis.layer_is_built(model, name)), None)
    if target is None:
        raise RuntimeError(f"every layer of {model!r} is already built; no cache miss to measure")
    extraction = _timed_extraction(vis)
    miss, switched = seconds(lambda: _switch(vis, state, target))
    meta = load_embedding(vis.model(model).paths, target)[1]
    fit = float(meta["fit_seconds"])
    back, _ = seconds(lambda: _switch(vis, switched, state.layer))
    return {"layer": target, "from_layer": state.layer, "miss_s": rounded(miss, 2),
            "miss_extract_s": rounded(sum(extraction), 2), "miss_fit_s": rounded(fit, 2),
            # saving activations and map (with its quality), loading and drawing it
            "miss_rest_s": rounded(miss - sum(extraction) - fit, 2),
            "miss_map": meta.get("map"), "hit_memory_s": rounded(back, 3)}, target


def _against_plain(paths, layer: str, miss_s: float) -> dict:
    """The plain cold pipeline on ``layer``'s activations in a fresh process, and both maps' 15-NN preservation."""
    import tempfile

    import numpy as np

    from ..data.maps import load_embedding
    from . import map_fit

    activations = paths.activations(layer)
    with tempfile.TemporaryDirectory(prefix="diffviews-bench-plain-") as work:
        out = Path(work) / "plain.npy"
        plain = run_worker(map_fit.__name__, ["--worker", "baseline", "--activations", activations,
                                              "--warm-repeats", 0, "--out", out])
        plain_map = np.load(out)
    Z = map_fit._pca_space(np.asarray(np.load(activations, mmap_mode="r"), dtype=np.float32))
    return {"plain_cold_s": plain["cold_s"], "speedup_vs_plain": rounded(plain["cold_s"] / miss_s, 2),
            "plain_knn_preservation": map_fit.knn_preservation(Z, plain_map),
            "miss_knn_preservation": map_fit.knn_preservation(Z, load_embedding(paths, layer)[0])}


def measure(data_dir: Path, model: str, quick: bool) -> dict:
    from ..processing.umap import UMAPPipeline, warmup

    warm, _ = seconds(lambda: warmup(background=False))  # the app runs this in the background at start-up
    result, target = _miss(data_dir, model)
    result["jit_warmup_s"] = rounded(warm, 2)

    vis, state = _fresh(data_dir, model)
    result.update(_against_plain(vis.model(model).paths, target, result["miss_s"]))
    hit, _ = seconds(lambda: _switch(vis, state, target))
    result["hit_s"] = rounded(hit, 3)
    if quick:
        return result

    # the same miss without the exact-neighbour speed-up (its own path compiled first, untimed)
    _forget_layer(vis.model(model).paths, target)
    previous = os.environ.get("DIFFVIEWS_EXACT_KNN")
    os.environ["DIFFVIEWS_EXACT_KNN"] = "0"
    try:
        import numpy as np

        tiny = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
        UMAPPipeline(n_neighbors=10, pca_components=None, random_state=0, backend="umap-learn").fit(tiny)
        before, _ = _miss(data_dir, model)
    finally:
        if previous is None:
            os.environ.pop("DIFFVIEWS_EXACT_KNN", None)
        else:
            os.environ["DIFFVIEWS_EXACT_KNN"] = previous
    result["miss_before_s"] = before["miss_s"]
    result["miss_fit_before_s"] = before["miss_fit_s"]
    return result
