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
    """Runs everything in this process; adapters loaded once per model, one lock per model."""

    name = "local"

    def __init__(self, data_dir: str | Path | None = None, device: str | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.device = device or default_device()
        self._adapters: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(model, threading.Lock())

    def adapter(self, model: str):
        """The loaded adapter for ``model`` (loaded once, kept until ``unload``)."""
        with self._lock(model):
            if model not in self._adapters:
                self._adapters[model] = load_adapter(model_paths(self.data_dir, model), device=self.device)
            return self._adapters[model]

    def unload(self, model: str) -> None:
        with self._lock(model):
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
