"""Zip exports: a selection with its neighbours, or one generation with every step.

Files go to one temporary folder per app (``ExportFolder``), created on first use.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .generations import GenerationRecord
from .models import LayerData, ModelData

__all__ = ["ExportFolder", "export_selection", "export_generation"]


class ExportFolder:
    """A temporary folder (made on first use) and unique zip names inside it."""

    def __init__(self):
        self._path: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix="diffviews-export-"))
            return self._path

    def zip_path(self, stem: str) -> Path:
        return self.path / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.zip"


def export_selection(folder: ExportFolder, md: ModelData, ld: LayerData, selected: int | None,
                     manual: Sequence[int], knn: Sequence[int], knn_dist: Sequence[float]) -> Path:
    """A zip of the selection and its neighbours: selection.json, points.csv and each point's image."""
    m = md.metadata
    roles = ([] if selected is None else [(selected, "selected", None)]) + [(i, "neighbour", None) for i in manual]
    roles += [(i, "knn", float(d)) for i, d in zip(knn, knn_dist)]
    if not roles:
        raise ValueError("nothing to export: select a point or neighbours first")
    path = folder.zip_path(f"selection-{md.name}-{ld.layer}")
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["point", "role", "sample_id", "class_label", "class_name", "noise_level", "sigma", "x", "y",
                "knn_distance", "image"])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i, role, dist in roles:
            label = int(m.class_label[i])
            w.writerow([i, role, int(m.sample_id[i]), label, md.class_name(label), float(m.noise_level[i]),
                        float(m.sigma[i]), float(ld.embedding[i, 0]), float(ld.embedding[i, 1]),
                        "" if dist is None else dist, f"images/point_{i:06d}.png"])
            z.writestr(f"images/point_{i:06d}.png", _png(md.sample_image(i)))
        z.writestr("points.csv", table.getvalue())
        z.writestr("selection.json", json.dumps({
            "model": md.name, "layer": ld.layer, "selected": selected, "neighbours": [int(i) for i in manual],
            "knn": [int(i) for i in knn], "knn_distances": [float(d) for d in knn_dist],
            "noise_levels": md.noise_levels, "class_names": md.class_names}, indent=2))
    return path


def export_generation(folder: ExportFolder, rec: GenerationRecord, coords: np.ndarray) -> Path:
    """A zip of one generation: final images, every step (denoised and noised), params.json
    and trajectory.csv (``coords``: (S, B, 2) map positions per step and sample)."""
    r = rec.result
    path = folder.zip_path(f"generation-{rec.model}-{rec.layer}-{rec.id[:6]}")
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["step", "sample", "sigma", "noise_level", "x", "y"])
    for s in range(rec.num_steps):
        for b in range(rec.num_samples):
            w.writerow([s, b, float(r.sigmas[s]), float(r.noise_levels[s]), float(coords[s, b, 0]),
                        float(coords[s, b, 1])])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for b in range(rec.num_samples):
            z.writestr(f"final_{b}.png", _png(r.images[b]))
            for s in range(rec.num_steps):
                z.writestr(f"steps/sample_{b}/step_{s:03d}_denoised.png", _png(r.denoised[s, b]))
                z.writestr(f"steps/sample_{b}/step_{s:03d}_noised.png", _png(r.noised[s, b]))
        z.writestr("trajectory.csv", table.getvalue())
        z.writestr("params.json", json.dumps({
            "id": rec.id, "model": rec.model, "layer": rec.layer, "class_label": rec.class_label,
            "class_name": rec.class_name, "neighbours": rec.neighbours, "params": r.params,
            "sigmas": [float(v) for v in r.sigmas], "noise_levels": [float(v) for v in r.noise_levels]},
            indent=2, default=str))
    return path


def _png(image: np.ndarray) -> bytes:
    arr = np.asarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()
