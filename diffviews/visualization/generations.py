"""Generations: one record per run (result, trajectory positions, step images) and the
bounded store that keeps them by unguessable id (a session only ever names its own).

The store is per session: each record has an owner (the session that made it), a session
keeps at most ``per_session`` records (its own oldest make room), and all records together
stay within ``max_bytes``; when they would not, the new record is refused (``StoreFull``)
rather than another session's evicted. Step images are built on demand and only the last
few are kept per record (``STEP_CACHE``)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends.protocol import GenerationResult
from .models import resize_to, upscale

__all__ = ["GenerationRecord", "GenerationStore", "StoreFull", "inset", "tile", "STEP_CACHE"]

#: composite step images kept per record (the rest are rebuilt on demand, ~0.2 ms each)
STEP_CACHE = 2
#: generations one session keeps (its oldest are dropped beyond this)
PER_SESSION = 20
#: bytes all stored generations may take together, and one session's
MAX_BYTES = 512 << 20
PER_SESSION_BYTES = 32 << 20


class StoreFull(ValueError):
    """The generation store is at its byte or count budget; nothing was evicted for it."""


@dataclass(eq=False)
class GenerationRecord:
    """One generation run and everything the UI shows of it; ``coords`` per view are computed
    lazily (the 3-D projection only when the 3-D view is opened)."""

    id: str
    model: str
    layer: str
    class_label: int
    class_name: str
    neighbours: list[int]
    result: GenerationResult
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # view -> (S, B, 2|3) float32
    created: float = field(default_factory=time.time)
    owner: str = ""
    dropped: list = field(default_factory=list)  # ids of the owner's older records dropped to store this one
    _composites: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def num_steps(self) -> int:
        return int(self.result.denoised.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.result.images.shape[0])

    @property
    def label(self) -> str:
        p = self.result.params
        return (f"{self.id[:6]} · class {self.class_name} · {p.get('num_steps')} steps · "
                f"{len(self.neighbours)} nbrs · seed {p.get('seed')}")

    def step_image(self, step: int, sample: int = 0) -> np.ndarray:
        """The denoised estimate at ``step`` with the noised input inset (bottom right), upscaled."""
        key = (step, sample)
        img = self._composites.get(key)
        if img is None:
            img = inset(self.result.denoised[step, sample], self.result.noised[step, sample])
        self._composites[key] = img
        self._composites.move_to_end(key)
        while len(self._composites) > STEP_CACHE:
            self._composites.popitem(last=False)
        return img

    @property
    def nbytes(self) -> int:
        """Bytes held: the result's arrays, the map positions and the (bounded) step-image cache
        at its largest."""
        r = self.result
        arrays = [r.images, r.denoised, r.noised, r.sigmas, r.noise_levels, *r.trajectory.values(),
                  *self.coords.values()]
        step = self.step_image(0, 0).nbytes if self.num_steps else 0
        cached = min(STEP_CACHE, self.num_steps * self.num_samples)
        return int(sum(np.asarray(a).nbytes for a in arrays)) + cached * step

    def frame_image(self, step: int) -> np.ndarray:
        return tile([self.step_image(step, b) for b in range(self.num_samples)])

    def final_image(self) -> np.ndarray:
        return tile([upscale(im) for im in self.result.images])


class GenerationStore:
    """Generation records by id, owned by sessions (see the module docstring).

    ``max_items`` bounds the number of records of all sessions together, ``per_session`` and
    ``per_session_bytes`` the records of one owner, ``max_bytes`` the bytes of all of them
    (``GenerationRecord.nbytes``)."""

    def __init__(self, max_items: int = 256, per_session: int = PER_SESSION, max_bytes: int = MAX_BYTES,
                 per_session_bytes: int = PER_SESSION_BYTES):
        if min(max_items, per_session, max_bytes, per_session_bytes) < 1:
            raise ValueError(f"max_items, per_session, max_bytes and per_session_bytes must be >= 1, got "
                             f"{max_items}, {per_session}, {max_bytes}, {per_session_bytes}")
        self.max_items, self.per_session, self.max_bytes = max_items, per_session, max_bytes
        self.per_session_bytes = per_session_bytes
        self._items: OrderedDict[str, GenerationRecord] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, record: GenerationRecord, owner: str | None = None) -> list[str]:
        """Store ``record`` for ``owner``; returns the ids of the owner's own records dropped to
        make room (oldest first: beyond its quota, or to fit the budgets). Raises ``StoreFull``
        when the store cannot take it without evicting another session's records. Without an
        owner the record is its own owner (its caller trims and discards it)."""
        size = record.nbytes
        owner = owner or f"record:{record.id}"
        record.owner = owner
        with self._lock:
            mine = [g for g, r in self._items.items() if r.owner == owner]
            n_drop = max(0, len(mine) + 1 - self.per_session)
            # beyond the quota, or to fit the byte and count budgets: the owner's own oldest, never others'
            while n_drop < len(mine) and (
                    self._total() - sum(self._sizes[g] for g in mine[:n_drop]) + size > self.max_bytes
                    or sum(self._sizes[g] for g in mine[n_drop:]) + size > self.per_session_bytes
                    or len(self._items) - n_drop + 1 > self.max_items):
                n_drop += 1
            dropped = mine[:n_drop]
            room = self.max_bytes - (self._total() - sum(self._sizes[g] for g in dropped))
            if size > min(room, self.per_session_bytes) or len(self._items) - len(dropped) + 1 > self.max_items:
                raise StoreFull(f"the server holds as many generations as it can right now "
                                f"({len(self._items)} using {self._total() / 2**20:.0f} MiB); clear your "
                                f"trajectories or try again later")
            for g in dropped:
                self._pop(g)
            self._items[record.id] = record
            self._sizes[record.id] = size
        return dropped

    def get(self, gen_id: str) -> GenerationRecord | None:
        with self._lock:
            return self._items.get(gen_id) if isinstance(gen_id, str) else None

    def discard(self, ids: Sequence[str]) -> None:
        with self._lock:
            for gen_id in ids:
                self._pop(gen_id)

    def discard_owner(self, owner: str) -> None:
        """Drop every record of ``owner`` (its session ended)."""
        with self._lock:
            for gen_id in [g for g, r in self._items.items() if r.owner == owner]:
                self._pop(gen_id)

    def owned(self, owner: str) -> list[str]:
        with self._lock:
            return [g for g, r in self._items.items() if r.owner == owner]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._total()

    def _total(self) -> int:
        return sum(self._sizes.values())

    def _pop(self, gen_id: str) -> None:
        self._items.pop(gen_id, None)
        self._sizes.pop(gen_id, None)

    def __len__(self) -> int:
        return len(self._items)


def inset(main: np.ndarray, small: np.ndarray, size: int = 192) -> np.ndarray:
    """``main`` upscaled to about ``size`` px with ``small`` (a third of the side) in the bottom-right corner."""
    big = upscale(main, size).copy()
    little = resize_to(small, max(1, big.shape[0] // 3))
    h, w = little.shape[:2]
    big[-h - 2:, -w - 2:] = 255  # white frame
    big[-h - 1:-1, -w - 1:-1] = little[: h, : w]
    return big


def tile(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images of equal height side by side on a white background."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out
