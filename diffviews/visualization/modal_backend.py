"""ModalBackend: heavy work on the Modal GPU worker (``modal_gpu.py``), reached by name.

    backend, notice = install_modal_backend("data")   # falls back to LocalBackend, with a notice

The worker's methods take and return plain data (``wire.to_plain``): dicts and lists of
numpy arrays, numbers and strings, so nothing but the package's own dataclass names
crosses. Importable and testable without ``modal``: ``ModalBackend`` only needs an object
whose methods have ``.remote`` (or ``.local``, which runs the worker class in this process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..hosting import MODAL_GPU_APP, MODAL_WORKER_CLASS
from .gpu_ops import (
    ExtractionRequest,
    FitRequest,
    FitResult,
    GenerationRequest,
    GenerationResult,
    GPUBackend,
    LocalBackend,
    set_gpu_backend,
)
from .wire import from_plain, to_plain

log = logging.getLogger(__name__)

__all__ = ["ModalBackend", "connect_worker", "install_modal_backend"]


class ModalBackend(GPUBackend):
    """Forwards each request to a GPU worker instance (``modal.Cls.from_name(...)()``)."""

    name = "modal"
    fits_remotely = True  # new maps are fitted on the GPU worker (cuML)

    def __init__(self, worker, call: str = "remote"):
        if call not in ("remote", "local"):
            raise ValueError(f"call must be 'remote' or 'local', got {call!r}")
        self.worker = worker
        self.call = call

    def _invoke(self, method: str, payload):
        return from_plain(getattr(getattr(self.worker, method), self.call)(to_plain(payload)))

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self._invoke("generate", request)

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        return self._invoke("extract_layer", request)

    def fit_umap(self, request: FitRequest) -> FitResult:
        return self._invoke("fit_umap", request)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        return self._invoke("layer_shapes", model)


def connect_worker(app_name: str = MODAL_GPU_APP, class_name: str = MODAL_WORKER_CLASS) -> ModalBackend:
    """A ModalBackend on the deployed worker class; raises when it cannot be found (not
    deployed, no Modal credentials, no network). Starts no GPU container."""
    import modal

    cls = modal.Cls.from_name(app_name, class_name)
    cls.hydrate()  # from_name is lazy: resolve the deployment now, so a failure shows up here
    return ModalBackend(cls())


def install_modal_backend(data_dir: str | Path, connect: Callable[[], GPUBackend] = connect_worker,
                          ) -> tuple[GPUBackend, str | None]:
    """Install the Modal GPU worker as the dispatch backend, or, when it cannot be reached,
    a LocalBackend on this container's CPU. Returns (backend, notice); the notice (None on
    success) says what failed and is meant to be shown in the UI."""
    try:
        backend = connect()
        notice = None
    except Exception as exc:  # noqa: BLE001 - any failure to reach the worker means "run locally"
        notice = (f"the GPU worker ({MODAL_GPU_APP}/{MODAL_WORKER_CLASS}) could not be reached "
                  f"({type(exc).__name__}: {exc}); generation, layer extraction and map fitting run on this "
                  f"container's CPU instead, which is slower")
        log.warning(notice)
        backend = LocalBackend(data_dir, device="cpu")
    set_gpu_backend(backend)
    return backend, notice
