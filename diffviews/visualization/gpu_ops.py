"""THE dispatch point for heavy work: generation, layer extraction, UMAP fits, layer shapes.

Callers use the module functions (``generate``, ``extract_layer``, ``fit_umap``,
``layer_shapes``); they forward to the installed backend. Requests and results are plain
dataclasses of numpy arrays, numbers and strings, so they cross a process boundary
unchanged (local process, ``@spaces.GPU`` function, Modal worker).

    set_gpu_backend(LocalBackend(data_dir))        # the default
    result = generate(GenerationRequest(model="digits", class_label=3, masks=masks))
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.generator import GenerationResult
from ..data.layout import default_data_dir, load_adapter, model_paths

__all__ = [
    "GenerationRequest", "GenerationResult", "ExtractionRequest", "FitRequest", "FitResult",
    "GPUBackend", "LocalBackend", "set_gpu_backend", "get_gpu_backend",
    "generate", "extract_layer", "fit_umap", "layer_shapes",
]


@dataclass
class GenerationRequest:
    model: str
    class_label: int | None = None
    num_steps: int = 20
    mask_steps: int = 0
    noise_max: float = 100.0
    noise_min: float = 0.0
    guidance_scale: float = 2.0
    noise_mode: str = "stochastic"
    seed: int = 0
    num_samples: int = 1
    alpha: float = 1.0
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (1, C, H, W) float32
    extract_layers: list[str] = field(default_factory=list)


@dataclass
class ExtractionRequest:
    model: str
    layers: list[str]
    images: np.ndarray  # (N, C, H, W) float32 in the model's input range
    labels: np.ndarray  # (N,) int64
    noise_levels: list[float]
    seed: int = 0
    batch_size: int = 256


@dataclass
class FitRequest:
    activations: np.ndarray  # (N, D) float32
    n_components: int = 2
    params: dict = field(default_factory=dict)  # UMAPPipeline constructor arguments


@dataclass
class FitResult:
    embedding: np.ndarray  # (N, n_components) float32
    backend: str
    seconds: float


class GPUBackend(ABC):
    """Where heavy work runs. Implementations: LocalBackend (this process), ProcessBackend
    (a worker process), the Spaces and Modal backends in the repository root."""

    name = "backend"

    @abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    @abstractmethod
    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def fit_umap(self, request: FitRequest) -> FitResult: ...

    @abstractmethod
    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]: ...

    def close(self) -> None:
        """Release workers or connections; the default holds none."""


class LocalBackend(GPUBackend):
    """Runs everything in this process, on CPU or CUDA; one lock per model."""

    name = "local"

    def __init__(self, data_dir: str | Path | None = None, device: str | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.device = device or _default_device()
        self._adapters: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())

    def adapter(self, model: str):
        """The loaded adapter for ``model`` (loaded once, kept)."""
        with self._lock(model):
            if model not in self._adapters:
                self._adapters[model] = load_adapter(model_paths(self.data_dir, model), device=self.device)
            return self._adapters[model]

    def unload(self, model: str) -> None:
        with self._lock(model):
            self._adapters.pop(model, None)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        from ..core.generator import generate as run_generate

        adapter = self.adapter(request.model)
        with self._lock(request.model):
            return run_generate(
                adapter, class_label=request.class_label, num_steps=request.num_steps,
                mask_steps=request.mask_steps, noise_max=request.noise_max, noise_min=request.noise_min,
                guidance_scale=request.guidance_scale, noise_mode=request.noise_mode, seed=request.seed,
                masks=request.masks or None, extract_layers=request.extract_layers,
                num_samples=request.num_samples, alpha=request.alpha)

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        from ..core.extraction import extract_activations

        adapter = self.adapter(request.model)
        with self._lock(request.model):
            return extract_activations(adapter, request.images, request.labels, request.noise_levels,
                                       request.layers, seed=request.seed, batch_size=request.batch_size)

    def fit_umap(self, request: FitRequest) -> FitResult:
        from ..processing.umap import UMAPPipeline

        t0 = time.perf_counter()
        pipe = UMAPPipeline(n_components=request.n_components, **request.params).fit(request.activations)
        return FitResult(pipe.embedding_, pipe.backend_, time.perf_counter() - t0)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        return self.adapter(model).get_layer_shapes()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_backend: GPUBackend | None = None
_backend_guard = threading.Lock()


def set_gpu_backend(backend: GPUBackend) -> GPUBackend:
    """Install ``backend`` for all dispatch calls; returns the previous one."""
    global _backend
    if not isinstance(backend, GPUBackend):
        raise TypeError(f"expected a GPUBackend, got {type(backend).__name__}")
    with _backend_guard:
        previous, _backend = _backend, backend
    return previous


@contextmanager
def preserved_backend():
    """Put back whatever backend was installed (or none) when the block exits: for code that
    builds visualizers of its own inside a process that already serves one (benchmarks)."""
    global _backend
    with _backend_guard:
        saved = _backend
    try:
        yield
    finally:
        with _backend_guard:
            _backend = saved


def get_gpu_backend() -> GPUBackend:
    """The installed backend; a LocalBackend over the default data dir if none was set."""
    global _backend
    with _backend_guard:
        if _backend is None:
            _backend = LocalBackend()
        return _backend


# The module-level functions below are what the app calls; the underscored ones are the
# single places tests patch (e.g. ``gpu_ops._extract_layer_on_gpu``).

def _generate_on_gpu(request: GenerationRequest) -> GenerationResult:
    return get_gpu_backend().generate(request)


def _extract_layer_on_gpu(request: ExtractionRequest) -> dict[str, np.ndarray]:
    return get_gpu_backend().extract_layer(request)


def generate(request: GenerationRequest) -> GenerationResult:
    return _generate_on_gpu(request)


def extract_layer(request: ExtractionRequest) -> dict[str, np.ndarray]:
    return _extract_layer_on_gpu(request)


def fit_umap(request: FitRequest) -> FitResult:
    return get_gpu_backend().fit_umap(request)


def layer_shapes(model: str) -> dict[str, tuple[int, ...]]:
    return get_gpu_backend().layer_shapes(model)

from .process_backend import ProcessBackend  # noqa: E402  (re-export; process_backend imports gpu_ops lazily)

__all__ += ["ProcessBackend"]
