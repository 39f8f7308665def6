"""The app's models and layers: what is resident, and building a layer on first use.

``LayerAccess`` owns the model cache (``models.ModelCache``) and the backend it was given.
A layer that is not built (or not valid for the model's weights and samples, as
``data.layers.layer_state`` decides) is fetched from the bucket cache when one is
configured, else built through the backend: activations extracted by ``gpu_ops.extract_layer``,
the 2-D map fitted in this process or, when the backend ``fits_remotely``, by
``gpu_ops.fit_umap`` (such a map projects trajectories by k-NN interpolation).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..backends.protocol import Backend, ExtractionRequest, FitRequest
from ..data.layers import Fit, ensure_layer, layer_source, layer_state
from ..data.layout import DataLayoutError
from ..data.maps import QUALITY_KEY, fit_aligned_embedding, load_aligned, load_map_quality
from ..data.metadata import load_sample_images
from ..processing.umap import UMAPPipeline
from . import gpu_ops
from .models import VIEWS, LayerData, ModelCache, ModelData, map_budget_bytes

if TYPE_CHECKING:
    from ..data.r2_cache import LayerCache

log = logging.getLogger(__name__)

__all__ = ["LayerAccess", "LayerNotReady", "Progress"]

Progress = Callable[..., object]


def no_progress(*_args, **_kwargs) -> None:
    return None


class LayerNotReady(DataLayoutError):
    """A light request (hover, click, KNN, filter, frames) asked for a layer or view that is
    neither in memory nor valid on disk; it is never built on such a request."""


class LayerAccess:
    """Models and layers of one data directory, for every session of one app.

    At most ``max_resident_models`` models are kept in memory (least recently used evicted,
    their weights unloaded from ``backend``; reloaded on demand). ``layer_cache`` (a
    ``data.r2_cache.LayerCache`` over the same ``data_dir``) makes layer switches read
    through a bucket: a missing layer is fetched before it is built, a freshly built one is
    uploaded in the background, and the local disk budget is enforced (never evicting a
    layer held in memory)."""

    def __init__(self, data_dir: str | Path, backend: Backend, max_resident_models: int = 8,
                 default_model: str | None = None, layer_cache: LayerCache | None = None,
                 max_map_bytes: int | None = None):
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be a diffviews.backends.Backend, got {type(backend).__name__}")
        self.data_dir = Path(data_dir)
        self.backend = backend
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
        self._shapes: dict[str, dict] = {}  # model -> layer shapes, asked of the backend once
        self.cache = ModelCache(self.data_dir, max_resident=max_resident_models,
                                loader=lambda name: ModelData.load(self.data_dir, name, self._layer_shapes),
                                on_evict=backend.unload,
                                max_bytes=map_budget_bytes() if max_map_bytes is None else max_map_bytes)
        self._build_locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._shown: dict[str, tuple[str, str]] = {}  # live session id -> (model, layer) it shows

    def _layer_shapes(self, model: str) -> dict:
        """The backend's layer shapes of ``model``, asked once: reloading a model's map data
        after an eviction never touches the backend (nor loads weights)."""
        shapes = self._shapes.get(model)
        if shapes is None:
            shapes = self._shapes[model] = dict(gpu_ops.layer_shapes(self.backend, model))
        return shapes

    # -- live sessions -----------------------------------------------------------------------
    def note_shown(self, session: str, model: str, layer: str) -> None:
        """``session`` shows ``layer`` of ``model``: the disk budget never evicts it while it lives."""
        with self._guard:
            self._shown[session] = (model, layer)

    def forget_session(self, session: str) -> None:
        with self._guard:
            self._shown.pop(session, None)

    def shown_layers(self) -> list[tuple[str, str]]:
        with self._guard:
            return sorted(set(self._shown.values()))

    # -- models ------------------------------------------------------------------------------
    def model(self, name: str) -> ModelData:
        if name not in self.model_names:
            raise KeyError(f"unknown model {name!r}; available: {', '.join(self.model_names)}")
        return self.cache.get(name)

    def layers(self, model: str) -> list[str]:
        return list(self.model(model).hookable_layers)

    def layer_is_built(self, model: str, layer: str) -> bool:
        md = self.model(model)
        return md.cached_layer(layer) is not None or layer_state(md.paths, layer, self._source(md)).built

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

    # -- layers ------------------------------------------------------------------------------
    def layer(self, model: str, layer: str, progress: Progress | None = None, build: bool = True) -> LayerData:
        """The layer's data; a layer not built yet is built now (with progress) and kept on
        disk; a built one just loads. With ``build=False`` (light requests) a layer that is
        not valid on disk raises ``LayerNotReady`` instead of being built."""
        md = self.model(model)
        if layer not in md.hookable_layers:
            raise KeyError(f"unknown layer {layer!r} for model {model!r}; layers: {', '.join(md.hookable_layers)}")
        data = md.cached_layer(layer)
        if data is not None:
            return data
        if not build:
            if not layer_state(md.paths, layer, self._source(md)).built:
                raise LayerNotReady(f"layer {layer} of {model} is not ready on this server right now; choose it "
                                    f"again in the layer menu to rebuild it")
            data = md.add_layer(md.load_layer(layer))
            self.cache.enforce()
            return data
        with self._lock_for(model, layer):
            data = md.cached_layer(layer)
            if data is None:
                self._ensure_on_disk(md, layer, no_progress if progress is None else progress)
                data = md.load_layer(layer)
                if QUALITY_KEY not in data.embedding_meta:  # a map saved before its JSON held it: once
                    data.embedding_meta[QUALITY_KEY] = load_map_quality(md.paths, layer, data.activations)
                data = md.add_layer(data)
        self.cache.enforce()
        return data

    def ensure_view(self, model: str, layer: str, view: str, progress: Progress | None = None,
                    build: bool = True) -> LayerData:
        """The layer with the coordinates of ``view`` ready: the 3-D (aligned) map is loaded,
        or fitted once and saved (suffix ``_aligned``); with ``build=False`` nothing is
        extracted or fitted (``LayerNotReady`` instead)."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
        data = self.layer(model, layer, progress, build=build)
        if view == "2-D" or data.aligned is not None:
            return data
        md = self.model(model)
        with self._lock_for(model, layer, "3-D"):
            if data.aligned is None:
                acts = data.dense_activations()[0]
                try:
                    aligned = load_aligned(md.paths, layer, acts)
                except DataLayoutError:
                    if not build:
                        raise LayerNotReady(f"the 3-D map of layer {layer} is not ready; choose the 3-D view "
                                            f"again to fit it") from None
                    if progress is not None:  # not `progress or ...`: a gr.Progress() is falsy
                        progress(0.3, desc=f"Fitting the aligned 3-D map of {layer}")
                    aligned = fit_aligned_embedding(md.paths, layer, acts, md.metadata.noise_level,
                                                    md.metadata.sample_id)
                data.set_aligned(aligned)
        return data

    # -- building ----------------------------------------------------------------------------
    def _source(self, md: ModelData) -> dict:
        return layer_source(md.paths, md.config, md.metadata)

    def _lock_for(self, *key) -> threading.Lock:
        with self._guard:
            return self._build_locks.setdefault(key, threading.Lock())

    def _ensure_on_disk(self, md: ModelData, layer: str, progress: Progress) -> None:
        """Activations and 2-D map of ``layer`` valid on disk: already, fetched from the bucket
        (``layer_cache``), or built now through the backend (then uploaded in the background)."""
        source, cache = self._source(md), self.layer_cache
        built = layer_state(md.paths, layer, source).built
        if not built and cache is not None and cache.enabled:
            progress(0.02, desc=f"Looking for layer {layer} in the layer cache")
            built = cache.fetch_layer(md.name, layer, protect=self._layers_in_memory())
        if not built:
            ensure_layer(md.paths, layer, source, functools.partial(self._extract, md, source),
                         md.layer_shapes[layer], fit=self._remote_fit(md, layer), progress=progress)
        if cache is not None:
            if built:  # nothing new: just note the use for least-recently-used eviction
                cache.touch(md.name, layer)
            else:
                if cache.enabled:
                    cache.upload_layer(md.name, layer)  # in the background
                cache.enforce_budget(protect=[(md.name, layer), *self._layers_in_memory()])
        progress(1.0, desc=f"Layer {layer} ready")

    def _extract(self, md: ModelData, source: dict, layer: str) -> np.ndarray:
        images, labels = load_sample_images(md.paths, md.metadata)
        request = ExtractionRequest(model=md.name, layers=[layer], images=images, labels=labels,
                                    noise_levels=source["noise_levels"], seed=source["seed"],
                                    batch_size=source["batch_size"])
        result = gpu_ops.extract_layer(self.backend, request)
        if not isinstance(result, dict) or layer not in result:
            raise RuntimeError(f"the {self.backend.name} backend returned no activations for layer {layer!r}")
        return result[layer]

    def _remote_fit(self, md: ModelData, layer: str) -> Fit | None:
        """The map fit through ``gpu_ops.fit_umap`` when the backend fits remotely; None: fit here."""
        if not self.backend.fits_remotely:
            return None
        backend = self.backend

        def fit(acts: np.ndarray):
            result = gpu_ops.fit_umap(backend, FitRequest(acts, n_components=2))
            embedding = np.asarray(result.embedding, dtype=np.float32)
            if embedding.shape != (len(acts), 2):
                raise RuntimeError(f"the {backend.name} worker returned a map of shape {embedding.shape} for layer "
                                   f"{layer!r}; expected ({len(acts)}, 2)")
            pipe = UMAPPipeline.from_embedding(acts, embedding, backend_used=result.backend,
                                               fit_seconds=result.seconds, n_components=2)
            return pipe, {"fitted_on": backend.name}

        return fit

    def _layers_in_memory(self) -> list[tuple[str, str]]:
        """(model, layer) of every layer a resident model holds or a live session shows (their
        files must stay on disk: the projection pipeline and the 3-D map are read from there on
        first use, and an evicted model's map data is reloaded from there)."""
        out = self.shown_layers()
        for md in self.cache.resident_models():
            with md.lock:
                out += [(md.name, layer) for layer in md.layers]
        return out
