"""GradioVisualizer: data access, figures, neighbours, generation and exports for the app.

The visualizer knows nothing about browser sessions: callers pass names and indices
(model, layer, view, point indices, generation ids) and get numpy arrays, strings and
figures back. Shared state lives here and is read-only once built: the model cache
(``models.ModelCache``), the per-(model, layer) data inside it, and a bounded store of
generation results keyed by unguessable ids (a session only ever names its own).

Figures are Plotly JSON written directly: the points of a map are float32 / int32 typed
arrays (base64, as plotly.js decodes them) and carry only their index (``customdata``);
class names live once per trace (legend). The encoded base traces are cached per
(model, layer, view, class filter), so a click only adds the small overlay traces.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import gpu_ops
from .models import VIEWS, LayerData, ModelCache, ModelData, upscale

if TYPE_CHECKING:
    from ..data.r2_cache import LayerCache

log = logging.getLogger(__name__)

__all__ = ["GradioVisualizer", "GenerationRecord", "GenerationStore", "Overlays", "PlotFigure",
           "set_app_visualizer", "get_app_visualizer", "CLASS_COLORS"]

CLASS_COLORS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22",
                "#17BECF", "#D62728", "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD")
RING_SELECTED, RING_MANUAL, RING_KNN, RING_FRAME = "#FF0000", "#00D5FF", "#7CFC00", "#FF00FF"
TRAJ_ACTIVE, TRAJ_OTHER = "#FF4500", "#505050"
#: marker opacity (2-D) and size (3-D) from the lowest to the highest noise level
OPACITY_RANGE, SIZE_RANGE_3D = (0.95, 0.3), (5.0, 2.0)
DIM_OPACITY = 0.07
PLOT_HEIGHT = 620

Progress = Callable[..., object]


class PlotFigure:
    """A Plotly figure as a JSON string, handed to ``gr.Plot`` as is (no re-encoding)."""

    def __init__(self, json_text: str):
        self.json = json_text

    def to_json(self) -> str:  # what gr.Plot calls for Plotly-style figures
        return self.json

    def to_plotly_json(self) -> dict:
        return json.loads(self.json)


def _no_progress(*_args, **_kwargs) -> None:
    return None


def fits_remotely(backend: gpu_ops.GPUBackend) -> bool:
    """Whether ``backend`` fits maps somewhere else (a worker with cuML): its ``fits_remotely``
    attribute, else True for anything but the in-process ``LocalBackend``."""
    return bool(getattr(backend, "fits_remotely", not isinstance(backend, gpu_ops.LocalBackend)))


def _typed(arr: np.ndarray, dtype: str) -> dict:
    """A plotly.js typed-array spec (little-endian base64)."""
    a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": np.dtype(dtype).str.lstrip("<|"), "bdata": base64.b64encode(a.tobytes()).decode("ascii")}


def class_color(label: int) -> str:
    return CLASS_COLORS[label % len(CLASS_COLORS)]


# ---- generations ---------------------------------------------------------------------------

@dataclass(eq=False)
class GenerationRecord:
    """One generation run and everything the UI shows of it; ``coords`` per view are computed
    lazily (the 3-D projection only when the 3-D view is opened)."""

    id: str
    model: str
    layer: str
    class_label: int
    class_name: str
    neighbours: list[int]
    result: gpu_ops.GenerationResult
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # view -> (S, B, 2|3) float32
    created: float = field(default_factory=time.time)
    _composites: dict = field(default_factory=dict, repr=False)

    @property
    def num_steps(self) -> int:
        return int(self.result.denoised.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.result.images.shape[0])

    @property
    def label(self) -> str:
        p = self.result.params
        return (f"{self.id[:6]} · class {self.class_name} · {p.get('num_steps')} steps · "
                f"{len(self.neighbours)} nbrs · seed {p.get('seed')}")

    def step_image(self, step: int, sample: int = 0) -> np.ndarray:
        """The denoised estimate at ``step`` with the noised input inset (bottom right), upscaled."""
        key = (step, sample)
        img = self._composites.get(key)
        if img is None:
            img = self._composites[key] = inset(self.result.denoised[step, sample], self.result.noised[step, sample])
        return img

    def frame_image(self, step: int) -> np.ndarray:
        return tile([self.step_image(step, b) for b in range(self.num_samples)])

    def final_image(self) -> np.ndarray:
        return tile([upscale(im) for im in self.result.images])


class GenerationStore:
    """Generation records by id, least recently used dropped beyond ``max_items``."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[str, GenerationRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: GenerationRecord) -> None:
        with self._lock:
            self._items[record.id] = record
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, gen_id: str) -> GenerationRecord | None:
        with self._lock:
            rec = self._items.get(gen_id)
            if rec is not None:
                self._items.move_to_end(gen_id)
            return rec

    def discard(self, ids: Sequence[str]) -> None:
        with self._lock:
            for gen_id in ids:
                self._items.pop(gen_id, None)

    def __len__(self) -> int:
        return len(self._items)


