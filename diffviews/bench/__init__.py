"""``diffviews bench``: measure what users wait for, against the baseline a user would pick.

    diffviews bench [--quick] [--json PATH] [--markdown PATH] [--data-dir DIR] [--model M]

One module per kind of measurement, each with a ``measure(...) -> dict``:

- ``map_fit``       one layer's map, our pipeline vs StandardScaler → PCA(50) → umap-learn,
                    cold (fresh process) and warm, with map quality;
- ``cuml_fit``      cuML vs umap-learn where a GPU is present (skipped otherwise);
- ``startup``       app process start → first served page; import costs;
- ``memory``        RSS over model switches A → B → A (fresh process);
- ``layer_switch``  cache miss (extract + fit) and cache hit, through the app's handler;
- ``callbacks``     hover, click, KNN, class filter: p50 / p95, figure bytes per point;
- ``generation``    10 steps masked with trajectory projection, and without masking;
- ``scale``         payload and click latency at 10k, 100k, 1M synthetic points.

``runner.run(BenchOptions(...))`` runs them on a scratch copy of the data and returns one
dict; ``report.markdown`` / ``report.write_json`` render it. ``--quick`` is a tiny run for
the smoke test: its timings mean nothing.
"""
