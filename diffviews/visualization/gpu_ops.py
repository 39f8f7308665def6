"""THE dispatch point for heavy work: generation, layer extraction, map fits, layer shapes.

Every function takes the backend to run on first; a visualizer passes its own, so two
apps in one process never share one by accident. Requests and results are the plain
dataclasses of ``diffviews.backends.protocol``:

    result = generate(backend, GenerationRequest(model="digits", class_label=3, masks=masks))

``_generate_on_gpu`` and ``_extract_layer_on_gpu`` are the single places tests patch.
"""

from __future__ import annotations

import numpy as np

from ..backends.protocol import (
    Backend,
    ExtractionRequest,
    FitRequest,
    FitResult,
    GenerationRequest,
    GenerationResult,
)

__all__ = ["Backend", "GenerationRequest", "GenerationResult", "ExtractionRequest", "FitRequest", "FitResult",
           "generate", "extract_layer", "fit_umap", "layer_shapes"]


def _generate_on_gpu(backend: Backend, request: GenerationRequest) -> GenerationResult:
    return backend.generate(request)


def _extract_layer_on_gpu(backend: Backend, request: ExtractionRequest) -> dict[str, np.ndarray]:
    return backend.extract_layer(request)


def generate(backend: Backend, request: GenerationRequest) -> GenerationResult:
    return _generate_on_gpu(backend, request)


def extract_layer(backend: Backend, request: ExtractionRequest) -> dict[str, np.ndarray]:
    return _extract_layer_on_gpu(backend, request)


def fit_umap(backend: Backend, request: FitRequest) -> FitResult:
    return backend.fit_umap(request)


def layer_shapes(backend: Backend, model: str) -> dict[str, tuple[int, ...]]:
    return backend.layer_shapes(model)
