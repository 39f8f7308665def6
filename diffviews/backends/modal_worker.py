"""The Modal GPU worker (``modal_gpu.py``) as a backend: ``connect_modal_worker(app, cls)``.

The worker class has one method, ``serve(payload: bytes) -> bytes`` (``worker.serve_request``
over its ``LocalBackend``); this side is a ``RemoteBackend`` whose transport calls it.
Importable and testable without ``modal``: ``modal_backend(worker)`` needs only an object
whose ``serve`` has ``.remote`` (or ``.local``, which runs the worker class in this process).
"""

from __future__ import annotations

from .remote import RemoteBackend

__all__ = ["modal_backend", "connect_modal_worker"]


def modal_backend(worker, call: str = "remote") -> RemoteBackend:
    """A ``RemoteBackend`` on a worker instance (``modal.Cls.from_name(...)()``); new maps are
    fitted on the worker (cuML)."""
    if call not in ("remote", "local"):
        raise ValueError(f"call must be 'remote' or 'local', got {call!r}")
    return RemoteBackend(getattr(worker.serve, call), name="modal", fits_remotely=True)


def connect_modal_worker(app_name: str, class_name: str) -> RemoteBackend:
    """A backend on the deployed worker class; raises when it cannot be found (not deployed,
    no Modal credentials, no network). Starts no GPU container."""
    import modal

    cls = modal.Cls.from_name(app_name, class_name)
    cls.hydrate()  # from_name is lazy: resolve the deployment now, so a failure shows up here
    return modal_backend(cls())
