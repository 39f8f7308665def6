"""What the app holds in memory: ``ModelData`` (one model), ``LayerData`` (one model+layer),
and ``ModelCache`` (the resident models, within a byte budget).

Everything here is shared by all browser sessions and read-only once built: a session
keeps only names and indices in its own ``gr.State`` and asks the cache for the data, so
loading a model for one session never changes what another sees. A model evicted to
stay within the budget is loaded again, transparently, the next time a session asks.
Map data is what this budget counts (``ModelData.nbytes``: metadata, sample images,
coordinates, activations); model *weights* live in the backend, one model at a time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.activations import list_layers, load_activations, read_sidecar
from ..data.layout import DataLayoutError, ModelPaths, discover_models, load_config, model_paths
from ..data.maps import load_embedding, load_pipeline
from ..data.metadata import Metadata, load_metadata, read_image

log = logging.getLogger(__name__)

VIEWS = ("2-D", "3-D")
#: preview images are upscaled to at least this many pixels a side (bigger images are left as they are)
PREVIEW_PIXELS = 256
#: images up to this side are upscaled by whole factors with nearest neighbour (crisp pixels);
#: bigger ones are resampled smoothly (bicubic), so no image is shown as blocks of pixels
CRISP_MAX = 64
#: native noise unit in config.json → the symbol shown
NOISE_SYMBOLS = {"sigma": "σ", "t": "t"}


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 → (size, size·W/H, 3) uint8: nearest neighbour for a whole-factor
    enlargement of a small image, else Lanczos (shrinking) or bicubic (enlarging)."""
    from PIL import Image

    h, w = image.shape[:2]
    image = _rgb(np.asarray(image, dtype=np.uint8))
    if size == h:
        return image
    if size > h and size % h == 0 and h <= CRISP_MAX:
        f = size // h
        return np.repeat(np.repeat(image, f, axis=0), f, axis=1)
    new_w = max(1, round(w * size / h))
    resample = Image.Resampling.LANCZOS if size < h else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((new_w, size), resample))
#: upscaled preview images kept per model (the rest are rebuilt on demand, a few µs each)
PREVIEW_CACHE = 256
#: bytes of map data resident at once, all models together (DIFFVIEWS_MAP_BUDGET_MB overrides)
MAP_BUDGET_BYTES = 4 << 30
MAP_BUDGET_ENV = "DIFFVIEWS_MAP_BUDGET_MB"


def map_budget_bytes(env: dict | None = None) -> int:
    """The map-data budget from ``DIFFVIEWS_MAP_BUDGET_MB`` (default ``MAP_BUDGET_BYTES``)."""
    raw = (os.environ if env is None else env).get(MAP_BUDGET_ENV, "").strip()
    if not raw:
        return MAP_BUDGET_BYTES
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not mb > 0:
        raise ValueError(f"{MAP_BUDGET_ENV}={raw!r}: give the map-data budget in MB (a number > 0)")
    return int(mb * 2**20)


