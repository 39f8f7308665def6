"""Generations: one record per run (result, trajectory positions, step images) and the
bounded store that keeps them by unguessable id (a session only ever names its own)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends.protocol import GenerationResult
from .models import resize_to, upscale

__all__ = ["GenerationRecord", "GenerationStore", "inset", "tile"]


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
    _composites: dict = field(default_factory=dict, repr=False)

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
            img = self._composites[key] = inset(self.result.denoised[step, sample], self.result.noised[step, sample])
        return img

    def frame_image(self, step: int) -> np.ndarray:
        return tile([self.step_image(step, b) for b in range(self.num_samples)])

    def final_image(self) -> np.ndarray:
        return tile([upscale(im) for im in self.result.images])


class GenerationStore:
    """Generation records by id, least recently used dropped beyond ``max_items``."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._items: OrderedDict[str, GenerationRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: GenerationRecord) -> None:
        with self._lock:
            self._items[record.id] = record
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, gen_id: str) -> GenerationRecord | None:
        with self._lock:
            rec = self._items.get(gen_id)
            if rec is not None:
                self._items.move_to_end(gen_id)
            return rec

    def discard(self, ids: Sequence[str]) -> None:
        with self._lock:
            for gen_id in ids:
                self._items.pop(gen_id, None)

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
