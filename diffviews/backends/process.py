"""A worker process on this machine, reached over pipes: ``process_backend(data_dir)``.

The worker is a fresh Python interpreter running ``worker.serve_connection`` over a
``LocalBackend``; every request and reply crosses the pipes in the wire format, so the UI
process never needs torch and the dispatch dataclasses are proven to be plain data.

    with process_backend("data", device="cpu") as backend:      # a RemoteBackend
        backend.generate(GenerationRequest(model="digits"))

One request runs at a time. A caller waits at most ``busy_timeout`` for the one before it
(``WorkerBusyError``); a request that runs past ``timeout`` stops the worker
(``WorkerTimeoutError``); a worker that dies raises ``WorkerDiedError`` with the end of its
stderr. After either, the next request starts a fresh worker.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

from .remote import RemoteBackend, WorkerError
from .wire import WireError, decode, read_metadata
from .worker import SHUTDOWN, serve_connection

log = logging.getLogger(__name__)

__all__ = ["ProcessTransport", "process_backend", "serve_process", "WorkerBusyError", "WorkerDiedError",
           "WorkerTimeoutError"]

_STDERR_LINES = 40
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class WorkerDiedError(RuntimeError):
    """The worker process exited while starting or while serving a request."""


class WorkerTimeoutError(TimeoutError):
    """A request (or the worker's start) took longer than allowed; the worker was stopped."""


class WorkerBusyError(TimeoutError):
    """Another request held the worker longer than this caller was willing to wait."""


def process_backend(data_dir: str | Path, device: str = "cpu", timeout: float = 600.0,
                    start_timeout: float = 120.0, busy_timeout: float | None = None,
                    env: dict[str, str] | None = None) -> RemoteBackend:
    """A ``RemoteBackend`` on a worker process over ``data_dir`` (started now); see the module docstring."""
    transport = ProcessTransport(data_dir, device, timeout=timeout, start_timeout=start_timeout,
                                 busy_timeout=busy_timeout, env=env)
    return RemoteBackend(transport, name="process", fits_remotely=True, close=transport.close)


class ProcessTransport:
    """``bytes -> bytes`` through a worker process, one request at a time (see the module docstring).
    ``busy_timeout`` defaults to ``timeout``: nobody waits longer than one whole request."""

    def __init__(self, data_dir: str | Path, device: str = "cpu", timeout: float = 600.0,
                 start_timeout: float = 120.0, busy_timeout: float | None = None,
                 env: dict[str, str] | None = None):
        busy_timeout = timeout if busy_timeout is None else busy_timeout
        if min(timeout, start_timeout, busy_timeout) <= 0:
            raise ValueError(f"timeout, start_timeout and busy_timeout must be > 0 seconds, got {timeout}, "
                             f"{start_timeout} and {busy_timeout}")
        self.data_dir = Path(data_dir)
        self.device = device
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.busy_timeout = float(busy_timeout)
        self.env = env
        self.starts = 0
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._closed = False
        with self._lock:
            self._ensure_worker()

    @property
    def pid(self) -> int | None:
        """The worker's process id (None when no worker runs)."""
        worker = self._worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def __call__(self, payload: bytes) -> bytes:
        op = _op_name(payload)
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise WorkerBusyError(f"the worker process was busy with another request for {self.busy_timeout:g} s; "
                                  f"the {op!r} request was not sent")
        try:
            worker = self._ensure_worker()
            try:
                worker.send(payload, op)
                return worker.receive(self.timeout, op)
            except (WorkerDiedError, WorkerTimeoutError, OSError):
                worker.stop(graceful=False)
                self._worker = None
                raise
        finally:
            self._lock.release()

    def close(self) -> None:
        """Ask the worker to exit (killing it if it does not) and refuse further requests."""
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.stop(graceful=True)
                self._worker = None

    def _ensure_worker(self) -> _Worker:
        if self._closed:
            raise RuntimeError("this worker process was closed")
        if self._worker is not None and self._worker.alive():
            return self._worker
        if self._worker is not None:  # died between requests: say so, then start a fresh one
            log.warning("%s", self._worker.death_message("idle"))
            self._worker.stop(graceful=False)
        self._worker = None
        worker = _Worker(self.data_dir, self.device, self.env)
        self.starts += 1
        try:
            reply = decode(worker.receive(self.start_timeout, "start"))
        except BaseException:
            worker.stop(graceful=False)
            raise
        if reply != {"ready": True}:
            worker.stop(graceful=False)
            raise WorkerError(f"worker sent {reply!r} instead of its ready message")
        self._worker = worker
        return worker


def _op_name(payload: bytes) -> str:
    """The operation a request names (for messages), read from its header only."""
    try:
        return str(json.loads(read_metadata(payload)["__metadata__"]["diffviews"]).get("op", "request"))
    except (WireError, KeyError, TypeError, ValueError, AttributeError):
        return "request"


class _Worker:
    """One worker process: its pipes, a stderr drain thread, and a finaliser that kills it."""

    def __init__(self, data_dir: Path, device: str, env: dict[str, str] | None):
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        code = ("from diffviews.backends.process import serve_process; "
                f"serve_process({str(data_dir)!r}, {device!r}, {req_r}, {resp_w})")
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

    def send(self, payload: bytes, op: str) -> None:
        try:
            self.requests.send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.proc.wait(timeout=5)
            raise WorkerDiedError(self.death_message(op)) from None

    def receive(self, timeout: float, op: str) -> bytes:
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
                    return self.replies.recv_bytes()
                except (EOFError, ConnectionResetError):
                    break
            elif not self.alive():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        raise WorkerDiedError(self.death_message(op))

    def death_message(self, op: str) -> str:
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        tail = "\n".join(self.stderr_tail) or "(nothing on stderr)"
        during = {"start": "while starting", "idle": "between requests"}.get(op, f"during a {op!r} request")
        return (f"the worker process (pid {self.proc.pid}) {how} {during}; the next request starts a fresh "
                f"worker. Last lines of its stderr:\n{tail}")

    def stop(self, graceful: bool) -> None:
        if graceful and self.alive():
            try:
                self.requests.send_bytes(SHUTDOWN)
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._finalizer()


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


def serve_process(data_dir: str, device: str, read_fd: int, write_fd: int) -> None:
    """The worker process's entry point: ``worker.serve_connection`` over a ``LocalBackend``."""
    from .local import LocalBackend  # only the worker process loads torch

    serve_connection(LocalBackend(data_dir, device=device), Connection(read_fd, writable=False),
                     Connection(write_fd, readable=False))
