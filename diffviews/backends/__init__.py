"""Where heavy work runs (generation, layer extraction, map fits, layer shapes).

- ``protocol``: the request/result dataclasses and the ``Backend`` interface
- ``local``: ``LocalBackend``, this process (the only module here that imports torch)
- ``wire``: pickle-free encoding of requests and results (safetensors + JSON metadata)
- ``remote``: ``RemoteBackend(transport)``, for every backend that runs elsewhere
- ``worker``: ``serve_request``, the one loop every worker runs
- ``process`` / ``modal_worker``: transports to a local worker process and a Modal GPU worker

``open_backend`` picks the backend of an app that is not given one: this process when
torch is installed, else browse-only (with the notice the app shows).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .protocol import (
    Backend,
    BackendUnavailable,
    ExtractionRequest,
    FitRequest,
    FitResult,
    GenerationRequest,
    GenerationResult,
    UnavailableBackend,
)

__all__ = ["Backend", "BackendUnavailable", "UnavailableBackend", "GenerationRequest", "GenerationResult",
           "ExtractionRequest", "FitRequest", "FitResult", "open_backend", "torch_installed"]


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def open_backend(data_dir: str | Path, device: str | None = None) -> tuple[Backend, str | None]:
    """(backend, notice): a ``LocalBackend`` over ``data_dir`` when torch is installed (notice
    None), else an ``UnavailableBackend`` and a notice saying that the app only browses."""
    if torch_installed():
        from .local import LocalBackend  # imports torch: only when a model may run here

        return LocalBackend(data_dir, device=device), None
    notice = ("torch is not installed and no GPU worker is configured: the app only browses the maps "
              "already built (no generation, no new layers)")
    return UnavailableBackend(notice), notice
