"""Event handlers: plain functions ``(visualizer, state, inputs...) -> (new_state, outputs)``.

``state`` is the session's ``Session`` (kept in ``gr.State``: names and indices only);
``outputs`` is a dict from output name (see ``OUTPUTS``) to the new value; an output not
in the dict is left unchanged. Everything the browser sends is validated here: model and
layer names against the discovered set, point indices against the map, parameters
against their ranges (the message names the allowed range). A bad value or a failure
never reaches the user as a traceback: the handler returns the state unchanged and the
message in ``status``. No handler reads a path that came from the client, and no message
shows a server path or a stack: unexpected failures say only their type (the log has the rest).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass, fields, replace

import gradio as gr
import numpy as np

from ..backends.protocol import NOISE_MODES, BackendUnavailable
from ..data.layout import DataLayoutError
from .figures import Overlays
from .honesty import step_note, trajectory_flags
from .models import VIEWS
from .regions import RegionError, parse_region, rows_in_region
from .visualizer import GradioVisualizer

log = logging.getLogger(__name__)

#: every output a handler may set, by name (app.py maps them to components)
OUTPUTS = (
    "plot", "overlay", "status", "session_info", "preview_image", "preview_info", "selected_image", "selected_info",
    "neighbor_gallery", "model_dropdown", "layer_dropdown", "view_radio", "class_filter", "gen_class",
    "gen_steps", "gen_mask_steps", "gen_guidance", "gen_noise_max", "gen_noise_min", "generated_image",
    "steps_gallery", "frame_image", "frame_info", "trajectory_dropdown", "export_file",
)

ALL_CLASSES = "All classes"
FROM_SELECTION = "From selected point"
KNN_SPACES = ("map", "activations")
GALLERY_MAX = 60  # neighbours shown in the gallery (all of them are used for generation)
MAX_PAYLOAD_CHARS = 2_000_000
MAX_GENERATIONS_PER_SESSION = 20

# parameter ranges: the UI bounds its fields with these, the handlers check them again
K_RANGE = (1, 50)
STEPS_RANGE = (1, 100)
ALPHA_RANGE = (0.0, 1.0)
GUIDANCE_RANGE = (0.0, 20.0)
NOISE_RANGE = (0.0, 100.0)
SEED_RANGE = (0, 2**31 - 1)
SAMPLES_RANGE = (1, 8)


class UserError(ValueError):
    """A bad value from the browser or a request that cannot be served; shown in ``status``."""


@dataclass(frozen=True)
class Session:
    """One browser session's view: small things only."""

    model: str
    layer: str
    view: str = "2-D"
    selected: int | None = None
    manual: tuple[int, ...] = ()
    knn: tuple[int, ...] = ()
    knn_dist: tuple[float, ...] = ()
    class_filter: int | None = None
    generations: tuple[str, ...] = ()  # generation ids, oldest first
    active: str | None = None
    frame: int | None = None
    set_b: tuple[int, ...] = ()  # reference set B for direction steering (steering.py) ...
    set_b_model: str | None = None  # ... of this model's points
    sweep: tuple[str, ...] = ()  # generation ids of the last sweep, in sweep order
    sid: str | None = None  # this session's id (owner of its generations and exports), set on first use

    def neighbours(self) -> list[int]:
        """Manual neighbours then KNN suggestions, without repeats."""
        return list(dict.fromkeys([*self.manual, *self.knn]))


def initial_session(vis: GradioVisualizer, model: str | None = None) -> Session:
    model = model or vis.default_model
    return Session(model=model, layer=vis.initial_layer(model))


# ---- validation --------------------------------------------------------------------------------

def _number(name: str, value, lo, hi, integer: bool):
    try:
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a number within [{lo}, {hi}], got {value!r:.40}") from None
    if not np.isfinite(number) or not lo <= number <= hi or (integer and number != int(number)):
        kind = "an integer" if integer else "a number"
        raise UserError(f"{name} must be {kind} within [{lo}, {hi}], got {value!r:.40}")
    return int(number) if integer else number


def check_int(name: str, value, lo: int, hi: int) -> int:
    return _number(name, value, lo, hi, integer=True)


def check_float(name: str, value, lo: float, hi: float) -> float:
    return _number(name, value, lo, hi, integer=False)


def check_choice(name: str, value, choices) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value


def check_point(vis: GradioVisualizer, state: Session, index) -> int:
    n = vis.model(state.model).n_points
    return check_int("point index", index, 0, n - 1)


def parse_payload(text, max_points: int) -> tuple[str, list[tuple[int | None, str | None]]]:
    """The plot bridge's JSON: ``{"kind": "hover"|"click"|"select", "points": [{"i": index, "m": meta}]}``."""
    kind, points, _ = parse_event(text, max_points)
    return kind, points


def parse_event(text, max_points: int) -> tuple[str, list[tuple[int | None, str | None]], tuple | None]:
    """``parse_payload`` plus the region of a box/lasso selection: ``(kind, points, region)``,
    region ``regions.parse_region``'s ``(kind, shape)`` when the event carries a ``"region"``
    (the page's bridge sends that instead of the selected points), else None."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("empty plot event")
    if len(text) > MAX_PAYLOAD_CHARS:
        raise UserError(f"plot event too large ({len(text)} characters; at most {MAX_PAYLOAD_CHARS})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"plot event is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UserError("plot event is nested too deeply to be a plot event") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise UserError("plot event must be an object with a 'points' list")
    kind = check_choice("plot event kind", data.get("kind"), ("hover", "click", "select"))
    if len(data["points"]) > max_points:
        raise UserError(f"plot event has {len(data['points'])} points; the map has {max_points}")
    points = []
    for p in data["points"]:
        if not isinstance(p, dict):
            raise UserError("each point of a plot event must be an object")
        i, m = p.get("i"), p.get("m")
        if isinstance(i, list) and len(i) == 1:  # plotly may wrap customdata
            i = i[0]
        if i is not None and (isinstance(i, bool) or not isinstance(i, (int, float))):
            raise UserError(f"point index must be a number, got {i!r}")
        if m is not None and not isinstance(m, str):
            raise UserError(f"point meta must be a string, got {m!r}")
        points.append((None if i is None else i, m))
    region = None
    if data.get("region") is not None:
        if kind != "select":
            raise UserError(f"only a select event has a region, not a {kind} event")
        try:
            region = parse_region(data["region"])
        except RegionError as exc:
            raise UserError(f"bad selection region: {exc}") from None
    return kind, points, region


def user_message(vis: GradioVisualizer, exc: BaseException, where: str) -> str:
    """What the user is told about ``exc``: its message for user-facing errors (data-folder
    paths shortened), a "try again" for timeouts, and only the type name otherwise (a worker's
    stderr, a stack or a server path never reach the page; the log has them)."""
    if isinstance(exc, (UserError, DataLayoutError, FileNotFoundError, BackendUnavailable, ValueError, KeyError,
                        IndexError)):
        shown = isinstance(exc, (UserError, DataLayoutError, FileNotFoundError, BackendUnavailable)) or not exc.args
        message = str(exc) if shown else str(exc.args[0])
        for root in {str(vis.data_dir.resolve()), str(vis.data_dir)}:
            message = message.replace(root + "/", "").replace(root, "the data folder")
        return message or type(exc).__name__
    log.error("handler %s failed", where, exc_info=exc)
    if isinstance(exc, TimeoutError):
        return "the server is busy or the model took too long; try again in a moment"
    if isinstance(exc, RecursionError):
        return "the request is nested too deeply"
    return f"internal error ({type(exc).__name__}); the server log has the details"


def error_output(message: str) -> dict:
    return {"status": f"**Error:** {message}"}


def guarded(fn):
    """Run a handler; a bad value or failure becomes a message in ``status``, state unchanged.
    The session gets its id on first use, and the layer it shows is noted (the disk budget
    spares it)."""

    @functools.wraps(fn)
    def wrapper(vis, state, *args, **kwargs):
        if state is None:
            state = initial_session(vis)
        if state.sid is None:
            state = replace(state, sid=uuid.uuid4().hex)
        t0 = time.perf_counter()
        try:
            new_state, out = fn(vis, state, *args, **kwargs)
            log.debug("%s: %.1f ms", fn.__name__, 1000 * (time.perf_counter() - t0))
            vis.note_shown(new_state.sid, new_state.model, new_state.layer)
            return new_state, out
        except Exception as exc:  # noqa: BLE001 - the app must keep serving; the log has the traceback
            return state, error_output(user_message(vis, exc, fn.__name__))

    return wrapper


# ---- output helpers ----------------------------------------------------------------------------

#: entries of a point list shown in the session panel (session_info)
SESSION_LIST_MAX = 5000


def session_info(vis: GradioVisualizer, state: Session) -> dict:
    """The session panel: the state as JSON. Point lists show their first ``SESSION_LIST_MAX``
    entries (``n_neighbours`` / ``n_set_b`` count them all): the browser copies the panel's value on
    every event, ~1.5 ms per thousand entries, and a box on a dense map adds thousands."""
    md = vis.model(state.model)
    info = {f.name: list(v[:SESSION_LIST_MAX]) if isinstance(v := getattr(state, f.name), tuple) else v
            for f in fields(state)}
    info["class_filter"] = None if state.class_filter is None else md.class_name(state.class_filter)
    info.update(n_points=md.n_points, layers=md.hookable_layers, models=vis.model_names,
                neighbours=list(state.manual[:SESSION_LIST_MAX]), n_neighbours=len(state.manual),
                n_set_b=len(state.set_b), generations=list(state.generations))
    info.pop("manual")
    info.pop("sid")
    return info


def _visible_generations(vis: GradioVisualizer, state: Session) -> list:
    records = [vis.generations.get(g) for g in state.generations]
    return [r for r in records if r is not None and r.model == state.model and r.layer == state.layer]


def overlays(vis: GradioVisualizer, state: Session) -> Overlays:
    """What ``state`` draws over the map (a feature adding overlay traces adds them here)."""
    records = _visible_generations(vis, state)
    return Overlays(selected=state.selected, manual=state.manual, knn=state.knn, trajectories=records,
                    active=state.active, frame=state.frame,
                    set_b=state.set_b if state.set_b_model == state.model else (),
                    flagged={r.id: [(f["extrapolated"], f["reason"]) for f in trajectory_flags(vis, r)]
                             for r in records})


def figure(vis: GradioVisualizer, state: Session):
    """The full figure (points and overlays) of ``state``: sent when the base changes."""
    return vis.figure(state.model, state.layer, state.view, state.class_filter, overlays(vis, state))


def overlay(vis: GradioVisualizer, state: Session) -> str:
    """The overlay message of ``state`` (JSON, see ``figures.overlay_payload``): sent on every change."""
    return vis.overlay(state.model, state.layer, state.view, state.class_filter, overlays(vis, state))


def _view(vis, state: Session, status: str | None = None, redraw: bool = False) -> dict:
    """The plot outputs: the overlay message, and the full figure when ``redraw`` (the base
    changed: model, layer, view or class filter); otherwise the drawn points stay as they are."""
    out = {"overlay": overlay(vis, state), "session_info": session_info(vis, state)}
    if redraw:
        out["plot"] = figure(vis, state)
    if status is not None:
        out["status"] = status
    return out


def _selection(vis: GradioVisualizer, state: Session) -> dict:
    md = vis.model(state.model)
    if state.selected is None:
        selected_image, selected_info = None, "No point selected. Click a point on the map."
    else:
        selected_image = md.preview(state.selected)
        selected_info = vis.point_info(state.model, state.layer, state.view, state.selected)
    return {"selected_image": selected_image, "selected_info": selected_info, **_gallery(vis, state)}


def _gallery(vis: GradioVisualizer, state: Session) -> dict:
    """The neighbour gallery: the first ``GALLERY_MAX`` manual neighbours, then KNN suggestions."""
    md = vis.model(state.model)
    m = md.metadata
    rows, captions = [], []
    for i in state.manual[:GALLERY_MAX]:
        rows.append(i)
        captions.append(f"#{i} · {md.class_name(int(m.class_label[i]))} · {m.noise_level[i]:.0f}%")
    manual = set(state.manual)
    for i, d in zip(state.knn, state.knn_dist):
        if i not in manual and len(rows) < GALLERY_MAX:
            rows.append(i)
            captions.append(f"#{i} · {md.class_name(int(m.class_label[i]))} · d={d:.3g}")
    return {"neighbor_gallery": vis.gallery(state.model, rows, captions)}


def _generation(vis: GradioVisualizer, state: Session) -> dict:
    records = _visible_generations(vis, state)
    choices = [(r.label, r.id) for r in records]
    rec = vis.generations.get(state.active) if state.active else None
    if rec is None or rec.model != state.model or rec.layer != state.layer:
        return {"trajectory_dropdown": gr.update(choices=choices, value=None), "generated_image": None,
                "steps_gallery": [], "frame_image": None, "frame_info": ""}
    r = rec.result
    unit = vis.model(rec.model).noise_symbol
    steps = [(rec.step_image(s, 0), f"step {s + 1} · {r.noise_levels[s]:.0f}% · {unit}={r.sigmas[s]:.3g}")
             for s in range(rec.num_steps)]
    out = {"trajectory_dropdown": gr.update(choices=choices, value=rec.id), "generated_image": rec.final_image(),
           "steps_gallery": steps}
    out.update(_frame(vis, state, rec))
    return out


def _frame(vis, state: Session, rec) -> dict:
    s = rec.num_steps - 1 if state.frame is None else state.frame
    r = rec.result
    unit = vis.model(rec.model).noise_symbol
    return {"frame_image": rec.frame_image(s),
            "frame_info": f"step **{s + 1}/{rec.num_steps}** · noise {r.noise_levels[s]:.1f} % · "
                          f"{unit} = {r.sigmas[s]:.4g} · denoised estimate (inset: noised input)"}


def _active_record(vis, state: Session):
    rec = vis.generations.get(state.active) if state.active else None
    if rec is None:
        raise UserError("no generation to show: generate first (or pick one from the trajectory list)")
    return rec


# ---- hover and plot events ---------------------------------------------------------------------

def hover(vis: GradioVisualizer, state: Session | None, payload) -> dict:
    """Preview of the hovered point (or trajectory step). Returns outputs only: hover never changes state."""
    state = state or initial_session(vis)
    try:
        md = vis.model(state.model)
        kind, points = parse_payload(payload, md.n_points)
        if not points:
            return {}
        index, meta = points[0]
        if meta and meta.startswith("traj:"):
            rec, sample, step = _trajectory_point(vis, state, meta, index)
            image, info = vis.trajectory_preview(rec, sample, step)
            return {"preview_image": image, "preview_info": f"{info}  \n{step_note(vis, rec, sample, step)}"}
        index = check_point(vis, state, index)
        return {"preview_image": md.preview(index),
                "preview_info": vis.point_info(state.model, state.layer, state.view, index)}
    except Exception as exc:  # noqa: BLE001 - hover must never break the page
        return {"preview_info": f"**Error:** {user_message(vis, exc, 'hover')}"}


def _trajectory_point(vis, state: Session, meta: str, step) -> tuple:
    parts = meta.split(":")
    if len(parts) != 3 or parts[1] not in state.generations:
        raise UserError(f"unknown trajectory {meta!r} for this session")
    rec = vis.generations.get(parts[1])
    if rec is None:
        raise UserError("that generation is no longer stored; generate again")
    sample = check_int("trajectory sample", parts[2], 0, rec.num_samples - 1)
    return rec, sample, check_int("trajectory step", step, 0, rec.num_steps - 1)


@guarded
def plot_event(vis: GradioVisualizer, state: Session, payload, neighbour_mode: bool = False):
    """A click or box/lasso selection on the map, as sent by the plot bridge."""
    md = vis.model(state.model)
    kind, points, region = parse_event(payload, md.n_points + 10_000)
    if kind == "hover":
        raise UserError("hover events go to the hover handler")
    if region is not None:
        return _add_region(vis, state, region)
    if kind == "select":
        indices = [i for i, m in points if m in (None, "pts", "ring") and i is not None]
        if not indices:
            return state, {}  # plotly sends an empty selection when a selection is cleared
        return select_region(vis, state, indices)
    if not points:
        return state, {}
    index, meta = points[0]
    if meta and meta.startswith("traj:"):
        rec, _, step = _trajectory_point(vis, state, meta, index)
        return show_frame(vis, replace(state, active=rec.id), step)
    return select_point(vis, state, index, neighbour_mode)


@guarded
def select_point(vis: GradioVisualizer, state: Session, index, neighbour_mode: bool = False):
    """Select ``index`` (red ring), or, in neighbour mode with a point selected, add/remove it
    as a manual neighbour (cyan ring)."""
    index = check_point(vis, state, index)
    if neighbour_mode and state.selected is not None:
        if index == state.selected:
            raise UserError(f"#{index} is the selected point; click another point to add it as a neighbour")
        if index in state.manual:
            manual = tuple(i for i in state.manual if i != index)
            status = f"Removed #{index} from the neighbours ({len(manual)} left)."
        else:
            manual = (*state.manual, index)
            status = f"Added #{index} as a neighbour ({len(manual)} in all)."
        state = replace(state, manual=manual)
    else:
        state = replace(state, selected=index, manual=(), knn=(), knn_dist=())
        md = vis.model(state.model)
        status = (f"Selected #{index} (class {md.class_name(int(md.metadata.class_label[index]))}). "
                  "Suggest neighbours with KNN, or tick 'Click adds/removes neighbours' and click points.")
    return state, {**_view(vis, state, status), **_selection(vis, state)}


@guarded
def select_region(vis: GradioVisualizer, state: Session, indices):
    """Box or lasso selection: every point inside becomes a manual neighbour."""
    n = vis.model(state.model).n_points
    if not isinstance(indices, (list, tuple)) or not indices:
        raise UserError("a region selection needs at least one point")
    rows = [check_int("point index", i, 0, n - 1) for i in indices]
    return _add_neighbours(vis, state, rows)


def _add_region(vis: GradioVisualizer, state: Session, region: tuple[str, np.ndarray]):
    """A box or lasso drawn on the 2-D map (``regions.parse_region``'s form): the points inside
    become manual neighbours; an empty region changes nothing."""
    if state.view != "2-D":
        raise UserError("box/lasso selection works on the 2-D map only")
    try:
        rows = rows_in_region(vis.layer(state.model, state.layer).coords("2-D"), *region)
    except RegionError as exc:
        raise UserError(f"bad selection region: {exc}") from None
    if rows.size == 0:
        return state, {"status": "No point inside the drawn region."}
    return _add_neighbours(vis, state, rows.tolist())


def _add_neighbours(vis: GradioVisualizer, state: Session, rows: list[int]):
    """``rows`` not yet among the manual neighbours (nor the selected point) join them; the
    selected point's panel is unchanged, and the gallery is sent only when its rows change."""
    known = set(state.manual)
    if state.selected is not None:
        known.add(state.selected)
    added = [i for i in dict.fromkeys(rows) if i not in known]
    old, state = state, replace(state, manual=(*state.manual, *added))
    shown = state.neighbours()
    more = f" (the gallery shows the first {GALLERY_MAX})" if len(shown) > GALLERY_MAX else ""
    status = f"Added {len(added)} point(s) from the region as neighbours ({len(state.manual)} in all){more}."
    out = _view(vis, state, status)
    if shown[:GALLERY_MAX] != old.neighbours()[:GALLERY_MAX]:
        out.update(_gallery(vis, state))
    return state, out


@guarded
def suggest_knn(vis: GradioVisualizer, state: Session, k, space="map"):
    """The k nearest neighbours of the selected point (lime ring), on the map or in activation space."""
    if state.selected is None:
        raise UserError("select a point first (click it on the map), then suggest its neighbours")
    k = check_int("k", k, *K_RANGE)
    space = check_choice("distance space", space, KNN_SPACES)
    t0 = time.perf_counter()
    idx, dist = vis.neighbours(state.model, state.layer, state.view, state.selected, k, space)
    state = replace(state, knn=tuple(int(i) for i in idx), knn_dist=tuple(float(d) for d in dist))
    status = (f"{k} nearest neighbours of #{state.selected} by {space} distance "
              f"({dist.min():.3g}–{dist.max():.3g}; {1000 * (time.perf_counter() - t0):.1f} ms).")
    return state, {**_view(vis, state, status), **_selection(vis, state)}


@guarded
def clear_selection(vis: GradioVisualizer, state: Session):
    state = replace(state, selected=None, manual=(), knn=(), knn_dist=())
    return state, {**_view(vis, state, "Selection and neighbours cleared."), **_selection(vis, state)}


@guarded
def filter_class(vis: GradioVisualizer, state: Session, class_name):
    md = vis.model(state.model)
    class_name = check_choice("class", class_name, [ALL_CLASSES, *md.class_names])
    if class_name == ALL_CLASSES:
        state = replace(state, class_filter=None)
        status = f"All {len(md.class_names)} classes shown ({md.n_points} points)."
    else:
        label = md.class_names.index(class_name)
        count = int(np.count_nonzero(md.metadata.class_label == label))
        levels = len(md.noise_levels)
        state = replace(state, class_filter=label)
        status = (f"Class **{class_name}**: {count} points ({count // max(levels, 1)} samples × "
                  f"{levels} noise levels).")
    return state, _view(vis, state, status, redraw=True)


# ---- model, layer and view -------------------------------------------------------------------

def _defaults(vis: GradioVisualizer, model: str) -> dict:
    md = vis.model(model)
    c = md.config
    steps = int(np.clip(c["default_steps"], *STEPS_RANGE))
    return {
        "class_filter": gr.update(choices=[ALL_CLASSES, *md.class_names], value=ALL_CLASSES),
        "gen_class": gr.update(choices=[FROM_SELECTION, *md.class_names], value=FROM_SELECTION),
        "gen_steps": steps, "gen_mask_steps": min(steps, max(1, steps // 2)),
        "gen_guidance": float(np.clip(c["default_guidance"], *GUIDANCE_RANGE)),
        "gen_noise_max": float(np.clip(c["noise_max"], *NOISE_RANGE)),
        "gen_noise_min": float(np.clip(c["noise_min"], *NOISE_RANGE)),
    }


def _latest_generation(vis, state: Session) -> str | None:
    records = _visible_generations(vis, state)
    return records[-1].id if records else None


@guarded
def switch_model(vis: GradioVisualizer, state: Session, model, progress=gr.Progress()):
    model = check_choice("model", model, vis.model_names)
    if model == state.model:
        return state, {}  # already shown (a dropdown may report the same choice twice)
    t0 = time.perf_counter()
    progress(0.05, desc=f"Loading model {model}")
    layer = vis.initial_layer(model)
    built = vis.layer_is_built(model, layer)
    vis.ensure_view(model, layer, state.view, progress)
    state = replace(state, model=model, layer=layer, selected=None, manual=(), knn=(), knn_dist=(),
                    class_filter=None, active=None, frame=None)
    state = replace(state, active=_latest_generation(vis, state))
    how = "" if built else " (layer extracted and mapped now, cached on disk)"
    status = f"Model **{model}**, layer **{layer}**: {vis.model(model).n_points} points{how}; " \
             f"{time.perf_counter() - t0:.2f} s."
    return state, {**_defaults(vis, model), "model_dropdown": gr.update(value=model),
                   "layer_dropdown": gr.update(choices=vis.model(model).hookable_layers, value=layer),
                   **_view(vis, state, status, redraw=True), **_selection(vis, state), **_generation(vis, state)}


@guarded
def switch_layer(vis: GradioVisualizer, state: Session, layer, progress=gr.Progress()):
    """Show another layer; a layer never mapped before is extracted and mapped now (with progress)."""
    layer = check_choice("layer", layer, vis.layers(state.model))
    if layer == state.layer:
        return state, {}
    t0 = time.perf_counter()
    built = vis.layer_is_built(state.model, layer)
    progress(0.0, desc=f"Loading layer {layer}" if built else f"Layer {layer} is new: extracting and mapping")
    vis.ensure_view(state.model, layer, state.view, progress)
    state = replace(state, layer=layer, knn=(), knn_dist=(), frame=None)
    state = replace(state, active=_latest_generation(vis, state))
    how = "loaded from cache" if built else "extracted and mapped now, cached on disk"
    status = f"Layer **{layer}** {how} in {time.perf_counter() - t0:.2f} s."
    return state, {"layer_dropdown": gr.update(value=layer), **_view(vis, state, status, redraw=True),
                   **_selection(vis, state), **_generation(vis, state)}


@guarded
def switch_view(vis: GradioVisualizer, state: Session, view, progress=gr.Progress()):
    view = check_choice("view", view, VIEWS)
    if view == state.view:
        return state, {}
    t0 = time.perf_counter()
    vis.ensure_view(state.model, state.layer, view, progress)
    state = replace(state, view=view)
    status = f"{view} view of layer **{state.layer}** ({time.perf_counter() - t0:.2f} s)."
    if view == "3-D":
        status += " The noise levels are stacked along z; box/lasso selection is 2-D only."
    return state, {"view_radio": gr.update(value=view), **_view(vis, state, status, redraw=True),
                   **_selection(vis, state)}


# ---- generation --------------------------------------------------------------------------------

@guarded
def generate(vis: GradioVisualizer, state: Session, class_choice, steps, mask_steps, alpha, guidance,
             noise_max, noise_min, noise_mode, seed, num_samples, progress=gr.Progress()):
    """Generate from the neighbours: the current layer is held at their mean activation for
    the first ``mask_steps`` steps; the trajectory is drawn on the map."""
    md = vis.model(state.model)
    class_choice = check_choice("class", class_choice, [FROM_SELECTION, *md.class_names])
    if class_choice == FROM_SELECTION:
        if state.selected is None:
            raise UserError("no point selected to take the class from: select a point or choose a class")
        label = int(md.metadata.class_label[state.selected])
    else:
        label = md.class_names.index(class_choice)
    steps = check_int("steps", steps, *STEPS_RANGE)
    mask_steps = check_int("mask steps", mask_steps, 0, steps)
    alpha = check_float("alpha", alpha, *ALPHA_RANGE)
    guidance = check_float("guidance", guidance, *GUIDANCE_RANGE)
    noise_max = check_float("noise max %", noise_max, *NOISE_RANGE)
    noise_min = check_float("noise min %", noise_min, *NOISE_RANGE)
    if not noise_max > noise_min:
        raise UserError(f"noise max ({noise_max:g} %) must be greater than noise min ({noise_min:g} %)")
    noise_mode = check_choice("noise mode", noise_mode, NOISE_MODES)
    seed = check_int("seed", seed, *SEED_RANGE)
    num_samples = check_int("number of samples", num_samples, *SAMPLES_RANGE)
    neighbours = state.neighbours()
    t0 = time.perf_counter()
    rec = vis.generate(state.model, state.layer, label, neighbours, num_steps=steps, mask_steps=mask_steps,
                       alpha=alpha, guidance_scale=guidance, noise_max=noise_max, noise_min=noise_min,
                       noise_mode=noise_mode, seed=seed, num_samples=num_samples, progress=progress,
                       owner=state.sid)
    ids = tuple(g for g in (*state.generations, rec.id) if g not in rec.dropped)[-MAX_GENERATIONS_PER_SESSION:]
    state = replace(state, generations=ids, active=rec.id, frame=rec.num_steps - 1)
    how = (f"masked at **{state.layer}** by the mean of {len(neighbours)} neighbour(s) for {mask_steps} step(s)"
           if neighbours and mask_steps else "without masking (no neighbours selected)" if not neighbours
           else "without masking (mask steps = 0)")
    status = (f"Generated {num_samples} × class **{rec.class_name}**, {steps} steps, {how}; "
              f"{time.perf_counter() - t0:.2f} s.")
    return state, {**_view(vis, state, status), **_generation(vis, state)}


@guarded
def show_frame(vis: GradioVisualizer, state: Session, frame):
    rec = _active_record(vis, state)
    frame = check_int("frame", frame, 0, rec.num_steps - 1)
    state = replace(state, frame=frame)
    return state, {**_view(vis, state), **_frame(vis, state, rec)}


@guarded
def step_frame(vis: GradioVisualizer, state: Session, delta):
    """◀ / ▶: the previous or next denoising step of the shown generation."""
    rec = _active_record(vis, state)
    delta = check_int("frame step", delta, -rec.num_steps, rec.num_steps)
    current = rec.num_steps - 1 if state.frame is None else state.frame
    return show_frame(vis, state, int(np.clip(current + delta, 0, rec.num_steps - 1)))


@guarded
def choose_trajectory(vis: GradioVisualizer, state: Session, gen_id):
    if not isinstance(gen_id, str) or gen_id not in state.generations or vis.generations.get(gen_id) is None:
        raise UserError(f"unknown generation {gen_id!r}; pick one from the trajectory list")
    rec = vis.generations.get(gen_id)
    if (rec.model, rec.layer) != (state.model, state.layer):
        raise UserError(f"generation {gen_id[:6]} belongs to {rec.model}/{rec.layer}; switch there to see it")
    state = replace(state, active=gen_id, frame=rec.num_steps - 1)
    return state, {**_view(vis, state), **_generation(vis, state)}


@guarded
def clear_trajectories(vis: GradioVisualizer, state: Session):
    vis.generations.discard(state.generations)
    n = len(state.generations)
    state = replace(state, generations=(), active=None, frame=None)
    return state, {**_view(vis, state, f"Cleared {n} generation(s) and their trajectories."),
                   **_generation(vis, state)}


# ---- export ------------------------------------------------------------------------------------

@guarded
def export_selection(vis: GradioVisualizer, state: Session):
    if state.selected is None and not state.neighbours():
        raise UserError("nothing to export: select a point or neighbours first")
    path = vis.export_selection(state.model, state.layer, state.selected, state.manual, state.knn, state.knn_dist,
                                owner=state.sid)
    return state, {"export_file": str(path), "status": f"Exported the selection to {path.name}."}


@guarded
def export_generation(vis: GradioVisualizer, state: Session):
    rec = _active_record(vis, state)
    path = vis.export_generation(rec, owner=state.sid)
    return state, {"export_file": str(path), "status": f"Exported generation {rec.id[:6]} to {path.name}."}
