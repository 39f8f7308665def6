"""The map as a Plotly figure, written as JSON directly.

The points of a map are float32 / int32 typed arrays (base64, as plotly.js decodes them)
and carry only their index (``customdata``); class names live once per trace (legend).
The encoded base traces are cached per (view, class filter) on the ``LayerData``, so a
click only adds the small overlay traces: rings for the selection and neighbours, and the
trajectories of generations.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .generations import GenerationRecord
from .models import LayerData, ModelData

__all__ = ["PlotFigure", "Overlays", "build_figure", "class_color", "CLASS_COLORS"]

CLASS_COLORS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22",
                "#17BECF", "#D62728", "#393B79", "#637939", "#8C6D31", "#843C39", "#7B4173", "#3182BD")
RING_SELECTED, RING_MANUAL, RING_KNN, RING_FRAME = "#FF0000", "#00D5FF", "#7CFC00", "#FF00FF"
RING_SET_B = "#FF8C00"  # reference set B of direction steering (dark orange squares)
TRAJ_ACTIVE, TRAJ_OTHER = "#FF4500", "#505050"
#: marker opacity (2-D) and size (3-D) from the lowest to the highest noise level
OPACITY_RANGE, SIZE_RANGE_3D = (0.95, 0.3), (5.0, 2.0)
DIM_OPACITY = 0.07
PLOT_HEIGHT = 620


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


def _base_traces(md: ModelData, ld: LayerData, view: str, class_filter: int | None) -> list[str]:
    """The encoded point traces, one per class, cached per (view, class filter)."""
    key = (view, class_filter)
    cached = ld.figure_cache.get(key)
    if cached is not None:
        return cached
    coords = ld.coords(view)
    labels = md.metadata.class_label
    n_levels = max(int(md.level_rank.max()) + 1, 1)
    t = md.level_rank / max(n_levels - 1, 1)  # 0 = lowest noise, 1 = highest
    traces = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        dim = class_filter is not None and int(k) != class_filter
        trace = {"name": md.class_name(int(k)), "legendgroup": f"c{int(k)}", "meta": "pts", "mode": "markers",
                 "x": _typed(coords[rows, 0], "f4"), "y": _typed(coords[rows, 1], "f4"),
                 "customdata": _typed(rows, "i4"),
                 "hovertemplate": "class %{fullData.name} · #%{customdata}<extra></extra>"}
        if view == "2-D":
            opacity = OPACITY_RANGE[0] + (OPACITY_RANGE[1] - OPACITY_RANGE[0]) * t[rows]
            if dim:
                opacity = np.full(len(rows), DIM_OPACITY)
            trace.update(type="scattergl", marker={"color": class_color(int(k)), "size": 6,
                                                   "opacity": _typed(opacity, "f4"), "line": {"width": 0}})
        else:
            size = SIZE_RANGE_3D[0] + (SIZE_RANGE_3D[1] - SIZE_RANGE_3D[0]) * t[rows]
            trace.update(type="scatter3d", z=_typed(coords[rows, 2], "f4"),
                         marker={"color": class_color(int(k)), "size": _typed(size, "f4"),
                                 "opacity": DIM_OPACITY if dim else 0.85, "line": {"width": 0}})
        traces.append(json.dumps(trace, separators=(",", ":")))
    with ld.lock:
        ld.figure_cache[key] = traces
    return traces


def _layout(md: ModelData, ld: LayerData, view: str) -> dict:
    title = f"{md.name} · {ld.layer} · {ld.n_points} points ({len(md.noise_levels)} noise levels)"
    title += _quality_subtitle(ld) if view == "2-D" else ""
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
    trace = _ring(coords, rows, RING_SET_B, 14, "set B", view)
    if trace is not None:
        trace["marker"]["symbol"] = "square-open"
    return trace


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


def _ring(coords: np.ndarray, rows: Sequence[int], color: str, size: int, name: str, view: str) -> dict | None:
    rows = [int(r) for r in rows]
    if not rows:
        return None
    trace = {"type": "scatter" if view == "2-D" else "scatter3d", "mode": "markers", "name": name,
             "meta": "ring", "showlegend": False, "hoverinfo": "skip",
             "x": coords[rows, 0].round(5).tolist(), "y": coords[rows, 1].round(5).tolist(), "customdata": rows,
             "marker": {"symbol": "circle-open", "size": size if view == "2-D" else max(size // 2, 4),
                        "color": color, "line": {"width": 2.5, "color": color}}}
    if view != "2-D":
        trace["z"] = coords[rows, 2].round(5).tolist()
    return trace


def _trajectory_traces(rec: GenerationRecord, coords: np.ndarray, active: bool, frame: int | None,
                       view: str) -> list[dict]:
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
                "marker": {"size": 5 if view == "2-D" else 3, "color": color}, **pts(steps)}
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


def build_figure(md: ModelData, ld: LayerData, view: str, class_filter: int | None, overlays: Overlays | None,
                 trajectory_coords: Callable[[GenerationRecord, str], np.ndarray]) -> PlotFigure:
    """The whole figure: the cached base traces of ``ld`` in ``view`` plus ``overlays``;
    ``trajectory_coords(record, view)`` places a generation's trajectory on the map."""
    ov = overlays or Overlays()
    coords = ld.coords(view)
    extra = []
    for rows, color, size, name in ((ov.knn, RING_KNN, 13, "knn"), (ov.manual, RING_MANUAL, 15, "neighbours"),
                                    ([] if ov.selected is None else [ov.selected], RING_SELECTED, 19,
                                     "selected")):
        ring = _ring(coords, rows, color, size, name, view)
        if ring is not None:
            extra.append(ring)
    set_b = _set_b_ring(coords, ov.set_b, view)
    if set_b is not None:
        extra.insert(0, set_b)
    for rec in ov.trajectories:
        active = rec.id == ov.active
        xyz = trajectory_coords(rec, view)
        traj = _trajectory_traces(rec, xyz, active, ov.frame if active else None, view)
        for trace in _extrapolated_steps(rec, xyz, ov.flagged.get(rec.id, ()), active, view):
            line = next(i for i, t in enumerate(traj) if t["meta"] == trace["meta"])
            traj.insert(line + 1, trace)  # over the line's dots, under the start/end markers
        extra += traj
    data = _base_traces(md, ld, view, class_filter) + [json.dumps(t, separators=(",", ":")) for t in extra]
    config = {"displaylogo": False, "scrollZoom": True, "responsive": True}
    text = ('{"data":[' + ",".join(data) + '],"layout":' + json.dumps(_layout(md, ld, view))
            + ',"config":' + json.dumps(config) + "}")
    return PlotFigure(text)
