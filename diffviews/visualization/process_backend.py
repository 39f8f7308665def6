"""ProcessBackend: the GPU worker in a separate local process, reached over pipes.

The worker is a fresh Python interpreter running a ``LocalBackend``. Every request and
result crosses the process boundary in the pickle-free wire format of ``wire.py``, so this
backend proves that the dispatch dataclasses really are plain data, and it lets the UI and
the model live in different processes.

    with ProcessBackend("data", device="cpu") as backend:
        set_gpu_backend(backend)
        ...

A request that runs past ``timeout`` stops the worker (``WorkerTimeoutError``); a worker that
dies raises ``WorkerDiedError`` with the end of its stderr. Either way the next request
starts a fresh worker. An exception inside the worker is raised again in this process with
the same type where it is a common one (ValueError, KeyError, ...), else as ``WorkerError``;
the worker's traceback is in ``exc.remote_traceback``.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.layout import DataLayoutError
from .wire import WireError, decode, encode

if TYPE_CHECKING:
    from .gpu_ops import ExtractionRequest, FitRequest, FitResult, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

__all__ = ["ProcessBackend", "WorkerError", "WorkerDiedError", "WorkerTimeoutError", "serve"]

# exception types raised again under their own type in the parent; anything else is WorkerError
_REMOTE_TYPES = {cls.__name__: cls for cls in (ValueError, TypeError, KeyError, IndexError, FileNotFoundError,
                                                NotImplementedError, DataLayoutError, WireError)}
_OPS = ("generate", "extract_layer", "fit_umap", "layer_shapes")
_STDERR_LINES = 40
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class WorkerError(RuntimeError):
    """An exception of an uncommon type raised inside the worker."""


class WorkerDiedError(RuntimeError):
    """The worker process exited while starting or while serving a request."""


class WorkerTimeoutError(TimeoutError):
    """A request (or the worker's start) took longer than allowed; the worker was stopped."""


class ProcessBackend:
    """Runs a ``LocalBackend`` over ``data_dir`` in a worker process; one request at a time.

    A ``GPUBackend`` (registered as one on first use): gpu_ops re-exports this class, so this
    module imports gpu_ops lazily and can be imported first or second without a cycle.
    """

    name = "process"
    fits_remotely = True  # new maps are fitted in the worker (the visualizer saves them)

    def __init__(self, data_dir: str | Path, device: str = "cpu", timeout: float = 600.0,
                 start_timeout: float = 120.0, env: dict[str, str] | None = None):
        if timeout <= 0 or start_timeout <= 0:
            raise ValueError(f"timeout and start_timeout must be > 0 seconds, got {timeout} and {start_timeout}")
        self.data_dir = Path(data_dir)
        self.device = device
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.env = env
        _register_backend()
        self.starts = 0
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._closed = False
        with self._lock:
            self._ensure_worker()

    # ---- backend interface -------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self._call("generate", request)

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        return self._call("extract_layer", request)

    def fit_umap(self, request: FitRequest) -> FitResult:
        return self._call("fit_umap", request)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        return self._call("layer_shapes", model)

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The worker's process id (None when no worker runs)."""
        worker = self._worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def close(self) -> None:
        """Ask the worker to exit (killing it if it does not) and refuse further requests."""
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.stop(graceful=True)
                self._worker = None

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------
    def _ensure_worker(self) -> _Worker:
        if self._closed:
            raise RuntimeError("this ProcessBackend was closed")
        if self._worker is not None and self._worker.alive():
            return self._worker
        if self._worker is not None:  # died between requests: say so, then start a fresh one
            log.warning("%s", self._worker._death_message("idle"))
            self._worker.stop(graceful=False)
        self._worker = None
        worker = _Worker(self.data_dir, self.device, self.env)
        self.starts += 1
        try:
            reply = worker.receive(self.start_timeout, "start")
        except BaseException:
            worker.stop(graceful=False)
            raise
        if reply != {"ready": True}:
            worker.stop(graceful=False)
            raise WorkerError(f"worker sent {reply!r} instead of its ready message")
        self._worker = worker
        return worker

    def _call(self, op: str, payload):
        with self._lock:
            worker = self._ensure_worker()
            try:
                worker.send({"op": op, "payload": payload})
                reply = worker.receive(self.timeout, op)
            except (WorkerDiedError, WorkerTimeoutError, OSError):
                worker.stop(graceful=False)
                self._worker = None
                raise
        if "error" in reply:
            raise _rebuild_error(reply["error"], op)
        return reply["result"]


class _Worker:
    """One worker process: its pipes, a stderr drain thread, and a finaliser that kills it."""

    def __init__(self, data_dir: Path, device: str, env: dict[str, str] | None):
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        code = ("from diffviews.visualization.process_backend import serve; "
                f"serve({str(data_dir)!r}, {device!r}, {req_r}, {resp_w})")
        child_env = {**os.environ, **(env or {})}
        # the worker imports this very copy of the package, installed or not
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, child_env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE, env=child_env)
        except BaseException:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            raise
        os.close(req_r)
        os.close(resp_w)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(resp_r, writable=False)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        threading.Thread(target=_drain, args=(self.proc.stderr, self.stderr_tail), daemon=True,
                         name=f"diffviews-worker-{self.proc.pid}-stderr").start()
        self._finalizer = weakref.finalize(self, _kill, self.proc, self.requests, self.replies)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message) -> None:
        try:
            self.requests.send_bytes(encode(message))
        except (BrokenPipeError, ConnectionResetError):
            self.proc.wait(timeout=5)
            raise WorkerDiedError(self._death_message(message.get("op", "request"))) from None

    def receive(self, timeout: float, op: str):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                what = "start" if op == "start" else f"{op!r} request"
                raise WorkerTimeoutError(f"the worker process (pid {self.proc.pid}) did not finish its {what} "
                                         f"within {timeout:g} s; it was stopped and the next request starts "
                                         f"a fresh worker")
            if self.replies.poll(min(remaining, 0.5)):
                try:
                    return decode(self.replies.recv_bytes())
                except (EOFError, ConnectionResetError):
                    break
            elif not self.alive():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        raise WorkerDiedError(self._death_message(op))

    def _death_message(self, op: str) -> str:
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        tail = "\n".join(self.stderr_tail) or "(nothing on stderr)"
        during = {"start": "while starting", "idle": "between requests"}.get(op, f"during a {op!r} request")
        return (f"the worker process (pid {self.proc.pid}) {how} {during}; the next request starts a fresh "
                f"worker. Last lines of its stderr:\n{tail}")

    def stop(self, graceful: bool) -> None:
        if graceful and self.alive():
            try:
                self.requests.send_bytes(encode({"op": "shutdown", "payload": None}))
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._finalizer()


