"""The one worker loop every remote backend shares: bytes in, bytes out, never raises.

    reply = serve_request(backend, payload)      # a Modal method, an @spaces.GPU function ...
    serve_connection(backend, requests, replies) # ... or a worker process reading a pipe

A request is ``encode({"op": OP, "payload": ...})``; the reply is ``encode({"result": ...})``
or ``encode({"error": {"type", "message", "traceback"}})``. A malformed message, an unknown
operation or an exception in the backend is sent back as an error: a bad message never
ends the worker.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from .protocol import Backend
from .wire import WireError, decode, encode

__all__ = ["OPS", "SHUTDOWN", "serve_request", "serve_connection", "error_reply"]

#: the operations a worker runs, by name (the methods of ``Backend``)
OPS = ("generate", "extract_layer", "fit_umap", "layer_shapes", "unload")
#: a message that ends ``serve_connection`` (not a valid wire message, so never a request)
SHUTDOWN = b"shutdown"


def error_reply(exc: BaseException) -> bytes:
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return encode({"error": {"type": type(exc).__name__, "message": text, "traceback": traceback.format_exc()}})


def _run(backend: Backend, payload: bytes):
    message = decode(payload)
    if not isinstance(message, dict) or set(message) != {"op", "payload"}:
        raise WireError(f"a request is {{'op', 'payload'}}, got {message!r:.120}")
    op = message["op"]
    if op not in OPS:
        raise ValueError(f"unknown worker operation {op!r}; known: {', '.join(OPS)}")
    return getattr(backend, op)(message["payload"])


def serve_request(backend: Backend, payload: bytes,
                  retry_if: Callable[[Exception], bool] | None = None) -> bytes:
    """Run one encoded request on ``backend`` and return the encoded reply (result or error).

    ``retry_if(exc)`` may prepare a second attempt (e.g. reload a data volume another
    container wrote to) and return True to run the request once more."""
    try:
        try:
            result = _run(backend, payload)
        except Exception as exc:
            if retry_if is None or isinstance(exc, WireError) or not retry_if(exc):
                raise
            result = _run(backend, payload)
        return encode({"result": result})
    except Exception as exc:  # sent back and raised again on the caller's side
        return error_reply(exc)


def serve_connection(backend: Backend, requests, replies) -> None:
    """Answer requests from ``requests`` (a ``multiprocessing.connection.Connection``) on
    ``replies`` until the peer goes away or sends ``SHUTDOWN``."""
    replies.send_bytes(encode({"ready": True}))
    while True:
        try:
            payload = requests.recv_bytes()
        except (EOFError, OSError):  # the parent went away
            return
        if payload == SHUTDOWN:
            return
        replies.send_bytes(serve_request(backend, payload))
