"""Steering the app's generations: which point sets, which layers, what lands where.

Plain functions over a ``GradioVisualizer`` (no Gradio, no session): the handlers in
``steering.py`` validate the browser's values and call these.

- Set A is the selected point and its neighbours; set B (the reference of a direction) is a
  second selection, the selected class's points, or every point (``reference_set``).
- ``intervention_masks``: per hooked layer, the mean of A (``"blend"``) or mean(A) − mean(B)
  (``"add"``). A layer of the intervention that has no activations on disk yet goes through
  the app's one layer path (``LayerAccess.layer``: extracted, mapped and cached, with
  progress), so it can be switched to afterwards at no cost. Point indices are the same rows
  in every layer (one row per sample and noise level).
- ``landing``: where a generation landed (``core.landing.landing_report``) on the 2-D map of
  the layer its trajectory was recorded at.
- ``run_sweep`` / ``export_sweep``: one generation per value of α or of the window start,
  same seed, and their zip with a ``params.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..core.landing import LandingReport, landing_report
from ..core.masking import compute_direction_dict, compute_mask_dict
from .generations import GenerationRecord
from .layer_access import Progress, no_progress

if TYPE_CHECKING:
    from .visualizer import GradioVisualizer

__all__ = ["REFERENCE_SETS", "MASK_MODES", "SWEEP_OVER", "reference_set", "intervention_masks", "landing_step",
           "landing", "landing_text", "run_sweep", "export_sweep", "sweep_rows"]

#: what set B is: the points moved there by "Use as set B", the selected point's class, every point
REFERENCE_SETS = ("second selection", "class mean", "global mean")
MASK_MODES = ("blend", "add")
#: what a sweep in the app varies (core.sweep's names); "window_start" is the window's "from %"
SWEEP_OVER = ("alpha", "window_start")
#: map points that vote on a landing class
LANDING_K = 10


def reference_set(vis: GradioVisualizer, model: str, source: str, set_b: Sequence[int],
                  class_label: int | None) -> list[int] | None:
    """Indices of set B for ``source`` (one of ``REFERENCE_SETS``); None means every point."""
    if source == "second selection":
        if not set_b:
            raise ValueError("set B is empty: build a selection with the map tools and press 'Use as set B', "
                             "or choose the class mean or the global mean as the reference")
        return [int(i) for i in set_b]
    if source == "class mean":
        if class_label is None:
            raise ValueError("the class mean needs a selected point (its class is the reference)")
        return np.flatnonzero(vis.model(model).metadata.class_label == class_label).tolist()
    if source == "global mean":
        return None
    raise ValueError(f"unknown reference set {source!r}; choose one of: {', '.join(REFERENCE_SETS)}")


def intervention_masks(vis: GradioVisualizer, model: str, layers: Sequence[str], set_a: Sequence[int],
                       mode: str, set_b: Sequence[int] | None = None,
                       progress: Progress | None = None) -> dict[str, np.ndarray]:
    """{layer: (1, C, H, W) float32}: the mean of ``set_a`` (``"blend"``) or mean(A) − mean(B)
    (``"add"``; ``set_b`` None = every point). Layers not built yet are built first (progress)."""
    progress = no_progress if progress is None else progress
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MASK_MODES)}")
    if not set_a:
        raise ValueError("set A is empty: select a point (and neighbours) to steer towards")
    acts, shapes = {}, {}
    for k, layer in enumerate(layers):
        if not vis.layer_is_built(model, layer):
            progress(0.05 + 0.4 * k / len(layers), desc=f"Layer {layer} is new: extracting and mapping it")
        ld = vis.layer(model, layer, progress)
        acts[layer], shapes[layer] = ld.dense_activations()[0], ld.shape
    if mode == "blend":
        return compute_mask_dict(acts, list(set_a), shapes)
    return compute_direction_dict(acts, list(set_a), None if set_b is None else list(set_b), shapes)


def landing_step(step_levels: np.ndarray, map_levels: Sequence[float], steered: Sequence[bool] | None = None) -> int:
    """The trajectory step whose map position decides where a generation landed.

    Not a step where the intervention held the map's own layer (its activation there is the
    intervention's, not the image's: ``steered``), and preferably the last one still at or above
    the map's lowest noise level (below it the map holds no data, so positions are extrapolated);
    else the free step nearest that level; the final step when every step was steered."""
    levels = np.asarray(step_levels, dtype=np.float64)
    free = np.ones(len(levels), dtype=bool) if steered is None else ~np.asarray(steered, dtype=bool)[:len(levels)]
    if not free.any():
        return len(levels) - 1
    lowest = float(min(map_levels))
    inside = np.flatnonzero(free & (levels >= lowest - 0.5))
    if inside.size:
        return int(inside[-1])
    candidates = np.flatnonzero(free)
    return int(candidates[np.argmin(np.abs(levels[candidates] - lowest))])


def _landing_step_of(md, rec: GenerationRecord) -> int:
    p = rec.result.params
    schedule = p.get("mask_schedule") or []
    steered = [bool(on) and rec.layer in (p.get("masked_layers") or []) for on in schedule] or None
    return landing_step(rec.result.noise_levels[:rec.num_steps], md.noise_levels, steered)


def landing(vis: GradioVisualizer, rec: GenerationRecord, set_a: Sequence[int] = ()) -> LandingReport:
    """Landed class (vote of the ``LANDING_K`` nearest lowest-level map points) of each sample of
    ``rec`` at its ``landing_step``, and its distance to set A's centroid (travelled since step 1)."""
    md, ld = vis.model(rec.model), vis.layer(rec.model, rec.layer)
    coords = vis.trajectory_coords(rec, "2-D")
    step = _landing_step_of(md, rec)
    return landing_report(coords[step], ld.embedding, md.metadata.class_label, md.metadata.noise_level,
                          k=LANDING_K, set_a=list(set_a) or None, start_coords=coords[0] if set_a else None)


