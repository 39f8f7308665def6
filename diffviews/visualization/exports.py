"""Zip exports: a selection with its neighbours, or one generation with every step.

Files go to one temporary folder per app (``ExportFolder``), created on first use and
removed at exit. Gradio copies a returned file into its own cache while answering the
request, so a zip here is served once the request is answered: a session's earlier zips
are deleted when it exports again or ends, and any zip older than ``SERVED_AFTER_S``
is deleted by the next export of anyone.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import shutil
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

__all__ = ["ExportFolder", "export_selection", "export_generation", "SERVED_AFTER_S"]

#: seconds after which an export has surely been copied into Gradio's cache (served)
SERVED_AFTER_S = 60.0


class ExportFolder:
    """A temporary folder (made on first use, removed at exit) and unique zip names inside
    it, each owned by a session (see the module docstring)."""

    def __init__(self, served_after_s: float = SERVED_AFTER_S):
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._owned: dict[str, list[Path]] = {}
        self.served_after_s = served_after_s

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix="diffviews-export-"))
                atexit.register(shutil.rmtree, self._path, True)
            return self._path

    def zip_path(self, stem: str, owner: str = "") -> Path:
        """A new zip name for ``owner``; the owner's earlier zips (none without an owner) and
        every zip older than ``served_after_s`` are deleted first."""
        path = self.path / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.zip"
        if owner:
            self.discard(owner)
        self.sweep()
        with self._lock:
            self._owned.setdefault(owner, []).append(path)
        return path

    def discard(self, owner: str) -> None:
        """Delete ``owner``'s zips (its session exported again or ended)."""
        with self._lock:
            paths = self._owned.pop(owner, [])
        for p in paths:
            p.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Delete zips older than ``served_after_s``."""
        if self._path is None:
            return
        cutoff = time.time() - self.served_after_s
        for p in self._path.glob("*.zip"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink(missing_ok=True)
            except OSError:
                pass  # removed meanwhile
        with self._lock:
            self._owned = {o: [p for p in ps if p.exists()] for o, ps in self._owned.items()}

    def close(self) -> None:
        """Remove the folder and everything in it."""
        with self._lock:
            path, self._path, self._owned = self._path, None, {}
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def export_selection(folder: ExportFolder, md: ModelData, ld: LayerData, selected: int | None,
                     manual: Sequence[int], knn: Sequence[int], knn_dist: Sequence[float], owner: str = "") -> Path:
    """A zip of the selection and its neighbours: selection.json, points.csv and each point's image."""
    m = md.metadata
    roles = ([] if selected is None else [(selected, "selected", None)]) + [(i, "neighbour", None) for i in manual]
    roles += [(i, "knn", float(d)) for i, d in zip(knn, knn_dist)]
    if not roles:
        raise ValueError("nothing to export: select a point or neighbours first")
    path = folder.zip_path(f"selection-{md.name}-{ld.layer}", owner)
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


def export_generation(folder: ExportFolder, rec: GenerationRecord, coords: np.ndarray, owner: str = "") -> Path:
    """A zip of one generation: final images, every step (denoised and noised), params.json
    and trajectory.csv (``coords``: (S, B, 2) map positions per step and sample)."""
    r = rec.result
    path = folder.zip_path(f"generation-{rec.model}-{rec.layer}-{rec.id[:6]}", owner)
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
