"""The contract between the app and wherever heavy work runs: requests, results, the interface.

Requests and results are plain dataclasses of numpy arrays, numbers, strings, lists and
dicts, so they cross a process boundary unchanged (``wire.py``). A new field needs a
default: a peer that does not know the field yet still decodes messages that leave it at
its default (see ``wire.encode``).

``Backend`` says what it can do explicitly (``fits_remotely``, ``runs_models``) instead
of callers probing attributes; ``unload`` and ``close`` are no-ops unless a backend holds
something to release.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..core.spec import NOISE_MODES, GenerationResult

__all__ = ["GenerationRequest", "GenerationResult", "ExtractionRequest", "FitRequest", "FitResult", "Backend",
           "BackendUnavailable", "UnavailableBackend", "NOISE_MODES", "REQUEST_TYPES"]


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
    mask_mode: str = "blend"  # "blend": masks are targets; "add": masks are directions (own + alpha·direction)
    noise_window: tuple[float, float] | None = None  # active inside [from %, to %]; None: the first mask_steps


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


#: every dataclass that crosses the wire
REQUEST_TYPES = (GenerationRequest, GenerationResult, ExtractionRequest, FitRequest, FitResult)


class BackendUnavailable(RuntimeError):
    """Nothing can run a model here (no torch, no reachable worker): the app browses only."""


class Backend(ABC):
    """Where heavy work runs: ``backends.local.LocalBackend`` (this process) or
    ``backends.remote.RemoteBackend`` (a worker process, Modal, ``@spaces.GPU``)."""

    name = "backend"
    #: the app asks ``fit_umap`` for new maps (a worker with cuML) instead of fitting in its own process
    fits_remotely = False
    #: False for a backend that cannot generate or extract (browse-only)
    runs_models = True

    @abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    @abstractmethod
    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def fit_umap(self, request: FitRequest) -> FitResult: ...

    @abstractmethod
    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]: ...

    def unload(self, model: str) -> None:
        """Free ``model``'s weights (the app calls this when it evicts the model); default: nothing held."""

    def close(self) -> None:
        """Release workers or connections; default: none held."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UnavailableBackend(Backend):
    """The backend of a browse-only app: every operation raises ``BackendUnavailable(reason)``."""

    name = "unavailable"
    runs_models = False

    def __init__(self, reason: str):
        self.reason = reason

    def _refuse(self, *_args):
        raise BackendUnavailable(self.reason)

    generate = extract_layer = fit_umap = layer_shapes = _refuse
