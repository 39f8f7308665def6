"""Landmark map fit vs the full fit on synthetic clustered activations: fit time and 15-NN
preservation (``diffviews.processing.quality.knn_preservation``) of each, printed as JSON lines.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python scripts/measure_landmarks.py --points 20000 100000

The data: ``classes`` × ``levels`` clusters in ``dim`` dimensions (a class centre shifted along
one direction by the noise level), each a smooth 2-D sheet with a little Gaussian noise, so the
strata are class × noise level as in a real map and neighbourhoods have structure to keep.
umap-learn's kernels (both neighbour paths) are compiled before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diffviews.processing.landmarks import LANDMARK_THRESHOLD, N_LANDMARKS, fit_map
from diffviews.processing.quality import knn_preservation
from diffviews.processing.umap import UMAPPipeline, warmup

PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "pca_components": 50, "random_state": 42, "backend": "umap-learn"}


def clustered(n: int, dim: int, classes: int, levels: int, seed: int = 0):
    """``n`` points: per point a class, a noise level and a 2-D latent position, mapped smoothly
    into ``dim`` dimensions (so neighbourhoods exist for a map to keep) plus a little noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(classes, dim))
    drift = rng.normal(size=dim)
    drift *= 6.0 / np.linalg.norm(drift)
    w_in, w_out = rng.normal(size=(2, 16)), rng.normal(size=(16, dim)) / 2.0
    cls = rng.integers(classes, size=n)
    lvl = rng.integers(levels, size=n)
    latent = rng.uniform(-1.0, 1.0, size=(n, 2))
    X = centres[cls] + np.outer(lvl / max(levels - 1, 1), drift) + np.tanh(latent @ w_in) @ w_out
    X += rng.normal(scale=0.05, size=X.shape)
    return X.astype(np.float32), cls, lvl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--levels", type=int, default=5)
    p.add_argument("--landmarks", type=int, default=N_LANDMARKS)
    p.add_argument("--threshold", type=int, default=LANDMARK_THRESHOLD)
    p.add_argument("--place", nargs="+", default=["transform", "knn"], help="placements to measure")
    p.add_argument("--skip-full-above", type=int, default=None, help="no full fit above this many points")
    args = p.parse_args()

    t0 = time.perf_counter()
    warmup(background=False, large=True)
    print(json.dumps({"warmup_s": round(time.perf_counter() - t0, 1)}), flush=True)
    for n in args.points:
        X, cls, lvl = clustered(n, args.dim, args.classes, args.levels)
        Z = (X - X.mean(axis=0)) / X.std(axis=0)  # the space neighbours are judged in
        row = {"n_points": n, "dim": args.dim, "strata": args.classes * args.levels}
        for place in args.place:
            t0 = time.perf_counter()
            fit = fit_map(X, strata=(cls, lvl), threshold=min(args.threshold, n - 1), n_landmarks=args.landmarks,
                          place=place, **PARAMS)
            row[f"landmark_{place}_s"] = round(time.perf_counter() - t0, 1)
            row[f"landmark_{place}_info"] = fit.info
            row[f"landmark_{place}_knn15"] = round(knn_preservation(Z, fit.embedding, k=15), 4)
        if args.skip_full_above is None or n <= args.skip_full_above:
            t0 = time.perf_counter()
            full = UMAPPipeline(**PARAMS).fit(X)
            row.update(full_s=round(time.perf_counter() - t0, 1), full_knn_method=full.knn_method_)
            row["full_knn15"] = round(knn_preservation(Z, full.embedding_, k=15), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
