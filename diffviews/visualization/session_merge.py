"""Concurrent events of one session: each handler's changes land on the latest state.

Gradio hands every event the session's state as it was when the event started and stores
whatever the handler returns. Two events of one session may run at once (a click while a
generation runs: they are in different concurrency groups), so the slower one would write
back the state it started from and undo the faster one (the click's selection would jump
back when the generation finishes). ``SessionBoard.commit`` prevents that: it keeps the
latest state of every live session and applies to it only what the finishing handler
changed (a three-way merge: the state the handler was given, what it returned, the latest).

- Fields the handler did not change keep their latest values.
- Generation ids merge as sets: the handler's additions and removals are applied to the
  latest list (two generations finishing together both stay listed).
- A handler that switched the model also decides every field that names points of a model
  (selection, neighbours, KNN, class filter, frame): the latest values of those belong to
  the model it left.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import fields, replace
from typing import Any

__all__ = ["SessionBoard", "merge", "MAX_SESSIONS"]

#: sessions remembered at once (least recently written dropped first): a bound, never reached
#: while Gradio ends idle sessions (``events.SESSION_TTL_S``)
MAX_SESSIONS = 10_000
#: fields that are sets of ids (merged by additions and removals)
ID_SETS = ("generations",)
#: fields that name points (or steps) of the session's model: a model switch decides them all
MODEL_BOUND = ("selected", "manual", "knn", "knn_dist", "class_filter", "frame", "active")


def merge(given: Any, returned: Any, latest: Any) -> Any:
    """``latest`` with what the handler changed from ``given`` to ``returned`` (see the module
    docstring). All three are the same frozen dataclass; returns a new one."""
    changed = {f.name: getattr(returned, f.name) for f in fields(returned)
               if getattr(returned, f.name) != getattr(given, f.name)}
    if "model" in changed:
        changed.update({name: getattr(returned, name) for name in MODEL_BOUND})
    for name in ID_SETS:
        if name in changed:
            before, after = set(getattr(given, name)), getattr(returned, name)
            removed = before - set(after)
            kept = [g for g in getattr(latest, name) if g not in removed]
            changed[name] = tuple(kept + [g for g in after if g not in before and g not in kept])
    return replace(latest, **changed)


class SessionBoard:
    """The latest state of every live session, by session id (bounded, thread-safe)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._latest: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def commit(self, sid: str | None, given: Any, returned: Any) -> Any:
        """The state to store for ``sid`` after a handler turned ``given`` into ``returned``."""
        if not sid:
            return returned
        with self._lock:
            latest = self._latest.get(sid)
            state = returned if latest is None or latest == given else merge(given, returned, latest)
            self._latest[sid] = state
            self._latest.move_to_end(sid)
            while len(self._latest) > self.max_sessions:
                self._latest.popitem(last=False)
            return state

    def forget(self, sid: str | None) -> None:
        with self._lock:
            self._latest.pop(sid, None)

    def __len__(self) -> int:
        return len(self._latest)