def landing_text(vis: GradioVisualizer, rec: GenerationRecord, report: LandingReport) -> str:
    """One line for the status: where each sample landed, and how far it moved towards set A."""
    md = vis.model(rec.model)
    step = _landing_step_of(md, rec)
    names = [f"**{md.class_name(int(c))}** ({share:.0%})" for c, share in zip(report.landed, report.vote_share)]
    text = (f"Landed (vote of {report.k} nearest map points at {report.level:g} % noise, step {step + 1}): "
            f"{', '.join(names)}")
    if report.travelled is not None:
        moved = ", ".join(f"{t:+.2f}" for t in report.travelled)
        text += (f" · distance to set A's centroid {np.mean(report.distance_final):.2f} map units, "
                 f"travelled towards it since step 1: {moved} (negative: away)")
    return text


def run_sweep(vis: GradioVisualizer, over: str, values: Sequence[float], generate_kwargs: dict,
              progress: Progress | None = None,
              on_record: Callable[[GenerationRecord], None] | None = None) -> list[GenerationRecord]:
    """One ``vis.generate(**generate_kwargs)`` per value of ``over`` (``SWEEP_OVER``), same seed;
    each record's params hold ``sweep_over`` and ``sweep_value``."""
    progress = no_progress if progress is None else progress
    if over not in SWEEP_OVER:
        raise ValueError(f"cannot sweep over {over!r}; choose one of: {', '.join(SWEEP_OVER)}")
    records = []
    for k, value in enumerate(values):
        progress(k / len(values), desc=f"Sweep {k + 1}/{len(values)}: {over} = {value:g}")
        # core.sweep's sweep_kwargs, without importing the torch side: α, or the window's from %
        kw = dict(generate_kwargs)
        if over == "alpha":
            kw["alpha"] = float(value)
        else:
            kw["noise_window"] = (float(value), kw["noise_window"][1])
        rec = vis.generate(**kw)
        rec.result.params.update(sweep_over=over, sweep_value=float(value))
        records.append(rec)
        if on_record is not None:
            on_record(rec)
    return records


def sweep_rows(vis: GradioVisualizer, records: Sequence[GenerationRecord], set_a: Sequence[int],
               target: int | None) -> list[dict]:
    """One row per sweep value: the value, the landing classes and the share that landed in
    ``target`` (set A's class), the mean distance to set A's centroid, the generation id."""
    rows = []
    for rec in records:
        report = landing(vis, rec, set_a)
        md, p = vis.model(rec.model), rec.result.params
        rows.append({"value": p["sweep_value"], "over": p["sweep_over"], "generation": rec.id,
                     "landed": [md.class_name(int(c)) for c in report.landed],
                     "landed_share": None if target is None else report.share(target),
                     "distance_to_a": None if report.distance_final is None else float(np.mean(report.distance_final)),
                     "seed": p["seed"], "alpha": p["alpha"], "mode": p["mask_mode"],
                     "window": p["noise_window"], "layers": p["masked_layers"]})
    return rows


def export_sweep(vis: GradioVisualizer, records: Sequence[GenerationRecord], rows: Sequence[dict]) -> Path:
    """A zip of a sweep: ``value_<k>.png`` per value (every sample side by side) and ``params.csv``
    (one row per value: value, landing, distance to set A, every generation parameter)."""
    buf = io.StringIO()
    columns = ["index", "over", "value", "landed", "landed_share", "distance_to_a", "mode", "alpha", "window_from",
               "window_to", "layers", "seed", "class", "steps", "guidance", "noise_max", "noise_min", "noise_mode",
               "generation"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    files = {}
    for k, (rec, row) in enumerate(zip(records, rows)):
        p = rec.result.params
        window = p.get("noise_window") or [None, None]
        writer.writerow({"index": k, "over": row["over"], "value": row["value"], "landed": " ".join(row["landed"]),
                         "landed_share": row["landed_share"], "distance_to_a": row["distance_to_a"],
                         "mode": p["mask_mode"], "alpha": p["alpha"], "window_from": window[0],
                         "window_to": window[1], "layers": " ".join(p["masked_layers"]), "seed": p["seed"],
                         "class": rec.class_name, "steps": p["num_steps"], "guidance": p["guidance_scale"],
                         "noise_max": p["noise_max"], "noise_min": p["noise_min"], "noise_mode": p["noise_mode"],
                         "generation": rec.id})
        png = io.BytesIO()
        Image.fromarray(rec.final_image()).save(png, format="PNG")
        files[f"value_{k}.png"] = png.getvalue()
    path = vis.exports.zip_path(f"sweep-{records[0].model}-{records[0].layer}")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("params.csv", buf.getvalue())
        z.writestr("sweep.json", json.dumps({"over": rows[0]["over"], "values": [r["value"] for r in rows]}))
        for name, data in files.items():
            z.writestr(name, data)
    return path
