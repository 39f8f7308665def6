"""cuML (GPU) against umap-learn (CPU) fit times for one layer's map; skipped without a GPU."""

from __future__ import annotations

import numpy as np

from .timing import rounded, seconds


def measure(activations: np.ndarray, repeats: int = 2) -> dict:
    """Cold and warm fit seconds of our pipeline on each backend (same data and parameters)."""
    from ..processing.umap import UMAPPipeline
    from ..processing.umap_backend import FORCE_CPU_ENV, cuml_available, force_cpu

    if force_cpu():
        return {"skipped": f"{FORCE_CPU_ENV} forces the CPU"}
    if not cuml_available():
        return {"skipped": "no usable cuML here (needs the 'gpu' extra and a visible CUDA device)"}
    X = np.ascontiguousarray(activations, dtype=np.float32)
    result: dict = {"n_points": int(X.shape[0]), "n_features": int(X.shape[1])}
    for backend, key in (("cuml", "cuml"), ("umap-learn", "umap_learn")):
        def fit(backend=backend):
            return UMAPPipeline(backend=backend).fit(X)

        cold, _ = seconds(fit)  # first fit of this backend in the process (CUDA context or numba JIT)
        warm = [seconds(fit)[0] for _ in range(max(1, repeats))]
        result[f"{key}_cold_s"] = rounded(cold, 2)
        result[f"{key}_warm_s"] = rounded(np.median(warm), 2)
    result["speedup_warm"] = rounded(result["umap_learn_warm_s"] / result["cuml_warm_s"], 2)
    return result
