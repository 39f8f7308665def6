"""One map fit in this (fresh) process, as a user meets it: ``UMAPPipeline.fit`` or ``fit_map`` on
``measure_landmarks.clustered`` data (64-D, 10 classes × 5 levels), with umap-learn's on-disk
kernel cache as left by earlier runs but nothing compiled in this process. Prints one JSON line:
fit seconds, the map's 15-NN preservation (judged in the standardised 64-D activation space,
1500 sampled points) and how the map was made.

    OMP_NUM_THREADS=2 python scripts/time_full_fit.py --points 100000 [--landmarks]

Runs with whichever ``diffviews`` is first on PYTHONPATH, so the same command times two checkouts.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from measure_landmarks import PARAMS, clustered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=100000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--landmarks", action="store_true", help="fit_map with its defaults (landmarks above its threshold)")
    p.add_argument("--n-landmarks", type=int, default=None, help="with --landmarks: fit_map(n_landmarks=...)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    X, cls, lvl = clustered(args.points, args.dim, 10, 5)
    t0 = time.perf_counter()
    from diffviews.processing.quality import knn_preservation
    from diffviews.processing.umap import UMAPPipeline

    if args.landmarks:
        from diffviews.processing.landmarks import fit_map

        fit = fit_map(X, strata=(cls, lvl), **({} if args.n_landmarks is None else {"n_landmarks": args.n_landmarks}),
                      **PARAMS)
        embedding, info = fit.embedding, fit.info
    else:
        pipe = UMAPPipeline(**PARAMS).fit(X)
        embedding, info = pipe.embedding_, {"knn": pipe.knn_method_}
    seconds = time.perf_counter() - t0
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    print(json.dumps({"n_points": args.points, "fit_s": round(seconds, 1),
                      "knn15": round(knn_preservation(Z, embedding, k=15), 4), "info": info}), flush=True)


if __name__ == "__main__":
    main()
