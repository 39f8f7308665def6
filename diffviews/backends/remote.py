"""RemoteBackend: every operation encoded, handed to a transport, the reply decoded.

A transport is any callable ``bytes -> bytes`` that gets an encoded request to a
``worker.serve_request`` somewhere and brings its reply back:

    RemoteBackend(process_transport)                          # a worker process (backends.process)
    RemoteBackend(lambda b: worker.serve.remote(b), "modal")  # a Modal GPU worker (backends.modal_worker)
    RemoteBackend(gpu_serve, "spaces")                        # an @spaces.GPU function (app.py)

An exception in the worker is raised again here under its own type where it is a common
one (ValueError, KeyError, DataLayoutError, ...), else as ``WorkerError``; the worker's
traceback is in ``exc.remote_traceback``. Layer shapes are asked once per model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ..data.layout import DataLayoutError
from .protocol import (
    Backend,
    BackendUnavailable,
    ExtractionRequest,
    FitRequest,
    FitResult,
    GenerationRequest,
    GenerationResult,
)
from .wire import WireError, decode, encode

__all__ = ["RemoteBackend", "Transport", "WorkerError"]

Transport = Callable[[bytes], bytes]

# exception types raised again under their own type on this side; anything else is WorkerError
_REMOTE_TYPES = {cls.__name__: cls for cls in (ValueError, TypeError, KeyError, IndexError, FileNotFoundError,
                                                NotImplementedError, DataLayoutError, WireError, BackendUnavailable)}


class WorkerError(RuntimeError):
    """An exception of an uncommon type raised inside the worker."""


class RemoteBackend(Backend):
    """A ``Backend`` whose work runs behind ``transport`` (see the module docstring)."""

    def __init__(self, transport: Transport, name: str = "remote", fits_remotely: bool = True,
                 close: Callable[[], None] | None = None):
        if not callable(transport):
            raise TypeError(f"transport must be a callable bytes -> bytes, got {type(transport).__name__}")
        self.transport = transport
        self.name = name
        self.fits_remotely = bool(fits_remotely)
        self._close = close  # e.g. stops the worker process behind the transport
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._shapes_lock = threading.Lock()

    def call(self, op: str, payload):
        """Run ``op`` on the worker with ``payload``; its result, or its exception raised here."""
        reply = decode(self.transport(encode({"op": op, "payload": payload})))
        if not isinstance(reply, dict) or not ({"result"} <= set(reply) or {"error"} <= set(reply)):
            raise WireError(f"the {self.name} worker sent {reply!r:.120} instead of a result or an error")
        if "error" in reply:
            raise _rebuild_error(reply["error"])
        return reply["result"]

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.call("generate", request)

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        return self.call("extract_layer", request)

    def fit_umap(self, request: FitRequest) -> FitResult:
        return self.call("fit_umap", request)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        with self._shapes_lock:
            cached = self._shapes.get(model)
        if cached is None:
            cached = {k: tuple(v) for k, v in self.call("layer_shapes", model).items()}
            with self._shapes_lock:
                self._shapes[model] = cached
        return dict(cached)

    def unload(self, model: str) -> None:
        with self._shapes_lock:
            self._shapes.pop(model, None)
        self.call("unload", model)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __repr__(self) -> str:
        return f"RemoteBackend({self.name!r}, fits_remotely={self.fits_remotely})"


def _rebuild_error(error) -> Exception:
    if not isinstance(error, dict) or not all(isinstance(error.get(k), str) for k in ("type", "message")):
        return WireError(f"the worker sent a malformed error {error!r:.120}")
    cls = _REMOTE_TYPES.get(error["type"], WorkerError)
    exc = cls(error["message"] if cls is not WorkerError else f"{error['type']}: {error['message']}")
    exc.remote_traceback = error.get("traceback", "")
    return exc
