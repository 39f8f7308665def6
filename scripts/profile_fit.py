"""Where the time of one map fit goes: preprocessing, neighbour search (and its compile), the
fuzzy graph + spectral init, and the SGD layout, each timed on its own, printed as JSON lines.

    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python scripts/profile_fit.py --points 100000

Data: ``scripts/measure_landmarks.clustered`` (64-D, 10 classes × 5 levels). Neighbour search
variants: umap-learn's own (pynndescent, ``n_jobs`` 1 and 2, compile timed separately on tiny
data) and ``ExactNeighbors``-style float32 BLAS (``processing.knn.exact_knn``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from measure_landmarks import clustered

from diffviews.processing.quality import knn_preservation
from diffviews.processing.umap import fit_scaled_pca


def stamp(label: str, t0: float, **extra) -> float:
    print(json.dumps({"stage": label, "s": round(time.perf_counter() - t0, 2), **extra}), flush=True)
    return time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=100000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--knn", nargs="+", default=["nnd1", "nnd2", "exact"])
    p.add_argument("--epochs", type=int, nargs="+", default=[200])
    p.add_argument("--parallel-sgd", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    X, _, _ = clustered(args.points, args.dim, 10, 5)
    Zq = (X - X.mean(axis=0)) / X.std(axis=0)
    t = time.perf_counter()
    import umap  # noqa: F401
    from pynndescent import NNDescent
    from umap.umap_ import fuzzy_simplicial_set

    from diffviews.processing.umap_backend import enable_jit_cache, make_umap
    enable_jit_cache()
    t = stamp("import umap", t)
    _, _, Z = fit_scaled_pca(X, 50, 42)
    t = stamp("scaler+pca", t, shape=list(Z.shape))
    knn = {}
    for kind in args.knn:
        if kind.startswith("nnd"):
            jobs = int(kind[3:])
            NNDescent(Z[:300], n_neighbors=15, random_state=None if jobs > 1 else 42, n_jobs=jobs)
            t = stamp(f"{kind} compile (tiny)", t)
            index = NNDescent(Z, n_neighbors=15, random_state=None if jobs > 1 else 42, n_jobs=jobs,
                              n_trees=min(64, 5 + int(round((Z.shape[0]) ** 0.5 / 20.0))),
                              n_iters=max(5, int(round(np.log2(Z.shape[0])))), max_candidates=60,
                              low_memory=True, compressed=False)
            knn[kind] = index.neighbor_graph
            t = stamp(f"{kind} search", t)
        elif kind == "exact":
            from diffviews.processing.knn import exact_knn
            knn[kind] = exact_knn(Z, 15)
            t = stamp("exact search", t)
    ref = knn.get("exact")
    if ref is not None:
        for kind, (ind, _) in knn.items():
            recall = np.mean([np.intersect1d(a, b).size / 15 for a, b in zip(ind[:5000], ref[0][:5000])])
            print(json.dumps({"recall_vs_exact": kind, "recall": round(float(recall), 4)}), flush=True)
    ind, dist = next(iter(knn.values()))
    t = time.perf_counter()
    fuzzy_simplicial_set(Z, 15, 42, "euclidean", knn_indices=ind, knn_dists=dist)
    t = stamp("fuzzy graph", t)
    for epochs in args.epochs:
        for kind, (ind, dist) in knn.items():
            t = time.perf_counter()
            r = make_umap("umap-learn", n_neighbors=15, min_dist=0.1, random_state=None if args.parallel_sgd else 42,
                          n_epochs=epochs, precomputed_knn=(ind.astype(np.int32), dist.astype(np.float32), None),
                          n_jobs=2 if args.parallel_sgd else 1)
            E = r.fit_transform(Z)
            t = stamp(f"umap fit given knn={kind} epochs={epochs}", t,
                      knn15=round(knn_preservation(Zq, E, k=15), 4))


if __name__ == "__main__":
    main()
