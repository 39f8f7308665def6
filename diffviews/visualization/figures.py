"""The map as a Plotly figure (sent once per base) and its overlays (sent on every change).

The *base* of a figure is the point cloud of one (model, layer, view, class filter): float32 /
int32 typed arrays (base64, as plotly.js decodes them) carrying only the point index
(``customdata``), one trace per class and opacity band (``meta == "pts"``; the legend shows
one entry per class). Its encoded traces are cached on the ``LayerData``; the browser gets
them once, in the ``gr.Plot`` value (``build_figure``).

Everything drawn over the points is an *overlay*: a list of small named Plotly traces
(``meta != "pts"``): the selection and neighbour rings, the KNN rings, trajectories, and
whatever a feature adds through ``Overlays.extra`` (e.g. a reference set drawn with
``ring_trace``) or ``Overlays.trajectory_markers`` (per-step marker styles of a trajectory).
``overlay_payload`` turns them into a small JSON message, which the page's overlay script
(``overlay.js``) applies to the plot already drawn, so a click never resends the points.

On a 2-D map the *marks* (``is_mark``: the rings and the frame marker, which sit on points
the map already has) are painted on a canvas over the plot area, never given to Plotly: a
new selection or KNN set repaints the canvas and leaves the WebGL points alone (Plotly
recalculates every trace on a ``react``: 0.5 s at 100k points, seconds at 1M); a ring goes in
the message without its x/y (the page looks its points up in the drawn base). The other
overlay traces (trajectories, with their hover and click) are Plotly traces, swapped in place
with ``Plotly.react`` only when they change (the message's ``plotted`` id). ``build_figure``
bakes those same Plotly overlays into a full figure (its ``layout.meta`` names both ids), so a
base change (new layer, view, class filter) and its overlays arrive together; its marks come
with the overlay message sent alongside. In 3-D every overlay is a Plotly trace.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .generations import GenerationRecord
from .models import LayerData, ModelData

__all__ = ["PlotFigure", "Overlays", "build_figure", "overlay_traces", "overlay_payload", "base_key", "ring_trace",
           "is_mark", "map_title", "class_color", "CLASS_COLORS"]

CLASS_COLORS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22",
                "#17BECF", "#D62728", "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD")
RING_SELECTED, RING_MANUAL, RING_KNN, RING_FRAME = "#FF0000", "#00D5FF", "#7CFC00", "#FF00FF"
RING_SET_B = "#FF8C00"  # reference set B of direction steering (dark orange squares)
TRAJ_ACTIVE, TRAJ_OTHER = "#FF4500", "#505050"
#: marker opacity (2-D) and size (3-D) from the lowest to the highest noise level
OPACITY_RANGE, SIZE_RANGE_3D = (0.95, 0.3), (5.0, 2.0)
DIM_OPACITY = 0.07
PLOT_HEIGHT = 620
#: noise levels are drawn in at most this many opacity (3-D: size) bands, each a trace with one
#: scalar opacity: per-point opacity arrays make plotly's scattergl redraw 5-10x slower at 1M points
MAX_BANDS = 8
#: 2-D marker size (px) by map size: (at most this many points, size). Dense maps get smaller markers: they
#: overlap less, and the software WebGL of a browser without a GPU draws them faster (at 100k points in
#: headless Chromium, size 4 instead of 6 shortens the first draw by ~0.2 s)
POINT_SIZES = ((20_000, 6), (200_000, 4), (None, 3))
#: rings with more points than this are WebGL (``scattergl``) rather than SVG markers
GL_RING_POINTS = 1000


class PlotFigure:
    """A Plotly figure as a JSON string, handed to ``gr.Plot`` as is (no re-encoding)."""

    def __init__(self, json_text: str):
        self.json = json_text

    def to_json(self) -> str:  # what gr.Plot calls for Plotly-style figures
        return self.json

    def to_plotly_json(self) -> dict:
        return json.loads(self.json)


def _typed(arr: np.ndarray, dtype: str) -> dict:
    """A plotly.js typed-array spec (little-endian base64)."""
    a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": np.dtype(dtype).str.lstrip("<|"), "bdata": base64.b64encode(a.tobytes()).decode("ascii")}


def point_size(n_points: int) -> int:
    """The 2-D marker size for a map of ``n_points`` points (``POINT_SIZES``)."""
    return next(size for limit, size in POINT_SIZES if limit is None or n_points <= limit)


def class_color(label: int) -> str:
    return CLASS_COLORS[label % len(CLASS_COLORS)]


@dataclass
class Overlays:
    """What one session draws over the map."""

    selected: int | None = None
    manual: Sequence[int] = ()
    knn: Sequence[int] = ()
    trajectories: Sequence[GenerationRecord] = ()
    active: str | None = None  # id of the highlighted trajectory
    frame: int | None = None  # step marked on the active trajectory
    set_b: Sequence[int] = ()  # reference set B (steering)
    #: generation id -> per sample (extrapolated (S,) bool, reason (S,) str) of its trajectory steps
    flagged: Mapping[str, Sequence[tuple[Sequence[bool], Sequence[str]]]] = field(default_factory=dict)
    #: more named overlay traces (plotly trace dicts with a ``name`` and a ``meta`` other than
    #: "pts"; build them with ``ring_trace``), drawn after the trajectories in this order
    extra: Sequence[dict] = ()
    #: generation id -> marker properties merged into its trajectory line's markers; values may
    #: be per-step lists (e.g. ``{"symbol": ["circle", "circle-open", ...]}`` for extrapolated steps)
    trajectory_markers: dict = field(default_factory=dict)


def base_key(md: ModelData, ld: LayerData, view: str, class_filter: int | None) -> str:
    """Names the point cloud the browser has drawn: overlays apply only on the same base."""
    return f"{md.name}/{ld.layer}/{view}/{'all' if class_filter is None else class_filter}/{ld.n_points}"


def _bands(level_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band per point, position 0..1 of each band from the lowest to the highest noise level)."""
    n_levels = max(int(level_rank.max()) + 1, 1) if level_rank.size else 1
    n_bands = min(n_levels, MAX_BANDS)
    band = (level_rank * n_bands // n_levels).astype(np.int64)
    centre = np.array([(b + 0.5) * n_levels / n_bands - 0.5 for b in range(n_bands)])
    return band, centre / max(n_levels - 1, 1)


def _base_traces(md: ModelData, ld: LayerData, view: str, class_filter: int | None) -> list[str]:
    """The encoded point traces, one per (class, noise band), cached per (view, class filter)."""
    key = (view, class_filter)
    cached = ld.figure_cache.get(key)
    if cached is not None:
        return cached
    coords = ld.coords(view)
    labels = md.metadata.class_label
    band, t = _bands(md.level_rank)
    size_2d = point_size(len(labels))
    traces, legend = [], set()
    for k in np.unique(labels):
        dim = class_filter is not None and int(k) != class_filter
        in_class = labels == k
        for b in range(len(t)):
            rows = np.flatnonzero(in_class & (band == b))
            if rows.size == 0:
                continue
            trace = {"name": md.class_name(int(k)), "legendgroup": f"c{int(k)}", "meta": "pts", "mode": "markers",
                     "showlegend": int(k) not in legend,
                     "x": _typed(coords[rows, 0], "f4"), "y": _typed(coords[rows, 1], "f4"),
                     "customdata": _typed(rows, "i4"),
                     "hovertemplate": "class %{fullData.name} · #%{customdata}<extra></extra>"}
            if view == "2-D":
                opacity = DIM_OPACITY if dim else OPACITY_RANGE[0] + (OPACITY_RANGE[1] - OPACITY_RANGE[0]) * t[b]
                trace.update(type="scattergl", marker={"color": class_color(int(k)), "size": size_2d,
                                                       "opacity": round(float(opacity), 3), "line": {"width": 0}})
            else:
                size = SIZE_RANGE_3D[0] + (SIZE_RANGE_3D[1] - SIZE_RANGE_3D[0]) * t[b]
                trace.update(type="scatter3d", z=_typed(coords[rows, 2], "f4"),
                             marker={"color": class_color(int(k)), "size": round(float(size), 2),
                                     "opacity": DIM_OPACITY if dim else 0.85, "line": {"width": 0}})
            legend.add(int(k))
            traces.append(json.dumps(trace, separators=(",", ":")))
    with ld.lock:
        ld.figure_cache[key] = traces
    return traces


def map_title(md: ModelData, ld: LayerData, view: str = "2-D") -> str:
    """The plot title: model, layer, size, and how the map was made when it was not a plain fit."""
    title = f"{md.name} · {ld.layer} · {ld.n_points} points ({len(md.noise_levels)} noise levels)"
    how = describe_map(ld.embedding_meta.get("map"))
    title = f"{title} · {how}" if how else title
    return title + (_quality_subtitle(ld) if view == "2-D" else "")


def describe_map(info: dict | None) -> str:
    """A few words on how a map was made, from its metadata's ``map`` entry ("" for a full fit)."""
    if not info or info.get("method", "full") == "full":
        return ""
    if info.get("method") != "landmarks":
        return f"map: {info.get('method')}"
    text = f"map: UMAP on {info.get('n_landmarks', '?')} landmarks, rest placed by {info.get('placement', 'knn')}"
    if info.get("refine_epochs"):
        text += f" + {info['refine_epochs']} refinement epochs"
    return text


def _layout(md: ModelData, ld: LayerData, view: str) -> dict:
    title = map_title(md, ld, view)
    layout = {"uirevision": f"{md.name}/{ld.layer}/{view}", "height": PLOT_HEIGHT, "hovermode": "closest",
              "margin": {"l": 10, "r": 10, "t": 52 if "<br>" in title else 36, "b": 10},
              "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
              "legend": {"title": {"text": "class"}, "itemsizing": "constant"}, "plot_bgcolor": "#FFFFFF",
              "paper_bgcolor": "#FFFFFF"}
    if view == "2-D":
        axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "title": {"text": ""}}
        layout.update(dragmode="zoom", xaxis=dict(axis), yaxis=dict(axis))
    else:
        axis = {"showticklabels": False, "title": {"text": ""}, "backgroundcolor": "#FFFFFF"}
        layout["scene"] = {"xaxis": dict(axis), "yaxis": dict(axis),
                           "zaxis": {"title": {"text": "noise level %"}, "tickvals": md.noise_levels},
                           "dragmode": "orbit", "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.9}}
    return layout


def _quality_subtitle(ld: LayerData) -> str:
    """A second, small title line with the 2-D map's neighbourhood quality ('' when unknown)."""
    quality = ld.embedding_meta.get("quality")
    if not isinstance(quality, dict) or "knn_preservation" not in quality:
        return ""
    q = quality
    return (f"<br><sup>map quality: {q['k']}-NN kept {q['knn_preservation']:.2f} (random map "
            f"{q['knn_chance']:.2g}) · trustworthiness {q['trustworthiness']:.2f}: how much of each point's "
            f"neighbourhood in the layer the map keeps (1 = all)</sup>")


def _set_b_ring(coords: np.ndarray, rows: Sequence[int], view: str) -> dict | None:
    """Reference set B: open squares in ``RING_SET_B``, distinct from set A's circles."""
    return ring_trace(coords, rows, RING_SET_B, 14, "set B", view, symbol="square-open")


def _extrapolated_steps(rec: GenerationRecord, coords: np.ndarray, flagged, active: bool, view: str) -> list[dict]:
    """Hollow markers over the trajectory steps whose map position is an extrapolation; the
    hover says why. ``flagged``: per sample (extrapolated (S,) bool, reason (S,) str)."""
    out = []
    color = TRAJ_ACTIVE if active else TRAJ_OTHER
    for b, (flags, reasons) in enumerate(flagged):
        steps = [int(s) for s in np.flatnonzero(np.asarray(flags, dtype=bool))]
        if not steps or b >= coords.shape[1]:
            continue
        xyz = coords[steps, b]
        trace = {"type": "scatter" if view == "2-D" else "scatter3d", "mode": "markers", "name": "extrapolated",
                 "meta": f"traj:{rec.id}:{b}", "showlegend": False, "customdata": steps,
                 "text": [str(reasons[s]) for s in steps],
                 "hovertemplate": "step %{customdata}: extrapolated position<br>%{text}<extra></extra>",
                 "x": xyz[:, 0].round(5).tolist(), "y": xyz[:, 1].round(5).tolist(),
                 "marker": {"symbol": "circle-open" if view != "2-D" else "circle", "size": 10 if view == "2-D" else 5,
                            "color": "#FFFFFF" if view == "2-D" else color, "line": {"width": 2, "color": color}}}
        if view != "2-D":
            trace["z"] = xyz[:, 2].round(5).tolist()
        out.append(trace)
    return out


def ring_trace(coords: np.ndarray, rows: Sequence[int], color: str, size: int, name: str, view: str,
               symbol: str = "circle-open") -> dict | None:
    """Open markers of ``color`` around map points ``rows`` (``coords``: the view's coordinates):
    an overlay trace named ``name`` (meta "ring"; clicks and box/lasso on it count as the point),
    or None when ``rows`` is empty. Many rings are drawn with WebGL."""
    rows = [int(r) for r in rows]
    if not rows:
        return None
    if view == "2-D":
        kind = "scattergl" if len(rows) > GL_RING_POINTS else "scatter"
    else:
        kind = "scatter3d"
    trace = {"type": kind, "mode": "markers", "name": name,
             "meta": "ring", "showlegend": False, "hoverinfo": "skip",
             "x": coords[rows, 0].round(5).tolist(), "y": coords[rows, 1].round(5).tolist(), "customdata": rows,
             "marker": {"symbol": symbol, "size": size if view == "2-D" else max(size // 2, 4),
                        "color": color, "line": {"width": 2.5, "color": color}}}
    if view != "2-D":
        trace["z"] = coords[rows, 2].round(5).tolist()
    return trace


def _trajectory_traces(rec: GenerationRecord, coords: np.ndarray, active: bool, frame: int | None,
                       view: str, markers: dict | None = None) -> list[dict]:
    """Line + start/end markers (and the current frame) for every sample of one generation."""
    out = []
    scatter = "scatter" if view == "2-D" else "scatter3d"
    color = TRAJ_ACTIVE if active else TRAJ_OTHER
    steps = list(range(coords.shape[0]))
    for b in range(coords.shape[1]):
        xyz = coords[:, b]
        meta = f"traj:{rec.id}:{b}"

        def pts(idx, xyz=xyz):
            d = {"x": xyz[idx, 0].round(5).tolist(), "y": xyz[idx, 1].round(5).tolist()}
            if view != "2-D":
                d["z"] = xyz[idx, 2].round(5).tolist()
            return d

        hover = "generation " + rec.id[:6] + " · step %{customdata}<extra></extra>"
        line = {"type": scatter, "mode": "lines+markers", "name": f"trajectory {rec.id[:6]}", "meta": meta,
                "showlegend": False, "customdata": steps, "hovertemplate": hover,
                "line": {"color": color, "width": 3 if active else 1.5},
                "marker": {"size": 5 if view == "2-D" else 3, "color": color, **(markers or {})}, **pts(steps)}
        start = {"type": scatter, "mode": "markers", "name": "start", "meta": meta, "showlegend": False,
                 "customdata": [0], "hovertemplate": hover,
                 "marker": {"symbol": "diamond", "size": 13 if view == "2-D" else 7, "color": "#00A000",
                            "line": {"width": 1, "color": "#000000"}}, **pts([0])}
        end = {"type": scatter, "mode": "markers", "name": "end", "meta": meta, "showlegend": False,
               "customdata": [steps[-1]], "hovertemplate": hover,
               "marker": {"symbol": "x" if view != "2-D" else "star", "size": 15 if view == "2-D" else 7,
                          "color": "#FFD700" if view == "2-D" else "#000000", "line": {"width": 1, "color": "#000000"}},
               **pts([steps[-1]])}
        out += [line, start, end]
        if active and frame is not None and 0 <= frame < len(steps):
            out.append({"type": scatter, "mode": "markers", "name": "frame", "meta": meta, "showlegend": False,
                        "customdata": [frame], "hovertemplate": hover,
                        "marker": {"symbol": "circle-open", "size": 20 if view == "2-D" else 9, "color": RING_FRAME,
                                   "line": {"width": 3, "color": RING_FRAME}}, **pts([frame])})
    return out


def overlay_traces(ld: LayerData, view: str, overlays: Overlays | None,
                   trajectory_coords: Callable[[GenerationRecord, str], np.ndarray]) -> list[dict]:
    """Every overlay trace of ``overlays`` on ``ld``'s map in ``view``, in drawing order: KNN,
    neighbour and selection rings, trajectories, then ``overlays.extra``."""
    ov = overlays or Overlays()
    coords = ld.coords(view)
    out = []
    for rows, color, size, name in ((ov.knn, RING_KNN, 13, "knn"), (ov.manual, RING_MANUAL, 15, "neighbours"),
                                    ([] if ov.selected is None else [ov.selected], RING_SELECTED, 19,
                                     "selected")):
        ring = ring_trace(coords, rows, color, size, name, view)
        if ring is not None:
            out.append(ring)
    set_b = _set_b_ring(coords, ov.set_b, view)
    if set_b is not None:
        out.insert(0, set_b)
    for rec in ov.trajectories:
        active = rec.id == ov.active
        xyz = trajectory_coords(rec, view)
        traj = _trajectory_traces(rec, xyz, active, ov.frame if active else None, view,
                                  ov.trajectory_markers.get(rec.id))
        for trace in _extrapolated_steps(rec, xyz, ov.flagged.get(rec.id, ()), active, view):
            line = next(i for i, t in enumerate(traj) if t["meta"] == trace["meta"])
            traj.insert(line + 1, trace)  # over the line's dots, under the start/end markers
        out += traj
    for trace in ov.extra:
        if not isinstance(trace, dict) or not trace.get("name") or trace.get("meta") in (None, "pts"):
            raise ValueError("an extra overlay must be a trace dict with a 'name' and a 'meta' other than 'pts'")
        out.append(trace)
    return out


def is_mark(trace: dict, view: str) -> bool:
    """Whether the page paints ``trace`` on its mark canvas rather than giving it to Plotly: on
    a 2-D map, the rings (meta "ring") and a trajectory's frame marker (name "frame"). Both sit
    on a point of the map or of a trajectory line, so a click or box through them still reaches
    that point (``overlay.js`` applies the same rule)."""
    meta = trace.get("meta")
    return view == "2-D" and (meta == "ring" or (isinstance(meta, str) and meta.startswith("traj:")
                                                 and trace.get("name") == "frame"))


def _content_id(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


def _sent(trace: dict, view: str) -> dict:
    """``trace`` as the overlay message carries it: a ring painted on the 2-D canvas goes without
    its x/y (the page finds its points' positions in the drawn base by ``customdata``), so a
    region of 10⁵ neighbours costs a few bytes a point."""
    if is_mark(trace, view) and trace.get("meta") == "ring":
        return {k: v for k, v in trace.items() if k not in ("x", "y")}
    return trace


def _overlay_message(key: str, title: str, traces: list[dict], view: str) -> tuple[str, str, str, list[str]]:
    """(overlay id, id of the part Plotly draws, JSON of all the traces, JSON of each trace
    Plotly draws): the ids name the content, so an unchanged overlay is never redrawn."""
    text = json.dumps([_sent(t, view) for t in traces], separators=(",", ":"))
    plotted = [json.dumps(t, separators=(",", ":")) for t in traces if not is_mark(t, view)]
    return (_content_id(key, title, text), _content_id(key, title, *plotted), text, plotted)


def overlay_payload(md: ModelData, ld: LayerData, view: str, class_filter: int | None, overlays: Overlays | None,
                    trajectory_coords: Callable[[GenerationRecord, str], np.ndarray]) -> str:
    """The small JSON message that updates the overlays in the browser: ``{"base": base_key,
    "id": content id, "plotted": id of the traces Plotly draws (all but the marks), "title":
    plot title, "traces": [overlay traces]}``."""
    key, title = base_key(md, ld, view, class_filter), map_title(md, ld, view)
    ident, plotted, traces, _ = _overlay_message(key, title, overlay_traces(ld, view, overlays, trajectory_coords),
                                                 view)
    return ('{"base":' + json.dumps(key) + ',"id":"' + ident + '","plotted":"' + plotted + '","title":'
            + json.dumps(title) + ',"traces":' + traces + "}")


def build_figure(md: ModelData, ld: LayerData, view: str, class_filter: int | None, overlays: Overlays | None,
                 trajectory_coords: Callable[[GenerationRecord, str], np.ndarray]) -> PlotFigure:
    """The whole figure: the cached base traces of ``ld`` in ``view`` plus the overlay traces
    Plotly draws (not the marks: the overlay message brings those); ``trajectory_coords(record,
    view)`` places a generation's trajectory on the map. ``layout.meta`` names the base, the
    overlay content and its Plotly part (see ``overlay_payload``)."""
    extra = overlay_traces(ld, view, overlays, trajectory_coords)
    key = base_key(md, ld, view, class_filter)
    layout = _layout(md, ld, view)
    ident, plotted, _, traces = _overlay_message(key, layout["title"]["text"], extra, view)
    layout["meta"] = {"base": key, "overlay": ident, "plotted": plotted}
    data = _base_traces(md, ld, view, class_filter)
    config = {"displaylogo": False, "scrollZoom": True, "responsive": True}
    text = ('{"data":[' + ",".join([*data, *traces]) + '],"layout":' + json.dumps(layout) + ',"config":'
            + json.dumps(config) + "}")
    return PlotFigure(text)