def inset(main: np.ndarray, small: np.ndarray, size: int = 192) -> np.ndarray:
    """``main`` upscaled to about ``size`` px with ``small`` (a third of the side) in the bottom-right corner."""
    big = upscale(main, size).copy()
    little = upscale(small, max(1, big.shape[0] // 3))
    h, w = little.shape[:2]
    big[-h - 2:, -w - 2:] = 255  # white frame
    big[-h - 1:-1, -w - 1:-1] = little[: h, : w]
    return big


def tile(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images of equal height side by side on a white background."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


# ---- figures -------------------------------------------------------------------------------

@dataclass
class Overlays:
    """What one session draws over the map."""

    selected: int | None = None
    manual: Sequence[int] = ()
    knn: Sequence[int] = ()
    trajectories: Sequence[GenerationRecord] = ()
    active: str | None = None  # id of the highlighted trajectory
    frame: int | None = None  # step marked on the active trajectory


def _base_traces(md: ModelData, ld: LayerData, view: str, class_filter: int | None) -> list[str]:
    """The encoded point traces, one per class, cached per (view, class filter)."""
    key = (view, class_filter)
    cached = ld.figure_cache.get(key)
    if cached is not None:
        return cached
    coords = ld.coords(view)
    labels = md.metadata.class_label
    n_levels = max(int(md.level_rank.max()) + 1, 1)
    t = md.level_rank / max(n_levels - 1, 1)  # 0 = lowest noise, 1 = highest
    traces = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        dim = class_filter is not None and int(k) != class_filter
        trace = {"name": md.class_name(int(k)), "legendgroup": f"c{int(k)}", "meta": "pts", "mode": "markers",
                 "x": _typed(coords[rows, 0], "f4"), "y": _typed(coords[rows, 1], "f4"),
                 "customdata": _typed(rows, "i4"),
                 "hovertemplate": "class %{fullData.name} · #%{customdata}<extra></extra>"}
        if view == "2-D":
            opacity = OPACITY_RANGE[0] + (OPACITY_RANGE[1] - OPACITY_RANGE[0]) * t[rows]
            if dim:
                opacity = np.full(len(rows), DIM_OPACITY)
            trace.update(type="scattergl", marker={"color": class_color(int(k)), "size": 6,
                                                   "opacity": _typed(opacity, "f4"), "line": {"width": 0}})
        else:
            size = SIZE_RANGE_3D[0] + (SIZE_RANGE_3D[1] - SIZE_RANGE_3D[0]) * t[rows]
            trace.update(type="scatter3d", z=_typed(coords[rows, 2], "f4"),
                         marker={"color": class_color(int(k)), "size": _typed(size, "f4"),
                                 "opacity": DIM_OPACITY if dim else 0.85, "line": {"width": 0}})
        traces.append(json.dumps(trace, separators=(",", ":")))
    with ld.lock:
        ld.figure_cache[key] = traces
    return traces


def _layout(md: ModelData, ld: LayerData, view: str) -> dict:
    title = f"{md.name} · {ld.layer} · {ld.n_points} points ({len(md.noise_levels)} noise levels)"
    layout = {"uirevision": f"{md.name}/{ld.layer}/{view}", "height": PLOT_HEIGHT, "hovermode": "closest",
              "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
              "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
              "legend": {"title": {"text": "class"}, "itemsizing": "constant"}, "plot_bgcolor": "#FFFFFF",
              "paper_bgcolor": "#FFFFFF"}
    if view == "2-D":
        axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "title": {"text": ""}}
        layout.update(dragmode="zoom", xaxis=dict(axis), yaxis=dict(axis))
    else:
        axis = {"showticklabels": False, "title": {"text": ""}, "backgroundcolor": "#FFFFFF"}
        layout["scene"] = {"xaxis": dict(axis), "yaxis": dict(axis),
                           "zaxis": {"title": {"text": "noise level %"}, "tickvals": md.noise_levels},
                           "dragmode": "orbit", "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.9}}
    return layout


def _ring(coords: np.ndarray, rows: Sequence[int], color: str, size: int, name: str, view: str) -> dict | None:
    rows = [int(r) for r in rows]
    if not rows:
        return None
    trace = {"type": "scatter" if view == "2-D" else "scatter3d", "mode": "markers", "name": name,
             "meta": "ring", "showlegend": False, "hoverinfo": "skip",
             "x": coords[rows, 0].round(5).tolist(), "y": coords[rows, 1].round(5).tolist(), "customdata": rows,
             "marker": {"symbol": "circle-open", "size": size if view == "2-D" else max(size // 2, 4),
                        "color": color, "line": {"width": 2.5, "color": color}}}
    if view != "2-D":
        trace["z"] = coords[rows, 2].round(5).tolist()
    return trace


def _trajectory_traces(rec: GenerationRecord, coords: np.ndarray, active: bool, frame: int | None,
                       view: str) -> list[dict]:
    """Line + start/end markers (and the current frame) for every sample of one generation."""
    out = []
    scatter = "scatter" if view == "2-D" else "scatter3d"
    color = TRAJ_ACTIVE if active else TRAJ_OTHER
    steps = list(range(coords.shape[0]))
    for b in range(coords.shape[1]):
        xyz = coords[:, b]
        meta = f"traj:{rec.id}:{b}"

        def pts(idx, xyz=xyz):
            d = {"x": xyz[idx, 0].round(5).tolist(), "y": xyz[idx, 1].round(5).tolist()}
            if view != "2-D":
                d["z"] = xyz[idx, 2].round(5).tolist()
            return d

        hover = "generation " + rec.id[:6] + " · step %{customdata}<extra></extra>"
        line = {"type": scatter, "mode": "lines+markers", "name": f"trajectory {rec.id[:6]}", "meta": meta,
                "showlegend": False, "customdata": steps, "hovertemplate": hover,
                "line": {"color": color, "width": 3 if active else 1.5},
                "marker": {"size": 5 if view == "2-D" else 3, "color": color}, **pts(steps)}
        start = {"type": scatter, "mode": "markers", "name": "start", "meta": meta, "showlegend": False,
                 "customdata": [0], "hovertemplate": hover,
                 "marker": {"symbol": "diamond", "size": 13 if view == "2-D" else 7, "color": "#00A000",
                            "line": {"width": 1, "color": "#000000"}}, **pts([0])}
        end = {"type": scatter, "mode": "markers", "name": "end", "meta": meta, "showlegend": False,
               "customdata": [steps[-1]], "hovertemplate": hover,
               "marker": {"symbol": "x" if view != "2-D" else "star", "size": 15 if view == "2-D" else 7,
                          "color": "#FFD700" if view == "2-D" else "#000000", "line": {"width": 1, "color": "#000000"}},
               **pts([steps[-1]])}
        out += [line, start, end]
        if active and frame is not None and 0 <= frame < len(steps):
            out.append({"type": scatter, "mode": "markers", "name": "frame", "meta": meta, "showlegend": False,
                        "customdata": [frame], "hovertemplate": hover,
                        "marker": {"symbol": "circle-open", "size": 20 if view == "2-D" else 9, "color": RING_FRAME,
                                   "line": {"width": 3, "color": RING_FRAME}}, **pts([frame])})
    return out


# ---- the visualizer ------------------------------------------------------------------------

_app_visualizer: GradioVisualizer | None = None


def set_app_visualizer(visualizer: GradioVisualizer | None) -> GradioVisualizer | None:
    """Record the visualizer of the running app (``_app_visualizer``)."""
    global _app_visualizer
    _app_visualizer = visualizer
    return visualizer


def get_app_visualizer() -> GradioVisualizer | None:
    return _app_visualizer


class GradioVisualizer:
    """Data access, plotting and layer operations for every session of one app.

    ``data_dir`` holds one folder per model (see ``diffviews.data.layout``). Heavy work
    goes through ``gpu_ops``; unless ``backend`` is given, a ``LocalBackend`` over
    ``data_dir`` on ``device`` is installed. At most ``max_resident_models`` models are
    kept in memory (least recently used evicted; reloaded on demand).

    ``layer_cache`` (a ``diffviews.data.r2_cache.LayerCache`` over the same ``data_dir``)
    makes layer switches read through a bucket: a layer missing on disk is fetched before it
    is extracted, a freshly built one is uploaded in the background, and the local disk
    budget is enforced (never evicting a layer held in memory)."""

    def __init__(self, data_dir: str | Path, device: str | None = None, max_resident_models: int = 1,
                 default_model: str | None = None, backend: gpu_ops.GPUBackend | None = None,
                 max_generations: int = 256, layer_cache: LayerCache | None = None):
        self.data_dir = Path(data_dir)
        if layer_cache is not None and Path(layer_cache.data_dir).resolve() != self.data_dir.resolve():
            raise ValueError(f"the layer cache serves data directory {layer_cache.data_dir}, not {self.data_dir}")
        self.layer_cache = layer_cache
        if layer_cache is not None:
            log.info("layer switches read through %r", layer_cache)
        self.model_names = ModelCache(self.data_dir).available()
        if not self.model_names:
            raise FileNotFoundError(f"no models found in data directory {self.data_dir} (each model is a folder "
                                    f"with a config.json); build the demo data with "
                                    f"`diffviews build-demo --data-dir {self.data_dir}`")
        if default_model is not None and default_model not in self.model_names:
            raise ValueError(f"unknown model {default_model!r}; models in {self.data_dir}: "
                             f"{', '.join(self.model_names)}")
        self.default_model = default_model or self.model_names[0]
        self.backend = backend or gpu_ops.LocalBackend(self.data_dir, device=device)
        gpu_ops.set_gpu_backend(self.backend)
        self.cache = ModelCache(self.data_dir, max_resident=max_resident_models,
                                loader=lambda name: ModelData.load(self.data_dir, name, gpu_ops.layer_shapes),
                                on_evict=self._unload_weights)
        self.generations = GenerationStore(max_generations)
        self._build_locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._export_dir: Path | None = None

    # -- models and layers ---------------------------------------------------------------------
    def _unload_weights(self, model: str) -> None:
        unload = getattr(gpu_ops.get_gpu_backend(), "unload", None)
        if callable(unload):
            unload(model)

    def model(self, name: str) -> ModelData:
        if name not in self.model_names:
            raise KeyError(f"unknown model {name!r}; available: {', '.join(self.model_names)}")
        return self.cache.get(name)

    def layers(self, model: str) -> list[str]:
        return list(self.model(model).hookable_layers)

    def layer_is_built(self, model: str, layer: str) -> bool:
        from ..data.activations import activations_valid
        from ..processing.umap import embedding_is_valid

        md = self.model(model)
        return md.cached_layer(layer) is not None or (
            activations_valid(md.paths, layer, expected_rows=md.n_points)
            and embedding_is_valid(md.paths, layer, md.n_points))

    def initial_layer(self, model: str) -> str:
        """The model's default layer when it is built (or can be), else the first built one."""
        md = self.model(model)
        if md.default_layer in md.hookable_layers:
            return md.default_layer
        built = [name for name in md.hookable_layers if self.layer_is_built(model, name)]
        if not built and not md.hookable_layers:
            raise FileNotFoundError(f"model {model!r} has no layers: no activations in {md.paths.activations_dir} "
                                    f"and its adapter could not be asked")
        return (built or md.hookable_layers)[0]

    def _lock_for(self, *key) -> threading.Lock:
        with self._guard:
            return self._build_locks.setdefault(key, threading.Lock())

    def layer(self, model: str, layer: str, progress: Progress | None = None) -> LayerData:
        """The layer's data; a layer never mapped before is extracted (through gpu_ops) and
        mapped now, with progress, and cached on disk; a cached one just loads."""
        md = self.model(model)
        if layer not in md.hookable_layers:
            raise KeyError(f"unknown layer {layer!r} for model {model!r}; layers: {', '.join(md.hookable_layers)}")
        data = md.cached_layer(layer)
        if data is not None:
            return data
        with self._lock_for(model, layer):
            data = md.cached_layer(layer)
            if data is None:
                self._ensure_layer_on_disk(md, layer, _no_progress if progress is None else progress)
                data = md.add_layer(md.load_layer(layer))
        return data

    def _ensure_layer_on_disk(self, md: ModelData, layer: str, progress: Progress) -> None:
        """Activations and 2-D map of ``layer`` on disk: already there, fetched from the bucket
        (``layer_cache``), or extracted and fitted now (then uploaded in the background)."""
        from ..data.activations import activations_valid
        from ..processing.umap import embedding_is_valid

        name, n, cache = md.name, md.n_points, self.layer_cache
        have_acts = activations_valid(md.paths, layer, expected_rows=n)
        have_map = have_acts and embedding_is_valid(md.paths, layer, n)
        if not have_map and cache is not None and cache.enabled:
            progress(0.02, desc=f"Looking for layer {layer} in the layer cache")
            if cache.fetch_layer(name, layer, protect=self._layers_in_memory()):
                have_acts = activations_valid(md.paths, layer, expected_rows=n)
                have_map = have_acts and embedding_is_valid(md.paths, layer, n)
        if not have_acts:
            self._extract_layer(md, layer, progress)
        if not have_map:
            self._fit_map(md, layer, progress)
        if cache is not None:
            if have_map:  # nothing new: just note the use for least-recently-used eviction
                cache.touch(name, layer)
            else:
                if cache.enabled:
                    cache.upload_layer(name, layer)  # in the background
                cache.enforce_budget(protect=[(name, layer), *self._layers_in_memory()])
        progress(1.0, desc=f"Layer {layer} ready")

    def _layers_in_memory(self) -> list[tuple[str, str]]:
        """(model, layer) of every layer a resident model holds (their files must stay on disk:
        the projection pipeline and the 3-D map are read from there on first use)."""
        out = []
        for md in self.cache.resident_models():
            with md.lock:
                out += [(md.name, layer) for layer in md.layers]
        return out

    def _extract_layer(self, md: ModelData, layer: str, progress: Progress) -> None:
        from ..data.activations import save_activations
        from ..data.build import layer_meta
        from ..data.metadata import load_sample_images

        n = md.n_points
        meta = layer_meta(md.paths, md.config, md.metadata)
        progress(0.05, desc=f"Extracting layer {layer} for {n} points")
        t0 = time.perf_counter()
        images, labels = load_sample_images(md.paths, md.metadata)
        request = gpu_ops.ExtractionRequest(model=md.name, layers=[layer], images=images, labels=labels,
                                            noise_levels=meta["noise_levels"], seed=meta["seed"],
                                            batch_size=meta["batch_size"])
        result = gpu_ops.extract_layer(request)
        acts = np.asarray(result.get(layer) if isinstance(result, dict) else None)
        shape = md.layer_shapes.get(layer)
        want_d = int(np.prod(shape)) if shape else None
        if acts.ndim != 2 or acts.shape[0] != n or (want_d is not None and acts.shape[1] != want_d):
            raise RuntimeError(f"extraction of layer {layer!r} returned shape {getattr(acts, 'shape', None)}; "
                               f"expected ({n}, {want_d})")
        save_activations(md.paths, layer, acts, meta, shape=shape)
        log.info("[%s] extracted layer %s %s in %.1fs", md.name, layer, acts.shape, time.perf_counter() - t0)

    def _fit_map(self, md: ModelData, layer: str, progress: Progress) -> None:
        """Fit and save the 2-D map: in this process with umap-learn (which then also projects
        trajectories), or, when the backend fits remotely (a GPU worker with cuML), through
        ``gpu_ops.fit_umap``; such a map projects trajectories by k-NN interpolation."""
        from ..data.activations import load_activations
        from ..data.build import layer_meta
        from ..processing.umap import UMAPPipeline, fit_layer_embedding, save_embedding

        n = md.n_points
        source = layer_meta(md.paths, md.config, md.metadata)
        acts = np.asarray(load_activations(md.paths, layer, expected_rows=n, mmap=False))
        backend = gpu_ops.get_gpu_backend()
        t0 = time.perf_counter()
        if not fits_remotely(backend):
            progress(0.5, desc=f"Fitting the 2-D map of {layer} (UMAP)")
            fit_layer_embedding(md.paths, layer, acts, n_components=2, extra_meta={"source": source})
            where = "this process"
        else:
            progress(0.5, desc=f"Fitting the 2-D map of {layer} (UMAP on the {backend.name} worker)")
            fit = gpu_ops.fit_umap(gpu_ops.FitRequest(acts, n_components=2))
            embedding = np.asarray(fit.embedding, dtype=np.float32)
            if embedding.shape != (n, 2):
                raise RuntimeError(f"the {backend.name} worker returned a map of shape {embedding.shape} for layer "
                                   f"{layer!r}; expected ({n}, 2)")
            pipe = UMAPPipeline.from_embedding(acts, embedding, backend_used=fit.backend, fit_seconds=fit.seconds,
                                               n_components=2)
            save_embedding(md.paths, layer, pipe, extra_meta={"source": source, "fitted_on": backend.name})
            where = f"the {backend.name} worker ({fit.backend})"
        log.info("[%s] fitted the map of %s in %s in %.1fs", md.name, layer, where, time.perf_counter() - t0)

    def ensure_view(self, model: str, layer: str, view: str, progress: Progress | None = None) -> LayerData:
        """The layer with the coordinates of ``view`` ready: the 3-D (aligned) map is loaded,
        or fitted once and saved (suffix ``_aligned``)."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
        data = self.layer(model, layer, progress)
        if view == "2-D" or data.aligned is not None:
            return data
        from ..data.layout import DataLayoutError
        from ..processing.aligned_umap import fit_aligned_embedding, load_aligned

        md = self.model(model)
        with self._lock_for(model, layer, "3-D"):
            if data.aligned is None:
                acts = data.dense_activations()[0]
                try:
                    aligned = load_aligned(md.paths, layer, acts)
                except DataLayoutError:
                    if progress is not None:  # not `progress or ...`: a gr.Progress() is falsy
                        progress(0.3, desc=f"Fitting the aligned 3-D map of {layer}")
                    aligned = fit_aligned_embedding(md.paths, layer, acts, md.metadata.noise_level,
                                                    md.metadata.sample_id)
                data.set_aligned(aligned)
        return data

    # -- figures -----------------------------------------------------------------------------
    def figure(self, model: str, layer: str, view: str = "2-D", class_filter: int | None = None,
               overlays: Overlays | None = None) -> PlotFigure:
        md = self.model(model)
        ld = self.layer(model, layer)
        if view == "3-D" and ld.aligned is None:
            ld = self.ensure_view(model, layer, view)
        ov = overlays or Overlays()
        coords = ld.coords(view)
        extra = []
        for rows, color, size, name in ((ov.knn, RING_KNN, 13, "knn"), (ov.manual, RING_MANUAL, 15, "neighbours"),
                                        ([] if ov.selected is None else [ov.selected], RING_SELECTED, 19,
                                         "selected")):
            ring = _ring(coords, rows, color, size, name, view)
            if ring is not None:
                extra.append(ring)
        for rec in ov.trajectories:
            active = rec.id == ov.active
            extra += _trajectory_traces(rec, self.trajectory_coords(rec, view), active,
                                        ov.frame if active else None, view)
        data = _base_traces(md, ld, view, class_filter) + [json.dumps(t, separators=(",", ":")) for t in extra]
        config = {"displaylogo": False, "scrollZoom": True, "responsive": True}
        text = ('{"data":[' + ",".join(data) + '],"layout":' + json.dumps(_layout(md, ld, view))
                + ',"config":' + json.dumps(config) + "}")
        return PlotFigure(text)

    # -- hover, selection, neighbours ---------------------------------------------------------
    def point_info(self, model: str, layer: str, view: str, index: int) -> str:
        md = self.model(model)
        m = md.metadata
        ld = self.layer(model, layer)
        xyz = ld.coords(view)[index] if view == "2-D" or ld.aligned is not None else ld.embedding[index]
        noise_name = md.config.get("native_noise_name", "σ")
        coords = ", ".join(f"{v:.3f}" for v in xyz)
        name = md.class_name(int(m.class_label[index]))
        return (f"**#{index}** · sample {int(m.sample_id[index])} · class **{name}**"
                f"  \nnoise {float(m.noise_level[index]):.1f} % · {noise_name} = {float(m.sigma[index]):.4g}"
                f" · ({coords})")

    def point_preview(self, model: str, index: int) -> np.ndarray:
        return self.model(model).preview(index)

    def trajectory_preview(self, rec: GenerationRecord, sample: int, step: int) -> tuple[np.ndarray, str]:
        r = rec.result
        info = (f"**generation {rec.id[:6]}** · sample {sample} · step **{step + 1}/{rec.num_steps}** · "
                f"class {rec.class_name}  \nnoise {float(r.noise_levels[step]):.1f} % · σ = {float(r.sigmas[step]):.4g}"
                f" (denoised estimate; inset: noised input)")
        return rec.step_image(step, sample), info

    def neighbours(self, model: str, layer: str, view: str, index: int, k: int,
                   space: str = "map") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest points to ``index`` (itself excluded): indices and Euclidean
        distances, nearest first, on the map of ``view`` or in the layer's activation space."""
        ld = self.layer(model, layer)
        n = ld.n_points
        if not 1 <= k <= n - 1:
            raise ValueError(f"k must be within [1, {n - 1}] for {n} points, got {k}")
        if space == "map":
            X = ld.coords(view) if view == "2-D" or ld.aligned is not None else ld.embedding
            diff = X.astype(np.float64) - X[index].astype(np.float64)
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        elif space == "activations":
            A, sq = ld.dense_activations()
            d2 = sq - 2.0 * (A @ A[index]).astype(np.float64) + sq[index]
            d = np.sqrt(np.maximum(d2, 0.0))
        else:
            raise ValueError(f"unknown distance space {space!r}; choose 'map' or 'activations'")
        d[index] = np.inf
        idx = np.argpartition(d, k - 1)[:k]
        idx = idx[np.argsort(d[idx], kind="stable")]
        return idx.astype(np.int64), d[idx].astype(np.float32)

    def gallery(self, model: str, rows: Sequence[int], captions: Sequence[str]) -> list[tuple[np.ndarray, str]]:
        md = self.model(model)
        return [(md.preview(int(r)), c) for r, c in zip(rows, captions)]

    # -- generation ---------------------------------------------------------------------------
    def generate(self, model: str, layer: str, class_label: int, neighbours: Sequence[int], *, num_steps: int,
                 mask_steps: int, alpha: float, guidance_scale: float, noise_max: float, noise_min: float,
                 noise_mode: str, seed: int, num_samples: int, progress: Progress | None = None) -> GenerationRecord:
        """Generate with ``layer`` held at the neighbours' mean activation for the first
        ``mask_steps`` steps; the trajectory at ``layer`` is projected onto the 2-D map with
        one batched transform."""
        from ..core.masking import compute_mask_dict

        progress = _no_progress if progress is None else progress  # gr.Progress() is falsy (len 0)
        md = self.model(model)
        ld = self.layer(model, layer)
        masks = {}
        if neighbours and mask_steps > 0:
            masks = compute_mask_dict({layer: ld.dense_activations()[0]}, list(neighbours), {layer: ld.shape})
        progress(0.1, desc=f"Generating {num_samples} sample(s), {num_steps} steps")
        request = gpu_ops.GenerationRequest(
            model=model, class_label=int(class_label), num_steps=int(num_steps), mask_steps=int(mask_steps),
            noise_max=float(noise_max), noise_min=float(noise_min), guidance_scale=float(guidance_scale),
            noise_mode=noise_mode, seed=int(seed), num_samples=int(num_samples), alpha=float(alpha), masks=masks,
            extract_layers=[layer])
        result = gpu_ops.generate(request)
        rec = GenerationRecord(uuid.uuid4().hex, model, layer, int(class_label), md.class_name(int(class_label)),
                               [int(i) for i in neighbours], result)
        progress(0.8, desc="Projecting the trajectory onto the map")
        self.trajectory_coords(rec, "2-D")
        self.generations.add(rec)
        return rec

    def trajectory_coords(self, rec: GenerationRecord, view: str) -> np.ndarray:
        """(S, B, 2) positions on the 2-D map (one batched transform) or (S, B, 3) in the 3-D view."""
        if view in rec.coords:
            return rec.coords[view]
        traj = rec.result.trajectory[rec.layer]  # (S, B, D)
        s, b, d = traj.shape
        ld = self.layer(rec.model, rec.layer)
        if view == "2-D":
            flat = ld.pipeline(self.model(rec.model).paths).transform(traj.reshape(s * b, d))
            coords = flat.reshape(s, b, -1).astype(np.float32)
        else:
            ld = self.ensure_view(rec.model, rec.layer, "3-D")
            levels = rec.result.noise_levels
            coords = np.stack([ld.aligned.transform(traj[i], level=float(levels[i])) for i in range(s)])
            coords = coords.astype(np.float32)
        rec.coords[view] = coords
        return coords

    # -- exports ------------------------------------------------------------------------------
    def export_dir(self) -> Path:
        with self._guard:
            if self._export_dir is None:
                self._export_dir = Path(tempfile.mkdtemp(prefix="diffviews-export-"))
            return self._export_dir

    def _zip_path(self, stem: str) -> Path:
        return self.export_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.zip"

    def export_selection(self, model: str, layer: str, selected: int | None, manual: Sequence[int],
                         knn: Sequence[int], knn_dist: Sequence[float]) -> Path:
        """A zip of the selection and its neighbours: selection.json, points.csv and each point's image."""
        md = self.model(model)
        ld = self.layer(model, layer)
        m = md.metadata
        roles = ([] if selected is None else [(selected, "selected", None)]) + [(i, "neighbour", None) for i in manual]
        roles += [(i, "knn", float(d)) for i, d in zip(knn, knn_dist)]
        if not roles:
            raise ValueError("nothing to export: select a point or neighbours first")
        path = self._zip_path(f"selection-{model}-{layer}")
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["point", "role", "sample_id", "class_label", "class_name", "noise_level", "sigma", "x", "y",
                    "knn_distance", "image"])
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for i, role, dist in roles:
                label = int(m.class_label[i])
                w.writerow([i, role, int(m.sample_id[i]), label, md.class_name(label), float(m.noise_level[i]),
                            float(m.sigma[i]), float(ld.embedding[i, 0]), float(ld.embedding[i, 1]),
                            "" if dist is None else dist, f"images/point_{i:06d}.png"])
                z.writestr(f"images/point_{i:06d}.png", _png(md.sample_image(i)))
            z.writestr("points.csv", table.getvalue())
            z.writestr("selection.json", json.dumps({
                "model": model, "layer": layer, "selected": selected, "neighbours": [int(i) for i in manual],
                "knn": [int(i) for i in knn], "knn_distances": [float(d) for d in knn_dist],
                "noise_levels": md.noise_levels, "class_names": md.class_names}, indent=2))
        return path

    def export_generation(self, rec: GenerationRecord) -> Path:
        """A zip of one generation: final images, every step (denoised and noised), params.json
        and trajectory.csv (map coordinates per step and sample)."""
        r = rec.result
        path = self._zip_path(f"generation-{rec.model}-{rec.layer}-{rec.id[:6]}")
        coords = self.trajectory_coords(rec, "2-D")
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["step", "sample", "sigma", "noise_level", "x", "y"])
        for s in range(rec.num_steps):
            for b in range(rec.num_samples):
                w.writerow([s, b, float(r.sigmas[s]), float(r.noise_levels[s]), float(coords[s, b, 0]),
                            float(coords[s, b, 1])])
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for b in range(rec.num_samples):
                z.writestr(f"final_{b}.png", _png(r.images[b]))
                for s in range(rec.num_steps):
                    z.writestr(f"steps/sample_{b}/step_{s:03d}_denoised.png", _png(r.denoised[s, b]))
                    z.writestr(f"steps/sample_{b}/step_{s:03d}_noised.png", _png(r.noised[s, b]))
            z.writestr("trajectory.csv", table.getvalue())
            z.writestr("params.json", json.dumps({
                "id": rec.id, "model": rec.model, "layer": rec.layer, "class_label": rec.class_label,
                "class_name": rec.class_name, "neighbours": rec.neighbours, "params": r.params,
                "sigmas": [float(v) for v in r.sigmas], "noise_levels": [float(v) for v in r.noise_levels]},
                indent=2, default=str))
        return path


def _png(image: np.ndarray) -> bytes:
    arr = np.asarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()
