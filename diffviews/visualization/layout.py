"""The page: CSS, the Plotly → Python event bridge, and the components (nothing else).

``build_layout`` creates every component inside the current ``gr.Blocks`` and returns
them by name; ``app.py`` wires them to the handlers in ``callbacks.py``. Element ids
(``elem_id``) are stable: the browser tests and the README tour use them.

The bridge: ``gr.Plot`` only has a ``change`` event, so two hidden ``gr.HTML``
components run ``PLOTLY_HANDLER_JS`` on load. It attaches ``plotly_hover`` (hover
bridge) or ``plotly_click`` / ``plotly_selected`` (plot bridge) handlers to the
plot's ``.js-plotly-plot`` div and writes each event as JSON into the component's
value (``props.value``), which fires the component's ``change`` event in Python. Setting
the value is enough; calling ``trigger('change')`` as well would deliver every event
twice. The handlers are re-attached whenever the plot div is replaced (a flag on the
div, checked on DOM mutations and on a short interval). Box and lasso on the 2-D map are drawn
by the page (``region_select.js``), never by Plotly: the bridge sends the region in map
coordinates (``{"kind": "select", "points": [], "region": {"box"|"lasso": ...}}``) and the server
finds the points inside (``regions.py``), so a selection costs the same at 10³ and 10⁶ points.

Overlays: the ``gr.Plot`` value (all points) changes only when the base changes (model,
layer, view, class filter). Every handler also sets the hidden ``overlay`` textbox to the
overlay message (``figures.overlay_payload``); its ``change`` event runs ``OVERLAY_JS``
(``overlay.js``) in the browser. On a 2-D map it paints the rings and the frame marker on a
canvas over the plot area (``pointer-events: none``, so clicks and box/lasso reach the points
under them), repainted from the axes on every zoom, pan, redraw and resize; the other overlay
traces (trajectories) are swapped with ``Plotly.react`` on the base trace objects, and only
when they changed, so a click never makes Plotly touch the points. A message for another base
than the one drawn waits: the full figure on its way carries the same Plotly overlays
(``layout.meta.plotted`` names them), and a redraw (plotly_afterplot) applies it.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..backends.protocol import NOISE_MODES
from .callbacks import (
    ALL_CLASSES,
    ALPHA_RANGE,
    FROM_SELECTION,
    GUIDANCE_RANGE,
    K_RANGE,
    KNN_SPACES,
    NOISE_RANGE,
    SAMPLES_RANGE,
    SEED_RANGE,
    STEPS_RANGE,
    Session,
    figure,
)
from .interventions import MASK_MODES, REFERENCE_SETS, SWEEP_OVER
from .models import VIEWS
from .steering import SWEEP_DEFAULTS, WINDOW_DEFAULT
from .visualizer import GradioVisualizer

CUSTOM_CSS = """
#hover-bridge, #plot-bridge, #plot-overlay { display: none !important; }
#umap-plot { min-height: 640px; }
#status { min-height: 2.6em; padding: 4px 8px; border-radius: 6px; background: var(--background-fill-secondary); }
#preview-info, #selected-info, #frame-info { font-size: 0.9em; }
#frame-nav { align-items: center; }
#frame-nav button { max-width: 4em; }
.dv-legend { font-size: 0.85em; color: var(--body-text-color-subdued); }
"""

#: box/lasso on the 2-D map, drawn by the page (a function the plot bridge calls; see the file)
REGION_SELECT_JS = (Path(__file__).parent / "region_select.js").read_text(encoding="utf-8")

PLOTLY_HANDLER_JS = REGION_SELECT_JS + r"""
const kinds = String(props.events || 'click select').split(/\s+/).filter(Boolean);
const flag = '__diffviews_' + kinds.join('_');
let seq = 0;
let lastHover = '';
function pack(ev, limit) {
  return ev.points.slice(0, limit).map(p => ({
    i: Array.isArray(p.customdata) ? p.customdata[0] : p.customdata,
    m: (p.data && typeof p.data.meta === 'string') ? p.data.meta : null,
  }));
}
// a box / lasso on the 2-D map (region_select.js): the drawn region in map coordinates; the
// server finds the points inside, so the message stays small however many points it holds
function sendRegion(where) {
  seq += 1;
  props.value = JSON.stringify({kind: 'select', n: seq, points: [], region: where});
}
function send(kind, ev) {
  if (!ev || !Array.isArray(ev.points)) return;
  const points = pack(ev, kind === 'hover' ? 1 : 50000);
  if (kind === 'hover') {
    const key = JSON.stringify(points);
    if (key === lastHover) return;
    lastHover = key;
  }
  seq += 1;
  props.value = JSON.stringify({kind: kind, n: seq, points: points});
}
function attach() {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  if (!gd || typeof gd.on !== 'function' || gd[flag]) return;
  gd[flag] = true;
  if (kinds.includes('select')) dvRegionSelect(gd, where => sendRegion(where), ev => send('click', ev));
  if (kinds.includes('hover')) gd.on('plotly_hover', ev => send('hover', ev));
  if (kinds.includes('click')) gd.on('plotly_click', ev => send('click', ev));
  if (kinds.includes('select')) gd.on('plotly_selected', ev => send('select', ev));
}
attach();
new MutationObserver(attach).observe(document.body, {childList: true, subtree: true});
setInterval(attach, 500);
"""

#: runs on every overlay message (the ``overlay`` textbox's change event), in the browser only
OVERLAY_JS = (Path(__file__).parent / "overlay.js").read_text(encoding="utf-8")

INTRO = ("**DiffViews** · hover the map to preview samples · click to select (red) · tick *Click adds/removes "
         "neighbours* to pick neighbours (cyan), or box/lasso them · *Suggest KNN* (lime) · "
         "*Generate from neighbours* draws the new image's trajectory on the map.")


def _bridge(elem_id: str, events: str) -> gr.HTML:
    return gr.HTML(value="", html_template="<div></div>", js_on_load=PLOTLY_HANDLER_JS, elem_id=elem_id,
                   events=events, container=False, padding=False)


def build_layout(vis: GradioVisualizer, session: Session) -> dict[str, gr.components.Component]:
    """Create the components for ``session``'s starting view; returns them by name."""
    md = vis.model(session.model)
    c = md.config
    steps = int(min(max(c["default_steps"], STEPS_RANGE[0]), STEPS_RANGE[1]))
    ui: dict[str, gr.components.Component] = {}
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            ui["model_dropdown"] = gr.Dropdown(vis.model_names, value=session.model, label="Model",
                                               elem_id="model-dropdown")
            ui["layer_dropdown"] = gr.Dropdown(md.hookable_layers, value=session.layer, label="Layer",
                                               info="a new layer is extracted and mapped on demand",
                                               elem_id="layer-dropdown")
            ui["view_radio"] = gr.Radio(list(VIEWS), value=session.view, label="View", elem_id="view-radio")
            ui["class_filter"] = gr.Dropdown([ALL_CLASSES, *md.class_names], value=ALL_CLASSES,
                                             label="Highlight class", elem_id="class-filter")
            with gr.Accordion("Selection and neighbours", open=True):
                ui["neighbor_toggle"] = gr.Checkbox(False, label="Click adds/removes neighbours",
                                                    elem_id="neighbor-toggle")
                with gr.Row():
                    # bounds are checked by the handler (they change with the model)
                    ui["point_index"] = gr.Number(None, label="Point #", precision=0, elem_id="point-index",
                                                  min_width=80)
                    ui["select_button"] = gr.Button("Select", size="sm", elem_id="select-point-button",
                                                    min_width=60)
                ui["knn_k"] = gr.Slider(*K_RANGE, value=10, step=1, label="k (neighbours)", elem_id="knn-k")
                ui["knn_space"] = gr.Radio(list(KNN_SPACES), value="map", label="Distance measured on",
                                           elem_id="knn-space")
                with gr.Row():
                    ui["knn_button"] = gr.Button("Suggest KNN", variant="secondary", elem_id="knn-button")
                    ui["clear_button"] = gr.Button("Clear", elem_id="clear-button")
        with gr.Column(scale=3, min_width=480):
            ui["plot"] = gr.Plot(figure(vis, session), show_label=False, elem_id="umap-plot")
            ui["overlay"] = gr.Textbox("", show_label=False, container=False, interactive=False, max_lines=1,
                                       elem_id="plot-overlay")
            ui["status"] = gr.Markdown(f"Model **{session.model}**, layer **{session.layer}**: {md.n_points} "
                                       "points. Hover to preview, click to select.", elem_id="status")
            ui["hover_bridge"] = _bridge("hover-bridge", "hover")
            ui["plot_bridge"] = _bridge("plot-bridge", "click select")
        with gr.Column(scale=1, min_width=240):
            ui["preview_image"] = gr.Image(label="Hover preview", type="numpy", format="png", interactive=False,
                                           height=200, elem_id="preview-image")
            ui["preview_info"] = gr.Markdown("Hover a point.", elem_id="preview-info")
            ui["selected_image"] = gr.Image(label="Selected point", type="numpy", format="png", interactive=False,
                                            height=200, elem_id="selected-image")
            ui["selected_info"] = gr.Markdown("No point selected.", elem_id="selected-info")
            ui["neighbor_gallery"] = gr.Gallery(label="Neighbours", columns=4, height=240, format="png",
                                                allow_preview=False, elem_id="neighbor-gallery")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            with gr.Accordion("Generate from neighbours", open=True):
                ui["gen_class"] = gr.Dropdown([FROM_SELECTION, *md.class_names], value=FROM_SELECTION,
                                              label="Class", elem_id="gen-class")
                ui["gen_steps"] = gr.Slider(*STEPS_RANGE, value=steps, step=1, label="Steps", elem_id="gen-steps")
                ui["gen_mask_steps"] = gr.Slider(0, STEPS_RANGE[1], value=max(1, steps // 2), step=1,
                                                 label="Mask steps (≤ steps)", elem_id="gen-mask-steps",
                                                 visible=False)  # the /generate API's; the UI has a window
                ui.update(steering_controls(vis, session))
                ui["gen_alpha"] = gr.Slider(*ALPHA_RANGE, value=1.0, step=0.05, label="Blend strength α",
                                            elem_id="gen-alpha")
                ui["gen_guidance"] = gr.Slider(*GUIDANCE_RANGE, value=float(c["default_guidance"]), step=0.1,
                                               label="Guidance", elem_id="gen-guidance")
                with gr.Row():
                    ui["gen_noise_max"] = gr.Slider(*NOISE_RANGE, value=float(c["noise_max"]), step=1,
                                                    label="Noise max %", elem_id="gen-noise-max")
                    ui["gen_noise_min"] = gr.Slider(*NOISE_RANGE, value=float(c["noise_min"]), step=1,
                                                    label="Noise min %", elem_id="gen-noise-min")
                ui["gen_noise_mode"] = gr.Radio(list(NOISE_MODES), value=NOISE_MODES[0], label="Noise mode",
                                                elem_id="gen-noise-mode")
                with gr.Row():
                    ui["gen_seed"] = gr.Number(0, label="Seed", precision=0, minimum=SEED_RANGE[0],
                                               maximum=SEED_RANGE[1], elem_id="gen-seed")
                    ui["gen_samples"] = gr.Slider(*SAMPLES_RANGE, value=1, step=1, label="Samples",
                                                  elem_id="gen-samples")
                ui["generate_button"] = gr.Button("Generate from neighbours", variant="primary",
                                                  elem_id="generate-button")
        with gr.Column(scale=1, min_width=220):
            ui["generated_image"] = gr.Image(label="Generated", type="numpy", format="png", interactive=False,
                                             height=220, elem_id="generated-image")
            ui["trajectory_dropdown"] = gr.Dropdown([], value=None, label="Trajectories", allow_custom_value=False,
                                                    elem_id="trajectory-dropdown")
            ui["clear_trajectories_button"] = gr.Button("Clear trajectories", size="sm",
                                                        elem_id="clear-trajectories-button")
            with gr.Accordion("Export", open=False):
                ui["export_selection_button"] = gr.Button("Selection + neighbours (.zip)", size="sm",
                                                          elem_id="export-selection-button")
                ui["export_generation_button"] = gr.Button("Shown generation (.zip)", size="sm",
                                                           elem_id="export-generation-button")
                ui["export_file"] = gr.File(label="Download", interactive=False, elem_id="export-file")
        with gr.Column(scale=2, min_width=360):
            ui["frame_image"] = gr.Image(label="Frame", type="numpy", format="png", interactive=False, height=220,
                                         elem_id="frame-image")
            with gr.Row(elem_id="frame-nav"):
                ui["prev_button"] = gr.Button("◀", size="sm", elem_id="prev-frame")
                ui["frame_info"] = gr.Markdown("", elem_id="frame-info")
                ui["next_button"] = gr.Button("▶", size="sm", elem_id="next-frame")
            ui["steps_gallery"] = gr.Gallery(label="Denoising steps (denoised estimate; inset: noised input)",
                                             columns=8, height=200, format="png", allow_preview=False,
                                             elem_id="steps-gallery")
    ui.update(sweep_panel())
    with gr.Accordion("Session state", open=False):
        ui["session_info"] = gr.JSON(label="This session", elem_id="session-info")
    return ui


def steering_controls(vis: GradioVisualizer, session: Session) -> dict[str, gr.components.Component]:
    """The intervention's controls (inside *Generate from neighbours*): mode, noise window,
    layers, reference set B and its buttons."""
    ui: dict[str, gr.components.Component] = {}
    ui["gen_mode"] = gr.Radio(list(MASK_MODES), value="blend", label="Mode",
                              info="blend: hold the layers at set A's mean · add: + α·(mean A − mean B)",
                              elem_id="gen-mode")
    with gr.Row():
        ui["window_from"] = gr.Slider(*NOISE_RANGE, value=WINDOW_DEFAULT[0], step=1, label="Steer from noise %",
                                      elem_id="window-from")
        ui["window_to"] = gr.Slider(*NOISE_RANGE, value=WINDOW_DEFAULT[1], step=1, label="to noise %",
                                    elem_id="window-to")
    ui["steer_layers"] = gr.Dropdown(vis.layers(session.model), value=[], multiselect=True, label="Steer layers",
                                     info="empty: the shown layer; a layer not built yet is extracted first",
                                     elem_id="steer-layers")
    ui["reference_set"] = gr.Radio(list(REFERENCE_SETS), value=REFERENCE_SETS[0], label="Reference set B (add mode)",
                                   elem_id="reference-set")
    ui["set_b_info"] = gr.Markdown("Set B: empty.", elem_id="set-b-info")
    with gr.Row():
        ui["set_b_button"] = gr.Button("Use selection as set B", size="sm", elem_id="set-b-button")
        ui["clear_set_b_button"] = gr.Button("Clear set B", size="sm", elem_id="clear-set-b-button")
    return ui


def sweep_panel() -> dict[str, gr.components.Component]:
    """Sweeps: values, the labelled grid, the landing chart and the export (a row of its own)."""
    ui: dict[str, gr.components.Component] = {}
    with gr.Accordion("Sweep: one seed, a row of values", open=True):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                ui["sweep_over"] = gr.Radio(list(SWEEP_OVER), value="alpha", label="Sweep over",
                                            info="α, or the noise window's from %", elem_id="sweep-over")
                ui["sweep_values"] = gr.Textbox(SWEEP_DEFAULTS["alpha"]["blend"], label="Values (2–12)",
                                                elem_id="sweep-values")
                ui["sweep_button"] = gr.Button("Run sweep", variant="primary", elem_id="sweep-button")
                ui["export_sweep_button"] = gr.Button("Sweep (.zip)", size="sm", elem_id="export-sweep-button")
                ui["generate_legacy_button"] = gr.Button("generate (mask steps)", visible=False,
                                                         elem_id="generate-legacy-button")
            with gr.Column(scale=2, min_width=360):
                ui["sweep_gallery"] = gr.Gallery(label="Sweep (final images)", columns=6, height=220, format="png",
                                                 allow_preview=False, elem_id="sweep-gallery")
            with gr.Column(scale=2, min_width=320):
                ui["sweep_chart"] = gr.Plot(label="Where the sweep landed", elem_id="sweep-chart")
    return ui
