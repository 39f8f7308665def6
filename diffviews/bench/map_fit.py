"""Map fit for one layer: our pipeline against the plain baseline a user would write.

The baseline is StandardScaler → PCA(50) → umap-learn ``UMAP`` with the same parameters as
ours (15 neighbours, min_dist 0.1, random_state 42, so both maps are reproducible). Each
side runs in a FRESH Python process (``python -m diffviews.bench.map_fit --worker ...``):
the first fit there is the cold number (imports and numba JIT included, as a user meets
it), the following ones the warm number. The map quality of both is reported as the
share of each point's 15 nearest neighbours in the PCA space that stay among its 15
nearest on the map, so that a faster map is not a worse one.

Processes, in order (the full run; ``quick`` runs the first and the last only):

1. baseline;
2. ours "before": our pipeline with its speed-ups switched off (``DIFFVIEWS_EXACT_KNN=0``,
   ``DIFFVIEWS_JIT_CACHE=0``), i.e. what it did before they existed;
3. ours on a machine that never ran it: our kernel cache folder (``DIFFVIEWS_CACHE_DIR``) empty;
4. ours again on that same, now filled, cache folder: every later start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .timing import emit_result, rounded, run_worker

PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "random_state": 42}
PCA_COMPONENTS = 50
QUALITY_K = 15


def _baseline_fit(X: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from umap import UMAP

    Z = StandardScaler().fit_transform(X)
    Z = PCA(n_components=min(PCA_COMPONENTS, *X.shape), random_state=PARAMS["random_state"]).fit_transform(Z)
    return UMAP(**PARAMS).fit_transform(Z)


def _ours_fit(X: np.ndarray) -> np.ndarray:
    from ..processing.umap import UMAPPipeline

    return UMAPPipeline(pca_components=PCA_COMPONENTS, backend="umap-learn", **PARAMS).fit(X).embedding_


def worker(kind: str, activations: Path, warm_repeats: int, out: Path | None) -> dict:
    """One side, in this (fresh) process: the cold fit, then ``warm_repeats`` warm fits."""
    import warnings

    warnings.filterwarnings("ignore")  # umap-learn / scikit-learn chatter is not a result
    X = np.ascontiguousarray(np.load(activations), dtype=np.float32)  # reading the data is not timed
    fit = _baseline_fit if kind == "baseline" else _ours_fit
    t0 = time.perf_counter()
    embedding = fit(X)  # imports, JIT and the fit: what the first map of a process costs
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(warm_repeats):
        t0 = time.perf_counter()
        again = fit(X)
        warm.append(time.perf_counter() - t0)
    if out is not None:
        np.save(out, np.asarray(embedding, dtype=np.float32))
    return {"cold_s": rounded(cold, 2), "warm_s": rounded(np.median(warm), 2) if warm else None,
            "deterministic": bool(np.array_equal(again, embedding)) if warm else None}


def knn_preservation(reference: np.ndarray, embedding: np.ndarray, k: int = QUALITY_K) -> float:
    """Mean share of each row's ``k`` nearest rows in ``reference`` that are also among its
    ``k`` nearest in ``embedding`` (1.0: the map keeps every neighbourhood)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(reference) - 1)
    a = NearestNeighbors(n_neighbors=k + 1).fit(reference).kneighbors(reference, return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding, return_distance=False)[:, 1:]
    return rounded(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]), 4)


def _pca_space(X: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    return PCA(n_components=min(PCA_COMPONENTS, *X.shape), random_state=PARAMS["random_state"]).fit_transform(Z)


def measure(activations: Path, quick: bool, warm_repeats: int = 2) -> dict:
    """Baseline vs ours, cold and warm, each side in fresh processes (see the module docstring)."""
    X = np.load(activations, mmap_mode="r")
    result: dict = {"n_points": int(X.shape[0]), "n_features": int(X.shape[1]), "params": dict(PARAMS),
                    "pca_components": PCA_COMPONENTS}
    repeats = 1 if quick else warm_repeats
    work = Path(tempfile.mkdtemp(prefix="diffviews-bench-fit-"))
    try:
        def run(kind: str, env: dict | None = None, save: bool = False) -> dict:
            args = ["--worker", kind, "--activations", activations, "--warm-repeats", repeats]
            if save:
                args += ["--out", work / f"{kind}.npy"]
            return run_worker(__name__, args, env=env)

        baseline = run("baseline", save=True)
        if quick:
            ours = run("ours", save=True)
            first = before = None
        else:
            before = run("ours", env={"DIFFVIEWS_EXACT_KNN": "0", "DIFFVIEWS_JIT_CACHE": "0"})
            # a cache folder of our own, empty at first (pynndescent keeps its own cached kernels,
            # as in the runs above); with NUMBA_CACHE_DIR set, numba puts everything there instead
            cache = {"DIFFVIEWS_CACHE_DIR": work / "cache"}
            result["first_run_cache_isolated"] = not os.environ.get("NUMBA_CACHE_DIR")
            first = run("ours", env=cache)
            ours = run("ours", env=cache, save=True)
        result.update(
            baseline_cold_s=baseline["cold_s"], baseline_warm_s=baseline["warm_s"],
            ours_cold_s=ours["cold_s"], ours_warm_s=ours["warm_s"],
            ours_first_run_cold_s=first and first["cold_s"],
            before_cold_s=before and before["cold_s"], before_warm_s=before and before["warm_s"],
            speedup=rounded(baseline["cold_s"] / ours["cold_s"], 2),
            speedup_warm=rounded(baseline["warm_s"] / ours["warm_s"], 2) if ours["warm_s"] else None,
            ours_deterministic=ours["deterministic"],
        )
        Z = _pca_space(np.asarray(X, dtype=np.float32))
        result["baseline_knn_preservation"] = knn_preservation(Z, np.load(work / "baseline.npy"))
        result["ours_knn_preservation"] = knn_preservation(Z, np.load(work / "ours.npy"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="one side of the map-fit benchmark, in a fresh process")
    p.add_argument("--worker", choices=("baseline", "ours"), required=True)
    p.add_argument("--activations", type=Path, required=True)
    p.add_argument("--warm-repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    emit_result(worker(args.worker, args.activations, args.warm_repeats, args.out))


if __name__ == "__main__":
    main()