def upscale(image: np.ndarray, min_size: int = PREVIEW_PIXELS) -> np.ndarray:
    """(H, W, C) uint8 → RGB at least ``min_size`` pixels high: small images (≤ CRISP_MAX)
    by a whole nearest-neighbour factor, medium ones resampled smoothly, big ones unchanged."""
    h = max(image.shape[0], 1)
    if h >= min_size:
        return _rgb(image)
    if h <= CRISP_MAX:
        return resize_to(image, h * -(-min_size // h))
    return resize_to(image, min_size)


@dataclass(eq=False)
class LayerData:
    """One layer of one model: its activations and maps. Read-only after construction,
    except for caches filled once (under ``lock``): the fitted projection pipelines, the
    3-D map, activation norms for KNN and the encoded base figures."""

    model: str
    layer: str
    activations: np.ndarray  # (N, D) float32, memory-mapped
    embedding: np.ndarray  # (N, 2) float32, the 2-D map
    shape: tuple[int, ...]  # one sample's layer output (C, H, W)
    embedding_meta: dict = field(default_factory=dict)
    aligned_embedding: np.ndarray | None = None  # (N, 3) float32 once the 3-D map is loaded or fitted
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    figure_cache: dict = field(default_factory=dict, repr=False)
    _pipeline: object = field(default=None, repr=False)
    _aligned: object = field(default=None, repr=False)
    _sq_norms: np.ndarray | None = field(default=None, repr=False)
    _dense: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_points(self) -> int:
        return int(self.embedding.shape[0])

    def coords(self, view: str) -> np.ndarray:
        """The point positions of ``view``: (N, 2) for "2-D", (N, 3) for "3-D" (needs the aligned map)."""
        if view == "2-D":
            return self.embedding
        if self.aligned_embedding is None:
            raise RuntimeError(f"the 3-D map of layer {self.layer!r} is not loaded")
        return self.aligned_embedding

    def dense_activations(self) -> tuple[np.ndarray, np.ndarray]:
        """The activations in memory (float32) and their squared row norms (float64), computed once."""
        with self.lock:
            if self._dense is None:
                self._dense = np.ascontiguousarray(self.activations, dtype=np.float32)
                self._sq_norms = np.einsum("ij,ij->i", self._dense, self._dense, dtype=np.float64)
            return self._dense, self._sq_norms

    def pipeline(self, paths: ModelPaths):
        """The 2-D projection pipeline (pickle cache, or refitted deterministically), loaded once."""
        with self.lock:
            if self._pipeline is None:
                self._pipeline = load_pipeline(paths, self.layer, self.dense_activations()[0])
            return self._pipeline

    def set_aligned(self, aligned) -> None:
        with self.lock:
            self._aligned = aligned
            self.aligned_embedding = np.ascontiguousarray(aligned.embedding_, dtype=np.float32)

    @property
    def aligned(self):
        return self._aligned

    @property
    def nbytes(self) -> int:
        """Bytes this layer holds or maps: activations (memory-mapped pages count once touched),
        coordinates, norms."""
        arrays = [self.activations, self.embedding, self.aligned_embedding, self._sq_norms]
        if self._dense is not None and not isinstance(self._dense, np.memmap):
            arrays.append(self._dense)
        return int(sum(a.nbytes for a in arrays if a is not None))


@dataclass(eq=False)
class ModelData:
    """Everything loaded for one model: config, metadata, sample images, class names and
    the per-layer data (keyed by layer; built on demand by the visualizer)."""

    name: str
    paths: ModelPaths
    config: dict
    metadata: Metadata
    sample_images: np.ndarray  # (S, H, W, C) uint8, in sample-row order
    sample_of_point: np.ndarray  # (N,) int64: row into sample_images for each point
    class_names: list[str]
    level_rank: np.ndarray  # (N,) int: 0 = lowest noise level ... L-1 = highest
    layers: dict[str, LayerData] = field(default_factory=dict, repr=False)
    hookable_layers: list[str] = field(default_factory=list)
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    thumbnails: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def n_points(self) -> int:
        return len(self.metadata)

    @property
    def noise_levels(self) -> list[float]:
        return self.metadata.noise_levels

    @property
    def default_layer(self) -> str:
        return str(self.config["default_layer"])

    @property
    def noise_symbol(self) -> str:
        """The model's native noise unit as shown (σ, t), from config.json (default σ)."""
        name = str(self.config.get("native_noise_name", "sigma"))
        return NOISE_SYMBOLS.get(name, name)

    @classmethod
    def load(cls, data_dir: str | Path, name: str,
             layer_shapes: Callable[[str], dict] | None = None) -> ModelData:
        """Read ``data_dir/name``: config.json, metadata.csv and the sample images.

        ``layer_shapes(name)`` gives the adapter's hookable layers with their shapes (the
        app passes its backend's, through ``gpu_ops.layer_shapes``); without it, or when it fails, the layers are
        the ones with activations on disk."""
        paths = model_paths(data_dir, name)
        config = load_config(paths)
        metadata = load_metadata(paths)
        rows = metadata.sample_rows
        images = np.stack([read_image(paths.root / str(metadata.image[r])) for r in rows])
        row_of_sample = {int(s): k for k, s in enumerate(metadata.sample_id[rows])}
        sample_of_point = np.asarray([row_of_sample[int(s)] for s in metadata.sample_id], dtype=np.int64)
        names = config.get("class_names")
        n_classes = int(metadata.class_label.max()) + 1
        if not names:
            names = [str(metadata.class_name[np.flatnonzero(metadata.class_label == k)[0]])
                     if np.any(metadata.class_label == k) else str(k) for k in range(n_classes)]
        levels = sorted(set(metadata.noise_levels))
        level_rank = np.searchsorted(np.asarray(levels), metadata.noise_level).astype(np.int64)
        data = cls(name=name, paths=paths, config=config, metadata=metadata, sample_images=images,
                   sample_of_point=sample_of_point, class_names=[str(n) for n in names], level_rank=level_rank)
        data._find_layers(layer_shapes)
        return data

    def _find_layers(self, layer_shapes: Callable[[str], dict] | None) -> None:
        on_disk = list_layers(self.paths)
        shapes: dict[str, tuple[int, ...]] = {}
        if layer_shapes is not None:
            try:
                shapes = {k: tuple(int(s) for s in v) for k, v in layer_shapes(self.name).items()}
            except Exception as exc:  # noqa: BLE001 - the model may be unreachable; disk still works
                log.warning("[%s] could not ask the backend for layer shapes (%s); using layers on disk",
                            self.name, exc)
        for layer in on_disk:
            if layer not in shapes:
                try:
                    shapes[layer] = tuple(read_sidecar(self.paths, layer)["shape"])
                except DataLayoutError as exc:
                    log.warning("[%s] skipping layer %s: %s", self.name, layer, exc)
        self.layer_shapes = shapes
        self.hookable_layers = list(shapes)

    def sample_image(self, point: int) -> np.ndarray:
        return self.sample_images[self.sample_of_point[point]]

    def preview(self, point: int) -> np.ndarray:
        """The upscaled clean image of ``point``'s sample (cached per sample)."""
        row = int(self.sample_of_point[point])
        with self.lock:
            img = self.thumbnails.get(row)
            if img is not None:
                self.thumbnails.move_to_end(row)
                return img
        img = upscale(self.sample_images[row])
        with self.lock:
            self.thumbnails[row] = img
            while len(self.thumbnails) > PREVIEW_CACHE:
                self.thumbnails.popitem(last=False)
        return img

    @property
    def nbytes(self) -> int:
        """Bytes of map data held for this model: sample images, per-point arrays, previews
        at their bound, and every loaded layer."""
        with self.lock:
            layers = list(self.layers.values())
        preview = upscale(self.sample_images[0]).nbytes if len(self.sample_images) else 0
        per_point = self.sample_of_point.nbytes + self.level_rank.nbytes + self.metadata_nbytes()
        return int(self.sample_images.nbytes + per_point + PREVIEW_CACHE * preview + sum(ld.nbytes for ld in layers))

    def metadata_nbytes(self) -> int:
        return int(sum(np.asarray(v).nbytes for v in vars(self.metadata).values() if isinstance(v, np.ndarray)))

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def load_layer(self, layer: str) -> LayerData:
        """Read a layer whose activations and 2-D map are on disk (no fitting)."""
        acts = load_activations(self.paths, layer, expected_rows=self.n_points, mmap=True)
        embedding, meta = load_embedding(self.paths, layer)
        if embedding.shape != (self.n_points, 2):
            raise DataLayoutError(f"map {self.paths.embedding(layer)} has shape {embedding.shape}; "
                                  f"expected ({self.n_points}, 2)")
        shape = tuple(read_sidecar(self.paths, layer)["shape"])
        return LayerData(self.name, layer, acts, np.ascontiguousarray(embedding, dtype=np.float32), shape, meta)

    def cached_layer(self, layer: str) -> LayerData | None:
        with self.lock:
            return self.layers.get(layer)

    def add_layer(self, data: LayerData) -> LayerData:
        with self.lock:
            return self.layers.setdefault(data.layer, data)


class ModelCache:
    """The resident models, least recently used evicted beyond ``max_resident`` models or
    ``max_bytes`` of map data (``ModelData.nbytes``; the most recent model always stays).

    ``get(name)`` returns the loaded ``ModelData``, loading it (once, even when several
    sessions ask at the same time) when it is not resident. ``on_evict(name)`` is called
    after a model leaves the cache (the app uses it to unload the model's weights).
    ``enforce()`` re-checks the byte budget after a model grew (a layer was added)."""

    def __init__(self, data_dir: str | Path, max_resident: int = 1,
                 loader: Callable[[str], ModelData] | None = None,
                 on_evict: Callable[[str], None] | None = None, max_bytes: int | None = None):
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise ValueError(f"max_resident must be an integer >= 1, got {max_resident!r}")
        if max_bytes is not None and not max_bytes > 0:
            raise ValueError(f"max_bytes must be > 0 (or None for no byte budget), got {max_bytes!r}")
        self.data_dir = Path(data_dir)
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self._loader = loader or (lambda name: ModelData.load(self.data_dir, name))
        self._on_evict = on_evict
        self._models: OrderedDict[str, ModelData] = OrderedDict()
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads: dict[str, int] = {}  # how many times each model was loaded (for tests and logs)

    def available(self) -> list[str]:
        return discover_models(self.data_dir)

    def resident(self) -> list[str]:
        with self._guard:
            return list(self._models)

    def resident_models(self) -> list[ModelData]:
        """The loaded models, least recently used first (their order is left unchanged)."""
        with self._guard:
            return list(self._models.values())

    def get(self, name: str) -> ModelData:
        with self._guard:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:
            with self._guard:
                if name in self._models:
                    self._models.move_to_end(name)
                    return self._models[name]
            data = self._loader(name)
            with self._guard:
                self._models[name] = data
                self._models.move_to_end(name)
                self.loads[name] = self.loads.get(name, 0) + 1
            self.enforce()
            return data

    def nbytes(self) -> int:
        return sum(md.nbytes for md in self.resident_models())

    def enforce(self) -> list[str]:
        """Evict least recently used models beyond the count and byte budgets; returns their names."""
        evicted = []
        with self._guard:
            sizes = {name: md.nbytes for name, md in self._models.items()}
            while len(self._models) > 1 and (len(self._models) > self.max_resident or (
                    self.max_bytes is not None and sum(sizes[n] for n in self._models) > self.max_bytes)):
                old, _ = self._models.popitem(last=False)
                evicted.append(old)
        for old in evicted:
            log.info("model cache: evicted %s to stay within %d model(s) and %s of map data", old,
                     self.max_resident, "no limit" if self.max_bytes is None else f"{self.max_bytes / 2**20:.0f} MiB")
            if self._on_evict is not None:
                self._on_evict(old)
        return evicted
