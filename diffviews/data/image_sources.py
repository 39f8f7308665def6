"""Real images for ``diffviews build``: an image folder (one subfolder per class) or a CSV
of ``path,label`` rows, read and fitted to a model's image size.

    entries = scan_image_folder("my_images")           # [ImageEntry(path, label, where), ...]
    entries = read_image_csv("images.csv")              # paths relative to the CSV's folder
    image = load_fitted(entries[0].path, 64, 3)         # (64, 64, 3) uint8

Images are resized so their shorter side is the model's side (bicubic; Lanczos when
shrinking) and centre-cropped to a square. Bad input raises ``DataLayoutError`` naming
the folder, file or CSV line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import DataLayoutError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("path", "label")


@dataclass(frozen=True)
class ImageEntry:
    path: Path
    label: str
    where: str  # for messages: the file, or "FILE line N"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def scan_image_folder(folder: str | Path) -> list[ImageEntry]:
    """Every image of ``folder/<class>/``, classes and files sorted by name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataLayoutError(f"image folder {root} does not exist (expected one subfolder per class)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = len(_images_in(root))
        raise DataLayoutError(f"image folder {root} has no class subfolders"
                              + (f" (it holds {loose} images directly)" if loose else "")
                              + "; put each class's images in a subfolder named after the class, "
                                "or list them in a CSV (--images-csv, columns path,label)")
    entries = []
    for sub in classes:
        files = _images_in(sub)
        if not files:
            raise DataLayoutError(f"class folder {sub} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        entries += [ImageEntry(p, sub.name, str(p)) for p in files]
    return entries


def read_image_csv(file: str | Path) -> list[ImageEntry]:
    """The rows of a CSV with a ``path,label`` header; relative paths are relative to the CSV's folder."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataLayoutError(f"image CSV {path} does not exist (expected columns: {', '.join(CSV_COLUMNS)})")
    entries = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataLayoutError(f"{path}, line 1: header lacks column(s) {', '.join(missing)} "
                                      f"(found {', '.join(header) or 'nothing'}; expected {', '.join(CSV_COLUMNS)})")
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                image, label = (str(row.get(c) or "").strip() for c in CSV_COLUMNS)
                if not image or not label:
                    raise DataLayoutError(f"{path}, line {line}: empty {'path' if not image else 'label'}")
                image_path = Path(image).expanduser()
                image_path = image_path if image_path.is_absolute() else path.parent / image_path
                if not image_path.is_file():
                    raise DataLayoutError(f"{path}, line {line}: image file {image_path} not found")
                entries.append(ImageEntry(image_path, label, f"{path} line {line}"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataLayoutError(f"cannot parse {path} as CSV: {exc}") from None
    if not entries:
        raise DataLayoutError(f"image CSV {path} has no rows")
    return entries


def load_fitted(path: Path, size: int, channels: int, where: str | None = None) -> np.ndarray:
    """The image at ``path`` as (size, size, channels) uint8: shorter side resized to ``size``,
    centre-cropped, converted to RGB (3 channels) or grayscale (1)."""
    if channels not in (1, 3):
        raise ValueError(f"images have 1 or 3 channels; the model wants {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            scale = size / min(w, h)
            new = (max(size, round(w * scale)), max(size, round(h * scale)))
            resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
            im = im.resize(new, resample) if new != (w, h) else im
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        at = f" ({where})" if where and where != str(path) else ""
        raise DataLayoutError(f"cannot read image {path}{at}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr
