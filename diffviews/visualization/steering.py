"""Steering handlers: plain functions ``(visualizer, state, inputs...) -> (new_state, outputs)``,
like ``callbacks.py`` (same validation helpers, same ``guarded`` error handling).

- ``steer``: the app's generate button. Set A (the selected point and its neighbours) steers
  the hooked layers while the noise level is inside [from %, to %]: ``blend`` holds them at
  A's mean with strength α in [0, 1]; ``add`` adds α·(mean(A) − mean(B)), α in [−4, 4].
  The status says where the result landed on the map and how far it moved towards A.
- ``use_as_set_b`` / ``clear_set_b``: set B is built with the same map tools as a selection
  (click, neighbours, KNN, box/lasso), then moved to B with one button (orange squares).
- ``sweep``: one generation per value of α or of the window start, same seed, shown as a
  labelled grid, each with its trajectory; a chart of where they landed; ``export_sweep``.
- ``suggest_knn``: ``callbacks.suggest_knn`` plus how many of the neighbours are also
  neighbours in the other space (map vs activations).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from ..backends.protocol import NOISE_MODES
from . import callbacks as cb
from . import interventions as iv
from .callbacks import Session, UserError, check_choice, check_float, check_int, guarded
from .honesty import agreement_text, knn_agreement
from .visualizer import GradioVisualizer

#: α's range per mode in the UI (the core accepts a wider one for "add")
ALPHA_RANGES = {"blend": (0.0, 1.0), "add": (-4.0, 4.0)}
WINDOW_DEFAULT = (50.0, 100.0)
MAX_STEER_LAYERS = 8
SWEEP_VALUES = (2, 12)  # how many values a sweep takes
SWEEP_DEFAULTS = {"alpha": {"blend": "0, 0.25, 0.5, 0.75, 1", "add": "-2, -1, 0, 1, 2"},
                  "window_start": "0, 20, 40, 60, 80"}
SWEEP_LABELS = {"alpha": "α", "window_start": "window from %"}
#: outputs of the steering handlers that callbacks.OUTPUTS does not have
OUTPUTS = ("gen_alpha", "set_b_info", "steer_layers", "sweep_values", "sweep_gallery", "sweep_chart")


def set_b_of(state: Session) -> tuple[int, ...]:
    """Set B when it belongs to the session's model (a model switch leaves it behind)."""
    return state.set_b if state.set_b_model == state.model else ()


def set_a_of(state: Session) -> list[int]:
    """Set A: the selected point and its neighbours."""
    return list(dict.fromkeys(([] if state.selected is None else [state.selected]) + state.neighbours()))


def _set_b_info(vis: GradioVisualizer, state: Session) -> str:
    rows = set_b_of(state)
    if not rows:
        return "Set B: empty (build a selection with the map tools, then *Use selection as set B*)."
    md = vis.model(state.model)
    labels = md.metadata.class_label[list(rows)]
    classes = ", ".join(f"{md.class_name(int(c))} × {n}" for c, n in zip(*np.unique(labels, return_counts=True)))
    return f"Set B: {len(rows)} point(s) ({classes}), orange squares on the map."


# ---- set B ---------------------------------------------------------------------------------------

@guarded
def use_as_set_b(vis: GradioVisualizer, state: Session):
    """Move the selection and its neighbours into set B (replacing it) and clear the selection."""
    rows = set_a_of(state)
    if not rows:
        raise UserError("nothing to move to set B: select points with click, neighbours, KNN or box/lasso first")
    state = replace(state, set_b=tuple(rows), set_b_model=state.model, selected=None, manual=(), knn=(),
                    knn_dist=())
    status = f"Set B holds {len(rows)} point(s). Now select set A (a point and its neighbours)."
    return state, {**cb._view(vis, state, status), **cb._selection(vis, state), "set_b_info": _set_b_info(vis, state)}


@guarded
def clear_set_b(vis: GradioVisualizer, state: Session):
    state = replace(state, set_b=(), set_b_model=None)
    return state, {**cb._view(vis, state, "Set B cleared."), "set_b_info": _set_b_info(vis, state)}


@guarded
def switch_mode(vis: GradioVisualizer, state: Session, mode, alpha=1.0):
    """The α slider and the sweep's default values follow the mode (blend: 0…1, add: −4…4)."""
    mode = check_choice("mode", mode, iv.MASK_MODES)
    lo, hi = ALPHA_RANGES[mode]
    try:
        value = float(np.clip(float(alpha), lo, hi))
    except (TypeError, ValueError):
        value = hi
    label = "Blend strength α" if mode == "blend" else "Direction strength α (signed)"
    return state, {"gen_alpha": gr.update(minimum=lo, maximum=hi, value=value, label=label),
                   "sweep_values": SWEEP_DEFAULTS["alpha"][mode]}


@guarded
def switch_sweep_over(vis: GradioVisualizer, state: Session, over, mode="blend"):
    """The sweep's default values for what it varies."""
    over = check_choice("sweep over", over, iv.SWEEP_OVER)
    mode = mode if mode in iv.MASK_MODES else "blend"
    return state, {"sweep_values": SWEEP_DEFAULTS["alpha"][mode] if over == "alpha" else SWEEP_DEFAULTS[over]}


@guarded
def refresh_layers(vis: GradioVisualizer, state: Session):
    """After a model switch: the layers the intervention can hook, and that model's set B."""
    return state, {"steer_layers": gr.update(choices=vis.layers(state.model), value=[]),
                   "set_b_info": _set_b_info(vis, state)}


# ---- generation -------------------------------------------------------------------------------------

def _generation_kwargs(vis: GradioVisualizer, state: Session, class_choice, steps, window_from, window_to, mode,
                       alpha, layers, reference, guidance, noise_max, noise_min, noise_mode, seed, num_samples,
                       progress) -> tuple[dict, list[int], str]:
    """Every field checked; ``vis.generate`` keyword arguments, set A and a description of the intervention."""
    md = vis.model(state.model)
    class_choice = check_choice("class", class_choice, [cb.FROM_SELECTION, *md.class_names])
    if class_choice == cb.FROM_SELECTION:
        if state.selected is None:
            raise UserError("no point selected to take the class from: select a point or choose a class")
        label = int(md.metadata.class_label[state.selected])
    else:
        label = md.class_names.index(class_choice)
    steps = check_int("steps", steps, *cb.STEPS_RANGE)
    window = (check_float("noise window from %", window_from, *cb.NOISE_RANGE),
              check_float("noise window to %", window_to, *cb.NOISE_RANGE))
    if window[0] > window[1]:
        raise UserError(f"noise window from ({window[0]:g} %) must not exceed to ({window[1]:g} %)")
    mode = check_choice("mode", mode, iv.MASK_MODES)
    alpha = check_float(f"{mode} strength α", alpha, *ALPHA_RANGES[mode])
    if layers is None or layers == []:
        layers = [state.layer]
    if not isinstance(layers, (list, tuple)) or len(layers) > MAX_STEER_LAYERS:
        raise UserError(f"choose 1 to {MAX_STEER_LAYERS} layers to steer, got {layers!r}")
    layers = list(dict.fromkeys(check_choice("layer", name, vis.layers(state.model)) for name in layers))
    reference = check_choice("reference set B", reference, iv.REFERENCE_SETS)
    guidance = check_float("guidance", guidance, *cb.GUIDANCE_RANGE)
    noise_max = check_float("noise max %", noise_max, *cb.NOISE_RANGE)
    noise_min = check_float("noise min %", noise_min, *cb.NOISE_RANGE)
    if not noise_max > noise_min:
        raise UserError(f"noise max ({noise_max:g} %) must be greater than noise min ({noise_min:g} %)")
    noise_mode = check_choice("noise mode", noise_mode, NOISE_MODES)
    seed = check_int("seed", seed, *cb.SEED_RANGE)
    num_samples = check_int("number of samples", num_samples, *cb.SAMPLES_RANGE)
    set_a = set_a_of(state)
    masks, how = {}, "without steering (no point selected: set A is empty)"
    if set_a:
        set_b = None
        if mode == "add":
            selected_class = None if state.selected is None else int(md.metadata.class_label[state.selected])
            set_b = iv.reference_set(vis, state.model, reference, set_b_of(state), selected_class)
        masks = iv.intervention_masks(vis, state.model, layers, set_a, mode, set_b, progress)
        what = (f"held at the mean of set A ({len(set_a)} points), α = {alpha:g}" if mode == "blend" else
                f"+ α·(mean A − mean B), A = {len(set_a)} points, B = {reference}, α = {alpha:g}")
        how = f"**{', '.join(layers)}** {what}, noise {window[0]:g}–{window[1]:g} %"
    kwargs = dict(model=state.model, layer=state.layer, class_label=label, neighbours=set_a, num_steps=steps,
                  mask_steps=0, alpha=alpha, guidance_scale=guidance, noise_max=noise_max, noise_min=noise_min,
                  noise_mode=noise_mode, seed=seed, num_samples=num_samples, progress=progress, masks=masks,
                  mask_mode=mode, noise_window=window, owner=state.sid)
    return kwargs, set_a, how


def _remember(vis: GradioVisualizer, state: Session, records) -> Session:
    """Add generation ids to the session (the store drops the session's own oldest beyond its
    quota, and so does the session's list beyond its limit) and show the last."""
    dropped = {g for r in records for g in r.dropped}
    ids = tuple(g for g in (*state.generations, *(r.id for r in records)) if g not in dropped)
    if len(ids) > cb.MAX_GENERATIONS_PER_SESSION:
        vis.generations.discard(ids[:-cb.MAX_GENERATIONS_PER_SESSION])
        ids = ids[-cb.MAX_GENERATIONS_PER_SESSION:]
    last = records[-1]
    return replace(state, generations=ids, active=last.id, frame=last.num_steps - 1)


@guarded
def steer(vis: GradioVisualizer, state: Session, class_choice, steps, window_from, window_to, mode, alpha, layers,
          reference, guidance, noise_max, noise_min, noise_mode, seed, num_samples, progress=gr.Progress()):
    """Generate with the intervention; the status says where the result landed."""
    t0 = time.perf_counter()
    kwargs, set_a, how = _generation_kwargs(vis, state, class_choice, steps, window_from, window_to, mode, alpha,
                                            layers, reference, guidance, noise_max, noise_min, noise_mode, seed,
                                            num_samples, progress)
    rec = vis.generate(**kwargs)
    state = _remember(vis, state, [rec])
    landed = iv.landing_text(vis, rec, iv.landing(vis, rec, set_a))
    status = (f"Generated {kwargs['num_samples']} × class **{rec.class_name}**, {kwargs['num_steps']} steps, {how}; "
              f"{time.perf_counter() - t0:.2f} s.  \n{landed}")
    return state, {**cb._view(vis, state, status), **cb._generation(vis, state)}


def parse_values(text, over: str, mode: str, window_to: float) -> list[float]:
    """The sweep's values: numbers separated by commas or spaces, each within its range."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("sweep values: give 2 to 12 numbers separated by commas, e.g. 0, 0.5, 1")
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not SWEEP_VALUES[0] <= len(parts) <= SWEEP_VALUES[1]:
        raise UserError(f"a sweep takes {SWEEP_VALUES[0]} to {SWEEP_VALUES[1]} values, got {len(parts)}")
    lo, hi = ALPHA_RANGES[mode] if over == "alpha" else (0.0, window_to)
    name = f"{mode} strength α" if over == "alpha" else "window from % (≤ window to %)"
    return [check_float(f"sweep value ({name})", p, lo, hi) for p in parts]


def _target_class(vis: GradioVisualizer, model: str, set_a: list[int]) -> int | None:
    """Set A's majority class: the class a sweep's 'landed share' counts."""
    if not set_a:
        return None
    return int(np.bincount(vis.model(model).metadata.class_label[set_a]).argmax())


def sweep_chart(rows: list[dict], over: str, target_name: str | None) -> go.Figure:
    """Landed share in set A's class and distance to set A against the swept value."""
    x = [r["value"] for r in rows]
    fig = go.Figure()
    if target_name is not None:
        fig.add_trace(go.Scatter(x=x, y=[100 * r["landed_share"] for r in rows], mode="lines+markers",
                                 name=f"landed in {target_name} (%)", line={"color": "#D62728"}))
        fig.add_trace(go.Scatter(x=x, y=[r["distance_to_a"] for r in rows], mode="lines+markers", yaxis="y2",
                                 name="distance to set A", line={"color": "#1F77B4", "dash": "dot"}))
    fig.update_layout(height=260, margin={"l": 40, "r": 40, "t": 30, "b": 36}, plot_bgcolor="#FFFFFF",
                      title={"text": "Where the sweep landed", "font": {"size": 13}},
                      xaxis={"title": {"text": SWEEP_LABELS[over]}, "showgrid": True, "gridcolor": "#EEEEEE"},
                      yaxis={"title": {"text": "landed %"}, "range": [-5, 105], "gridcolor": "#EEEEEE"},
                      yaxis2={"title": {"text": "distance"}, "overlaying": "y", "side": "right", "showgrid": False},
                      legend={"orientation": "h", "y": -0.3})
    return fig


@guarded
def sweep(vis: GradioVisualizer, state: Session, class_choice, steps, window_from, window_to, mode, alpha, layers,
          reference, guidance, noise_max, noise_min, noise_mode, seed, num_samples, over, values,
          progress=gr.Progress()):
    """One generation per value of ``over`` (α or the window's from %), same seed: a labelled
    grid, every trajectory on the map, and a chart of where they landed."""
    t0 = time.perf_counter()
    over = check_choice("sweep over", over, iv.SWEEP_OVER)
    kwargs, set_a, how = _generation_kwargs(vis, state, class_choice, steps, window_from, window_to, mode, alpha,
                                            layers, reference, guidance, noise_max, noise_min, noise_mode, seed,
                                            num_samples, progress)
    if not set_a:
        raise UserError("a sweep steers towards set A: select a point (and neighbours) first")
    values = parse_values(values, over, kwargs["mask_mode"], kwargs["noise_window"][1])
    records = iv.run_sweep(vis, over, values, kwargs, progress)
    state = _remember(vis, state, records)
    state = replace(state, sweep=tuple(r.id for r in records))
    target = _target_class(vis, state.model, set_a)
    rows = iv.sweep_rows(vis, records, set_a, target)
    md = vis.model(state.model)
    label = SWEEP_LABELS[over]
    grid = [(rec.final_image(), f"{label} = {row['value']:g} · landed {', '.join(row['landed'])}")
            for rec, row in zip(records, rows)]
    shares = ", ".join(f"{row['value']:g}: {100 * row['landed_share']:.0f} %" for row in rows)
    status = (f"Sweep over {label} ({len(values)} values, seed {kwargs['seed']}), {how}; landed in set A's class "
              f"**{md.class_name(target)}**: {shares}; {time.perf_counter() - t0:.2f} s.")
    return state, {**cb._view(vis, state, status), **cb._generation(vis, state), "sweep_gallery": grid,
                   "sweep_chart": sweep_chart(rows, over, md.class_name(target))}


@guarded
def export_sweep(vis: GradioVisualizer, state: Session):
    records = [vis.generations.get(g) for g in state.sweep]
    if not records or any(r is None for r in records):
        raise UserError("no sweep to export: run a sweep first (or it is no longer stored)")
    set_a = records[0].neighbours
    rows = iv.sweep_rows(vis, records, set_a, _target_class(vis, records[0].model, set_a))
    path = iv.export_sweep(vis, records, rows)
    return state, {"export_file": str(path), "status": f"Exported the sweep ({len(records)} values) to {path.name}."}


# ---- neighbours ----------------------------------------------------------------------------------

@guarded
def suggest_knn(vis: GradioVisualizer, state: Session, k, space="map"):
    """``callbacks.suggest_knn``, and how many of those neighbours the other space agrees on."""
    state, out = cb.suggest_knn(vis, state, k, space)
    if state.knn and "status" in out and not out["status"].startswith("**Error:**"):
        agreement = knn_agreement(vis, state.model, state.layer, state.view, state.selected, len(state.knn))
        out["status"] += "  \n" + agreement_text(agreement, space)
    return state, out
