"""Fair use of the heavy work: a per-session limit on waiting jobs and one slot per kind.

Gradio's queue hands a heavy event (generate, model or layer switch, export) to the app
once a thread is free; ``HeavyGate`` then decides. A session with ``per_session`` heavy
jobs already running or waiting gets ``Busy`` at once (one visitor cannot fill the queue
and starve everyone); otherwise the job waits for its kind's slot (``slots``) for at most
``wait_s`` seconds, then ``Busy``. Light work (hover, click, KNN, filter, frames) never
passes here and never waits for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Busy", "HeavyGate", "PER_SESSION", "SLOTS", "WAIT_S", "limit_malloc_arenas"]

#: heavy jobs one session may have running or waiting at once
PER_SESSION = 2
#: heavy jobs of each kind running at once (a kind shares its slots across sessions)
SLOTS = {"generate": 1, "model": 1, "layer": 1, "export": 2}
log = logging.getLogger(__name__)

#: glibc heaps a serving process may use (``MALLOC_ARENA_MAX`` overrides)
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)

#: the longest a heavy job waits for its slot before the user is told to try again
WAIT_S = 120.0


class Busy(RuntimeError):
    """The server refuses a heavy job for now; the message says to try again."""


class HeavyGate:
    """Per-session job counts and per-kind slots (see the module docstring)."""

    def __init__(self, per_session: int = PER_SESSION, slots: dict[str, int] | None = None, wait_s: float = WAIT_S):
        slots = dict(SLOTS if slots is None else slots)
        if per_session < 1 or wait_s <= 0 or any(n < 1 for n in slots.values()):
            raise ValueError(f"per_session and every slot count must be >= 1 and wait_s > 0; got {per_session}, "
                             f"{slots}, {wait_s}")
        self.per_session, self.wait_s = per_session, wait_s
        self._slots = {kind: threading.BoundedSemaphore(n) for kind, n in slots.items()}
        self._jobs: dict[str, int] = {}
        self._lock = threading.Lock()

    def kinds(self) -> list[str]:
        return list(self._slots)

    def jobs(self, session: str) -> int:
        """Heavy jobs of ``session`` running or waiting now."""
        with self._lock:
            return self._jobs.get(session, 0)

    @contextmanager
    def enter(self, session: str, kind: str) -> Iterator[None]:
        """Hold a slot of ``kind`` for ``session`` while the block runs; raises ``Busy`` instead."""
        slot = self._slots[kind]
        with self._lock:
            n = self._jobs.get(session, 0)
            if n >= self.per_session:
                raise Busy(f"busy, try again: this session already has {n} heavy job(s) running or waiting "
                           f"(generate, model or layer switch, export); wait for them to finish")
            self._jobs[session] = n + 1
        try:
            if not slot.acquire(timeout=self.wait_s):
                raise Busy(f"busy, try again: the server has been busy with other visitors' {kind} jobs for "
                           f"{self.wait_s:.0f} s")
            try:
                yield
            finally:
                slot.release()
        finally:
            with self._lock:
                left = self._jobs.get(session, 1) - 1
                if left > 0:
                    self._jobs[session] = left
                else:
                    self._jobs.pop(session, None)


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` for this process (unless ``MALLOC_ARENA_MAX`` is set).

    A server's many request threads each get an arena of their own and keep its peak: in the
    5-minute soak the heap grew 49.8 % with glibc's default (8 per core) and 1.7 % with 2, at
    the same load. Call it before the serving threads start. False where it does not apply
    (not glibc) or the environment already decides."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(_M_ARENA_MAX, int(n)))
    except OSError:
        ok = False
    if ok:
        log.debug("malloc arenas capped at %d", n)
    return ok