def _register_backend() -> None:
    from .gpu_ops import GPUBackend

    if not issubclass(ProcessBackend, GPUBackend):
        GPUBackend.register(ProcessBackend)


def _drain(stream, tail: collections.deque) -> None:
    """Copy the worker's stderr to ours, keeping the last lines for error messages."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        tail.append(line)
        print(f"[worker] {line}", file=sys.stderr)
    stream.close()


def _kill(proc: subprocess.Popen, *conns: Connection) -> None:
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for conn in conns:
        conn.close()


def _rebuild_error(error: dict, op: str) -> Exception:
    cls = _REMOTE_TYPES.get(error["type"], WorkerError)
    message = error["message"] if cls is not WorkerError else f"{error['type']}: {error['message']}"
    exc = cls(message)
    exc.remote_traceback = error["traceback"]
    return exc


# ---- the worker side ---------------------------------------------------------------------

def serve(data_dir: str, device: str, read_fd: int, write_fd: int) -> None:
    """The worker's loop: decode a request, run it on a LocalBackend, encode the reply."""
    requests = Connection(read_fd, writable=False)
    replies = Connection(write_fd, readable=False)
    from .gpu_ops import LocalBackend

    backend = LocalBackend(data_dir, device=device)
    replies.send_bytes(encode({"ready": True}))
    while True:
        try:
            message = decode(requests.recv_bytes())
        except EOFError:  # the parent went away
            return
        op = message.get("op")
        if op == "shutdown":
            return
        try:
            if op not in _OPS:
                raise ValueError(f"unknown worker operation {op!r}; known: {', '.join(_OPS)}")
            reply = {"result": getattr(backend, op)(message["payload"])}
            data = encode(reply)
        except Exception as exc:  # sent back and raised again in the parent
            text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
            data = encode({"error": {"type": type(exc).__name__, "message": text,
                                     "traceback": traceback.format_exc()}})
        replies.send_bytes(data)
