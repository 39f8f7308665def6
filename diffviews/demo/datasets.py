"""The two demo datasets. Neither downloads anything.

- ``digits``: scikit-learn's bundled 8×8 handwritten digits, upsampled to 16×16 grayscale.
- ``shapes``: procedurally drawn 32×32 RGB shapes (deterministic for a given seed).

Both return a ``Dataset`` of uint8 HWC images and integer labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def as_model_input(self) -> np.ndarray:
        """(N, C, H, W) float32 in [-1, 1], the range the demo models were trained on."""
        return self.images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def load_digits16() -> Dataset:
    from sklearn.datasets import load_digits

    raw = load_digits()
    small = (raw.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in small])
    return Dataset("digits", big[..., None], raw.target.astype(np.int64), tuple(str(i) for i in range(10)))


SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
_SUPERSAMPLE = 4


def _polygon(n: int, radius: float, angle: float, cx: float, cy: float, inner: float | None = None):
    pts = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        r = radius if inner is None or k % 2 == 0 else radius * inner
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _draw_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    s = size * _SUPERSAMPLE
    img = Image.new("RGB", (s, s), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    hue = rng.uniform(0, 1)
    colour = tuple(int(255 * c) for c in _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)))
    radius = rng.uniform(0.24, 0.38) * s
    cx = rng.uniform(radius + 0.04 * s, s - radius - 0.04 * s)
    cy = rng.uniform(radius + 0.04 * s, s - radius - 0.04 * s)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif kind == "square":
        draw.polygon(_polygon(4, radius * 1.1, angle, cx, cy), fill=colour)
    elif kind == "triangle":
        draw.polygon(_polygon(3, radius * 1.15, angle, cx, cy), fill=colour)
    elif kind == "star":
        draw.polygon(_polygon(5, radius * 1.15, angle, cx, cy, inner=0.42), fill=colour)
    elif kind == "cross":
        w = radius * 0.38
        arm = [(-radius, -w), (radius, -w), (radius, w), (-radius, w)]
        for rot in (angle, angle + math.pi / 2):
            c, si = math.cos(rot), math.sin(rot)
            draw.polygon([(cx + x * c - y * si, cy + x * si + y * c) for x, y in arm], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        r2 = radius * 0.55
        draw.ellipse([cx - r2, cy - r2, cx + r2, cy + r2], fill=(0, 0, 0))
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPE_CLASSES)}")
    return np.asarray(img.resize((size, size), Image.LANCZOS))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def make_shapes(n_per_class: int = 500, size: int = 32, seed: int = 0) -> Dataset:
    """Draw ``n_per_class`` images of each shape class, interleaved by class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n_per_class):
        for label, kind in enumerate(SHAPE_CLASSES):
            images.append(_draw_shape(kind, size, rng))
            labels.append(label)
    return Dataset("shapes", np.stack(images), np.asarray(labels, dtype=np.int64), SHAPE_CLASSES)


DATASETS = {"digits": load_digits16, "shapes": make_shapes}


def load_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown demo dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
