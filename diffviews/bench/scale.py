"""Map payload and click latency at 10k, 100k and 1M synthetic points.

A synthetic model (10 classes, 4 noise levels, a clustered 2-D map, 8-dimensional
activations) is built in memory and served by the real visualizer and handlers: only the
loading from disk is skipped (the visualizer's model cache gets a loader that returns
it). For each size: the first figure (encoding every point), the figure's size in bytes
(what one click sends to the browser), and the click handler's p50 / p95.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np

from .timing import latency, rounded, seconds

LEVELS = [85.0, 70.0, 55.0, 40.0]
CLASSES = [str(k) for k in range(10)]
LAYER = "synthetic"
DIM = 8


def synthetic_model(name: str, n_points: int, data_dir: Path, seed: int = 0):
    """A ``ModelData`` with ``n_points`` points (rounded down to a multiple of 4 levels) and its layer."""
    from ..data.layout import model_paths
    from ..data.metadata import make_metadata
    from ..visualization.models import LayerData, ModelData

    rng = np.random.default_rng(seed)
    samples = max(1, n_points // len(LEVELS))
    labels = rng.integers(0, len(CLASSES), size=samples)
    metadata = make_metadata(np.arange(samples), labels, CLASSES, LEVELS, [80.0 * v / 100 for v in LEVELS],
                             ["images/synthetic.png"] * samples)
    point_labels = metadata.class_label
    centres = rng.normal(scale=8.0, size=(len(CLASSES), 2))
    embedding = (centres[point_labels] + rng.normal(size=(len(point_labels), 2))).astype(np.float32)
    activations = rng.normal(size=(len(point_labels), DIM)).astype(np.float32)
    images = rng.integers(0, 256, size=(len(CLASSES), 16, 16, 1), dtype=np.uint8)
    config = {"default_layer": LAYER, "default_steps": 10, "default_guidance": 2.0, "noise_max": 100.0,
              "noise_min": 0.0, "noise_levels": LEVELS, "class_names": CLASSES}
    md = ModelData(name=name, paths=model_paths(data_dir, name), config=config, metadata=metadata,
                   sample_images=images, sample_of_point=point_labels.astype(np.int64), class_names=list(CLASSES),
                   level_rank=np.searchsorted(np.asarray(sorted(LEVELS)), metadata.noise_level).astype(np.int64),
                   hookable_layers=[LAYER], layer_shapes={LAYER: (DIM,)})
    md.add_layer(LayerData(name, LAYER, activations, embedding, (DIM,)))
    return md


def _serve_synthetic(vis, data_dir: Path, sizes: list[int]) -> dict[str, int]:
    """Make ``vis`` serve one synthetic model per size (one resident at a time) → {name: size}."""
    from ..visualization.models import ModelCache

    names = {f"synthetic-{n}": n for n in sizes}
    vis.model_names = [*vis.model_names, *names]
    vis.cache = ModelCache(data_dir, max_resident=1, loader=lambda name: synthetic_model(name, names[name], data_dir))
    return names


def _one_size(vis, name: str, clicks: int) -> dict:
    from ..visualization import callbacks as cb

    build, md = seconds(lambda: vis.model(name))
    state = cb.Session(model=name, layer=LAYER)
    first, figure = seconds(lambda: cb.figure(vis, state))
    points = np.random.default_rng(1).integers(0, md.n_points, size=clicks)
    selected, out = cb.select_point(vis, state, int(points[0]))
    if selected.selected is None:
        raise RuntimeError(f"click on the {md.n_points}-point map failed: {out.get('status')}")
    payload = len(cb.figure(vis, selected).json)

    def hover(i):
        cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": int(points[i]), "m": "pts"}]}))

    return {"points": md.n_points, "first_figure_ms": rounded(1000 * first, 1), "payload_bytes": payload,
            "bytes_per_point": rounded(payload / md.n_points, 1), "base_figure_bytes": len(figure.json),
            "click": latency(lambda i: cb.select_point(vis, state, int(points[i])), clicks),
            "hover": latency(hover, clicks), "synthetic_build_s": rounded(build, 2)}


def measure(data_dir: Path, model: str, sizes: list[int], clicks: dict[int, int]) -> dict:
    from ..visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data_dir, device="cpu", default_model=model)
    result = {}
    for name, n in _serve_synthetic(vis, data_dir, sizes).items():
        result[str(n)] = _one_size(vis, name, clicks[n])
        gc.collect()
    return result


def replicate_model(src: Path, data_dir: Path, name: str, n_points: int, jitter: float = 0.05,
                    seed: int = 0, layers: list[str] | None = None) -> Path:
    """A model folder ``data_dir/name`` of at least ``n_points`` points made from the built model
    folder ``src`` by repeating its samples: every copy of a sample keeps its class, image and
    activations (real ones, so generation and its masks still work), gets a new sample id, and
    sits at its original map position plus ``jitter`` (Gaussian) noise. Every layer with
    activations and a 2-D map in ``src`` (or those of ``layers``) is copied this way; its projection pipeline projects
    by k-NN onto the repeated map (no UMAP fit). Returns the new folder."""
    from ..data.activations import list_layers, load_activations, read_sidecar, save_activations
    from ..data.layers import layer_source
    from ..data.layout import load_config, model_paths, write_config
    from ..data.maps import load_embedding, save_embedding
    from ..data.metadata import load_metadata, make_metadata, write_metadata
    from ..processing.umap import UMAPPipeline

    src_paths, dst = model_paths(src.parent, src.name), model_paths(data_dir, name)
    meta = load_metadata(src_paths)
    config = load_config(src_paths)
    levels = meta.noise_levels
    rows0 = meta.sample_rows  # first row of each sample (the first noise level)
    samples = len(rows0)
    copies = -(-int(n_points) // (samples * len(levels)))
    shutil.copytree(src_paths.images, dst.images)
    sigmas = [float(meta.sigma[meta.noise_level == v][0]) for v in levels]
    new = make_metadata(np.arange(samples * copies), np.tile(meta.class_label[rows0], copies),
                        config["class_names"], levels, sigmas, np.tile(meta.image[rows0], copies))
    write_config(dst, {**config, "num_samples": samples * copies})
    write_metadata(dst, new)
    # row of the source point behind every new point (noise-level-major on both sides)
    level, copy_sample = np.divmod(np.arange(len(new)), samples * copies)
    origin = level * samples + copy_sample % samples
    rng = np.random.default_rng(seed)
    source = layer_source(dst, load_config(dst), new)
    for layer in list_layers(src_paths) if layers is None else layers:
        if not src_paths.embedding(layer).is_file():
            continue
        acts = np.asarray(load_activations(src_paths, layer))[origin]
        save_activations(dst, layer, acts, source, shape=tuple(read_sidecar(src_paths, layer)["shape"]))
        embedding, emeta = load_embedding(src_paths, layer)
        moved = embedding[origin] + rng.normal(scale=jitter, size=(len(origin), 2)).astype(np.float32)
        pipe = UMAPPipeline.from_embedding(acts, moved, **{k: v for k, v in emeta.get("params", {}).items()
                                                           if k in UMAPPipeline._param_names()})
        save_embedding(dst, layer, pipe, extra_meta={"source": source, "map": {"method": "replicated",
                                                                               "copies": int(copies)}})
    return dst.root
