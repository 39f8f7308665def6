"""GradioVisualizer: what the app's handlers ask of one data directory.

The visualizer knows nothing about browser sessions: callers pass names and indices
(model, layer, view, point indices, generation ids) and get numpy arrays, strings and
figures back. Read it top to bottom with its parts:

- ``layer_access.LayerAccess`` (its base class): models, layers, building a layer on first use
- ``figures``: the Plotly figure of a map with its overlays
- ``generations``: generation records and their bounded store
- ``exports``: zips of a selection or a generation

Heavy work goes through ``gpu_ops`` on the backend the visualizer was given (or, when none
is given, one of its own: ``backends.open_backend``; ``notice`` then says if it only browses).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..backends import open_backend
from ..backends.protocol import Backend, GenerationRequest
from ..core.masking import compute_mask_dict
from . import gpu_ops
from .exports import ExportFolder, export_generation, export_selection
from .figures import Overlays, PlotFigure, build_figure, overlay_payload
from .generations import MAX_BYTES as GENERATION_BYTES
from .generations import GenerationRecord, GenerationStore
from .layer_access import LayerAccess, Progress, no_progress

if TYPE_CHECKING:
    from ..data.r2_cache import LayerCache

log = logging.getLogger(__name__)

__all__ = ["GradioVisualizer", "GenerationRecord", "GenerationStore", "Overlays", "PlotFigure"]


class GradioVisualizer(LayerAccess):
    """Data access, plotting and layer operations for every session of one app over
    ``data_dir`` (one folder per model, see ``diffviews.data.layout``), on ``backend``."""

    def __init__(self, data_dir: str | Path, backend: Backend | None = None, device: str | None = None,
                 max_resident_models: int = 8, default_model: str | None = None, max_generations: int = 256,
                 layer_cache: LayerCache | None = None, max_map_bytes: int | None = None,
                 max_generation_bytes: int = GENERATION_BYTES):
        self.notice = None
        if backend is None:
            backend, self.notice = open_backend(data_dir, device)
        super().__init__(data_dir, backend, max_resident_models=max_resident_models, default_model=default_model,
                         layer_cache=layer_cache, max_map_bytes=max_map_bytes)
        self.generations = GenerationStore(max_generations, max_bytes=max_generation_bytes)
        self.exports = ExportFolder()

    def forget_session(self, session: str) -> None:
        """A session ended: drop its generations, its exports and the layer it showed."""
        self.generations.discard_owner(session)
        self.exports.discard(session)
        super().forget_session(session)

    # -- figures -----------------------------------------------------------------------------
    def figure(self, model: str, layer: str, view: str = "2-D", class_filter: int | None = None,
               overlays: Overlays | None = None) -> PlotFigure:
        """The full figure: the points of (model, layer, view, class filter) and ``overlays``."""
        md, ld = self._view_data(model, layer, view)
        return build_figure(md, ld, view, class_filter, overlays, self._light_trajectory_coords)

    def overlay(self, model: str, layer: str, view: str = "2-D", class_filter: int | None = None,
                overlays: Overlays | None = None) -> str:
        """The overlay message (JSON) that updates ``overlays`` on a figure of the same base in place."""
        md, ld = self._view_data(model, layer, view)
        return overlay_payload(md, ld, view, class_filter, overlays, self._light_trajectory_coords)

    def _view_data(self, model: str, layer: str, view: str):
        ld = self.ensure_view(model, layer, view, build=False)  # light: never extracts or fits
        return self.model(model), ld

    def _light_trajectory_coords(self, rec: GenerationRecord, view: str) -> np.ndarray:
        return self.trajectory_coords(rec, view, build=False)

    # -- hover, selection, neighbours ---------------------------------------------------------
    def point_info(self, model: str, layer: str, view: str, index: int) -> str:
        md = self.model(model)
        m = md.metadata
        ld = self.layer(model, layer, build=False)
        xyz = ld.coords(view)[index] if view == "2-D" or ld.aligned is not None else ld.embedding[index]
        noise_name = md.noise_symbol
        coords = ", ".join(f"{v:.3f}" for v in xyz)
        name = md.class_name(int(m.class_label[index]))
        return (f"**#{index}** · sample {int(m.sample_id[index])} · class **{name}**"
                f"  \nnoise {float(m.noise_level[index]):.1f} % · {noise_name} = {float(m.sigma[index]):.4g}"
                f" · ({coords})")

    def point_preview(self, model: str, index: int) -> np.ndarray:
        return self.model(model).preview(index)

    def trajectory_preview(self, rec: GenerationRecord, sample: int, step: int) -> tuple[np.ndarray, str]:
        r = rec.result
        unit = self.model(rec.model).noise_symbol
        info = (f"**generation {rec.id[:6]}** · sample {sample} · step **{step + 1}/{rec.num_steps}** · "
                f"class {rec.class_name}  \nnoise {float(r.noise_levels[step]):.1f} % · "
                f"{unit} = {float(r.sigmas[step]):.4g}"
                f" (denoised estimate; inset: noised input)")
        return rec.step_image(step, sample), info

    def neighbours(self, model: str, layer: str, view: str, index: int, k: int,
                   space: str = "map") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest points to ``index`` (itself excluded): indices and Euclidean
        distances, nearest first, on the map of ``view`` or in the layer's activation space."""
        ld = self.layer(model, layer, build=False)
        n = ld.n_points
        if not 1 <= k <= n - 1:
            raise ValueError(f"k must be within [1, {n - 1}] for {n} points, got {k}")
        if space == "map":
            X = ld.coords(view) if view == "2-D" or ld.aligned is not None else ld.embedding
            diff = X.astype(np.float64) - X[index].astype(np.float64)
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        elif space == "activations":
            A, sq = ld.dense_activations()
            d2 = sq - 2.0 * (A @ A[index]).astype(np.float64) + sq[index]
            d = np.sqrt(np.maximum(d2, 0.0))
        else:
            raise ValueError(f"unknown distance space {space!r}; choose 'map' or 'activations'")
        d[index] = np.inf
        idx = np.argpartition(d, k - 1)[:k]
        idx = idx[np.argsort(d[idx], kind="stable")]
        return idx.astype(np.int64), d[idx].astype(np.float32)

    def gallery(self, model: str, rows: Sequence[int], captions: Sequence[str]) -> list[tuple[np.ndarray, str]]:
        md = self.model(model)
        return [(md.preview(int(r)), c) for r, c in zip(rows, captions)]

    # -- generation ---------------------------------------------------------------------------
    def generate(self, model: str, layer: str, class_label: int, neighbours: Sequence[int], *, num_steps: int,
                 mask_steps: int, alpha: float, guidance_scale: float, noise_max: float, noise_min: float,
                 noise_mode: str, seed: int, num_samples: int, progress: Progress | None = None,
                 masks: dict[str, np.ndarray] | None = None, mask_mode: str = "blend",
                 noise_window: tuple[float, float] | None = None, owner: str | None = None) -> GenerationRecord:
        """Generate with ``layer`` held at the neighbours' mean activation for the first
        ``mask_steps`` steps; the trajectory at ``layer`` is projected onto the 2-D map with
        one batched transform. Given ``masks`` ({layer: (1, C, H, W)}, e.g. from
        ``interventions.intervention_masks``) are used as they are, in ``mask_mode``, while the
        noise level is inside ``noise_window`` (then ``mask_steps`` must be 0). The record is
        stored for ``owner`` (a session id); its own oldest records may be dropped
        (``rec.dropped``), never another session's."""
        progress = no_progress if progress is None else progress  # gr.Progress() is falsy (len 0)
        md = self.model(model)
        ld = self.layer(model, layer)
        if masks is None:
            masks = {}
            if neighbours and mask_steps > 0:
                masks = compute_mask_dict({layer: ld.dense_activations()[0]}, list(neighbours), {layer: ld.shape})
        progress(0.1, desc=f"Generating {num_samples} sample(s), {num_steps} steps")
        request = GenerationRequest(
            model=model, class_label=int(class_label), num_steps=int(num_steps), mask_steps=int(mask_steps),
            noise_max=float(noise_max), noise_min=float(noise_min), guidance_scale=float(guidance_scale),
            noise_mode=noise_mode, seed=int(seed), num_samples=int(num_samples), alpha=float(alpha), masks=masks,
            extract_layers=[layer], mask_mode=mask_mode, noise_window=noise_window)
        result = gpu_ops.generate(self.backend, request)
        rec = GenerationRecord(uuid.uuid4().hex, model, layer, int(class_label), md.class_name(int(class_label)),
                               [int(i) for i in neighbours], result)
        progress(0.8, desc="Projecting the trajectory onto the map")
        self.trajectory_coords(rec, "2-D")
        rec.dropped = self.generations.add(rec, owner)
        return rec

    def trajectory_coords(self, rec: GenerationRecord, view: str, build: bool = True) -> np.ndarray:
        """(S, B, 2) positions on the 2-D map (one batched transform) or (S, B, 3) in the 3-D view
        (``build=False``: a 3-D map that is not fitted yet raises ``LayerNotReady``)."""
        if view in rec.coords:
            return rec.coords[view]
        traj = rec.result.trajectory[rec.layer]  # (S, B, D)
        s, b, d = traj.shape
        ld = self.layer(rec.model, rec.layer)
        if view == "2-D":
            flat = ld.pipeline(self.model(rec.model).paths).transform(traj.reshape(s * b, d))
            coords = flat.reshape(s, b, -1).astype(np.float32)
        else:
            ld = self.ensure_view(rec.model, rec.layer, "3-D", build=build)
            levels = rec.result.noise_levels
            coords = np.stack([ld.aligned.transform(traj[i], level=float(levels[i])) for i in range(s)])
            coords = coords.astype(np.float32)
        rec.coords[view] = coords
        return coords

    # -- exports ------------------------------------------------------------------------------
    def export_selection(self, model: str, layer: str, selected: int | None, manual: Sequence[int],
                         knn: Sequence[int], knn_dist: Sequence[float], owner: str = "") -> Path:
        """A zip of the selection and its neighbours (see ``exports.export_selection``), owned by ``owner``."""
        return export_selection(self.exports, self.model(model), self.layer(model, layer), selected, manual, knn,
                                knn_dist, owner)

    def export_generation(self, rec: GenerationRecord, owner: str = "") -> Path:
        """A zip of one generation (see ``exports.export_generation``), owned by ``owner``."""
        return export_generation(self.exports, rec, self.trajectory_coords(rec, "2-D"), owner)
