"""``metadata.csv``: one row per point of the map, in the activations' row order.

    point,sample_id,class_label,class_name,noise_level,sigma,image
    0,17,3,3,85.0,12.05,images/000017.png

``point`` is the row index (0..N-1), ``sample_id`` the sample's index in its source
dataset, ``noise_level`` the universal noise level in % and ``sigma`` the same in the
model's native unit, ``image`` the clean image relative to the model folder. Points are
noise-level-major: point ``j * S + i`` is sample ``i`` at the ``j``-th noise level.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .layout import DataLayoutError, ModelPaths, load_config

COLUMNS = ("point", "sample_id", "class_label", "class_name", "noise_level", "sigma", "image")


@dataclass(frozen=True, eq=False)
class Metadata:
    point: np.ndarray        # (N,) int64, 0..N-1
    sample_id: np.ndarray    # (N,) int64
    class_label: np.ndarray  # (N,) int64
    class_name: np.ndarray   # (N,) str
    noise_level: np.ndarray  # (N,) float64, %
    sigma: np.ndarray        # (N,) float64, native unit
    image: np.ndarray        # (N,) str, relative to the model folder

    def __len__(self) -> int:
        return len(self.point)

    def equals(self, other: Metadata) -> bool:
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    @property
    def noise_levels(self) -> list[float]:
        """The distinct noise levels in point order."""
        _, first = np.unique(self.noise_level, return_index=True)
        return [float(self.noise_level[i]) for i in sorted(first)]

    @property
    def sample_rows(self) -> np.ndarray:
        """Index of the first row of each distinct sample, in point order."""
        _, first = np.unique(self.sample_id, return_index=True)
        return np.sort(first)

    @property
    def num_samples(self) -> int:
        return len(np.unique(self.sample_id))


def make_metadata(sample_ids, class_labels, class_names, noise_levels, sigmas, image_paths) -> Metadata:
    """Noise-level-major metadata for S samples at L noise levels (N = S * L rows)."""
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(class_labels, dtype=np.int64)
    names = np.asarray([str(class_names[k]) for k in labels], dtype=str)
    images = np.asarray([str(p) for p in image_paths], dtype=str)
    levels = np.asarray(noise_levels, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if not len(sample_ids) == len(labels) == len(images):
        raise ValueError("sample_ids, class_labels and image_paths must have the same length")
    if levels.shape != sigmas.shape:
        raise ValueError("noise_levels and sigmas must have the same length")
    s, n_levels = len(sample_ids), len(levels)
    return Metadata(
        point=np.arange(s * n_levels, dtype=np.int64),
        sample_id=np.tile(sample_ids, n_levels),
        class_label=np.tile(labels, n_levels),
        class_name=np.tile(names, n_levels),
        noise_level=np.repeat(levels, s),
        sigma=np.repeat(sigmas, s),
        image=np.tile(images, n_levels),
    )


def write_metadata(paths: ModelPaths, metadata: Metadata) -> Path:
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.metadata.with_name(f".{paths.metadata.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in zip(metadata.point, metadata.sample_id, metadata.class_label, metadata.class_name,
                           metadata.noise_level, metadata.sigma, metadata.image):
                w.writerow([int(row[0]), int(row[1]), int(row[2]), row[3], repr(float(row[4])),
                            repr(float(row[5])), row[6]])
        os.replace(tmp, paths.metadata)
    finally:
        tmp.unlink(missing_ok=True)
    return paths.metadata


def load_metadata(paths: ModelPaths) -> Metadata:
    """Read and validate ``metadata.csv``; errors name the file, the row and the problem."""
    path = paths.metadata
    if not path.is_file():
        raise DataLayoutError(f"missing metadata file {path} (expected columns: {', '.join(COLUMNS)})")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DataLayoutError(f"{path} lacks column(s) {', '.join(missing)} "
                                      f"(expected columns: {', '.join(COLUMNS)})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataLayoutError(f"cannot parse {path} as CSV: {exc}") from None
    if not rows:
        raise DataLayoutError(f"{path} has a header but no rows; expected one row per point")
    cols = {c: [r[c] for r in rows] for c in COLUMNS}
    md = Metadata(
        point=_ints(path, "point", cols["point"]),
        sample_id=_ints(path, "sample_id", cols["sample_id"]),
        class_label=_ints(path, "class_label", cols["class_label"]),
        class_name=np.asarray(cols["class_name"], dtype=str),
        noise_level=_floats(path, "noise_level", cols["noise_level"]),
        sigma=_floats(path, "sigma", cols["sigma"]),
        image=np.asarray(cols["image"], dtype=str),
    )
    _validate(path, md)
    return md


def _ints(path: Path, column: str, values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            out[i] = int(v)
        except (TypeError, ValueError):
            raise DataLayoutError(f"{path}, row {i + 1}: column {column!r} holds {v!r}; expected an integer") from None
    return out


def _floats(path: Path, column: str, values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            out[i] = np.nan
        if not np.isfinite(out[i]):
            raise DataLayoutError(f"{path}, row {i + 1}: column {column!r} holds {v!r}; expected a finite number")
    return out


def _validate(path: Path, md: Metadata) -> None:
    def bad(rows: np.ndarray, what: str) -> DataLayoutError:
        i = int(np.flatnonzero(rows)[0])
        return DataLayoutError(f"{path}, row {i + 1}: {what}")

    misnumbered = md.point != np.arange(len(md))
    if np.any(misnumbered):
        raise bad(misnumbered, f"'point' is {md.point[misnumbered][0]}; expected points numbered 0..N-1 in order")
    for column in ("sample_id", "class_label"):
        values = getattr(md, column)
        if np.any(values < 0):
            raise bad(values < 0, f"{column!r} is negative ({values[values < 0][0]}); expected >= 0")
    out_of_range = (md.noise_level < 0) | (md.noise_level > 100)
    if np.any(out_of_range):
        raise bad(out_of_range, f"'noise_level' is {md.noise_level[out_of_range][0]}; expected a value in [0, 100] %")
    if np.any(md.sigma < 0):
        raise bad(md.sigma < 0, f"'sigma' is {md.sigma[md.sigma < 0][0]}; expected >= 0")
    empty = np.char.str_len(md.image) == 0
    if np.any(empty):
        raise bad(empty, "'image' is empty; expected a path like images/000123.png")
    unsafe = np.asarray([PurePosixPath(p).is_absolute() or ".." in PurePosixPath(p).parts for p in md.image])
    if np.any(unsafe):
        raise bad(unsafe, f"'image' is {md.image[unsafe][0]!r}; expected a path inside the model folder")


def load_sample_images(paths: ModelPaths, metadata: Metadata) -> tuple[np.ndarray, np.ndarray]:
    """The clean images of the distinct samples, in point order: ((S, C, H, W) float32 in
    [-1, 1], (S,) int64 labels). Image size and channels are checked against config.json."""
    config = load_config(paths)
    res, channels = config.get("resolution"), config.get("channels")
    rows = metadata.sample_rows
    images = []
    for r in rows:
        img = read_image(paths.root / str(metadata.image[r]))
        if (res is not None and img.shape[:2] != (res, res)) or (channels is not None and img.shape[2] != channels):
            raise DataLayoutError(f"image {paths.root / str(metadata.image[r])} is {img.shape[1]}x{img.shape[0]} "
                                  f"with {img.shape[2]} channel(s); {paths.config} expects "
                                  f"{res}x{res} with {channels} channel(s)")
        images.append(img)
    arr = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return arr, metadata.class_label[rows].copy()


def read_image(path: Path) -> np.ndarray:
    """A PNG as (H, W, C) uint8 (C = 1 for grayscale, 3 for colour)."""
    if not path.is_file():
        raise DataLayoutError(f"missing sample image {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataLayoutError(f"cannot read sample image {path} (expected a PNG): {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, C) uint8 image (C = 1 or 3) as PNG, atomically."""
    arr = np.asarray(image, dtype=np.uint8)
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pil.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
