"""LocalBackend: models run in this process, on CPU or CUDA. The one backend that imports torch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..core.extraction import extract_activations
from ..core.generator import generate as run_generate
from ..data.layout import default_data_dir, load_adapter, model_paths
from ..processing.umap import UMAPPipeline
from .protocol import Backend, ExtractionRequest, FitRequest, FitResult, GenerationRequest, GenerationResult

__all__ = ["LocalBackend", "default_device"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LocalBackend(Backend):
    """Runs everything in this process; adapters loaded on first use, one lock per model.

    At most ``max_resident`` models' weights stay loaded (least recently used dropped first):
    weights are the one single-resident thing (GPU memory), loaded for generation and extraction."""

    name = "local"

    def __init__(self, data_dir: str | Path | None = None, device: str | None = None, max_resident: int = 1):
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise ValueError(f"max_resident must be an integer >= 1, got {max_resident!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.device = device or default_device()
        self.max_resident = max_resident
        self._adapters: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())

    def adapter(self, model: str):
        """The loaded adapter for ``model`` (loaded when not resident; see ``max_resident``)."""
        with self._lock(model):
            adapter = self._adapters.get(model)
            if adapter is None:
                adapter = load_adapter(model_paths(self.data_dir, model), device=self.device)
        with self._guard:  # most recently used last; the oldest beyond max_resident are dropped
            self._adapters.pop(model, None)
            self._adapters[model] = adapter
            while len(self._adapters) > self.max_resident:
                self._adapters.pop(next(iter(self._adapters)))
        return adapter

    def unload(self, model: str) -> None:
        with self._guard:
            self._adapters.pop(model, None)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        adapter = self.adapter(request.model)
        with self._lock(request.model):
            return run_generate(
                adapter, class_label=request.class_label, num_steps=request.num_steps,
                mask_steps=request.mask_steps, noise_max=request.noise_max, noise_min=request.noise_min,
                guidance_scale=request.guidance_scale, noise_mode=request.noise_mode, seed=request.seed,
                masks=request.masks or None, extract_layers=request.extract_layers,
                num_samples=request.num_samples, alpha=request.alpha, mask_mode=request.mask_mode,
                noise_window=request.noise_window)

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        adapter = self.adapter(request.model)
        with self._lock(request.model):
            return extract_activations(adapter, request.images, request.labels, request.noise_levels,
                                       request.layers, seed=request.seed, batch_size=request.batch_size)

    def fit_umap(self, request: FitRequest) -> FitResult:
        t0 = time.perf_counter()
        pipe = UMAPPipeline(n_components=request.n_components, **request.params).fit(request.activations)
        return FitResult(pipe.embedding_, pipe.backend_, time.perf_counter() - t0)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        return self.adapter(model).get_layer_shapes()

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.data_dir)!r}, device={self.device!r})"
