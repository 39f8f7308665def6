"""The DiffViews web app: wires the layout (``layout.py``) to the handlers (``callbacks.py``).

    python -m diffviews.visualization.app --data-dir data          # or: diffviews viz
    demo = create_gradio_app(GradioVisualizer("data")); launch_app(demo, port=7860)

Named API endpoints (for ``gradio_client``; every client is its own session):
``/select_point``, ``/plot_event``, ``/hover``, ``/knn``, ``/clear_selection``,
``/filter_class``, ``/switch_model``, ``/switch_layer``, ``/switch_view``, ``/generate``,
``/prev_frame``, ``/next_frame``, ``/choose_trajectory``,
``/clear_trajectories``, ``/export_selection``, ``/export_generation``; steering (``steering.py``):
``/steer`` (the generate button: noise window, mode, layers, set B), ``/sweep``, ``/export_sweep``,
``/use_as_set_b``, ``/clear_set_b``, ``/switch_mode``. ``/generate`` keeps the mask-steps form
for API clients.
"""

import argparse
import inspect
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace

import gradio as gr

from ..processing.umap import warmup as umap_warmup
from . import callbacks as cb
from . import gradio_cache
from .events import (
    CACHE_CLEANUP,
    CONCURRENCY,
    ENDPOINT_OUTPUTS,
    EVENTS,
    FRAME,
    HEAVY,
    QUEUE_SIZE,
    SERVE_OPTIONS,
    SESSION_TTL_S,
)
from .layout import CUSTOM_CSS, OVERLAY_JS, PLOTLY_HANDLER_JS, build_layout
from .limits import Busy, HeavyGate, limit_malloc_arenas
from .models import ModelData
from .preload import preload_app_kwargs
from .session_merge import SessionBoard
from .visualizer import GradioVisualizer

__all__ = ["GradioVisualizer", "create_gradio_app", "launch_app", "add_notice", "main", "ModelData", "CUSTOM_CSS",
           "PLOTLY_HANDLER_JS", "ENDPOINT_OUTPUTS", "SERVE_OPTIONS", "QUEUE_SIZE", "HEAVY"]

log = logging.getLogger(__name__)
#: one DEBUG line per handler run, "<api name> <ms>" (``DIFFVIEWS_TIMING_LOG=1`` turns it on in ``main``)
timing = logging.getLogger("diffviews.timing")



def _handler(vis: GradioVisualizer, fn, outputs: list[str], board: SessionBoard, gate: HeavyGate | None = None,
             kind: str = ""):
    """``fn(vis, state, *inputs) -> (state, {name: value})`` as a Gradio function returning
    ``(state, *outputs)``; outputs the handler left out stay unchanged (``gr.skip()``), and so
    does the state when the handler returns the one it was given: a handler that changes
    nothing never overwrites what a concurrent event of the same session stored meanwhile. The
    session's id is Gradio's session hash (what ``demo.unload`` names when the visitor leaves),
    filled in from the request on every call, so it need not be written back on its own. A
    changed state goes through ``board`` (``session_merge``): it lands on the latest state of the
    session, so a slow handler never undoes what a faster event of the same session did meanwhile.
    With a ``gate`` the handler runs only when the session's heavy-job limit and ``kind``'s slot allow."""

    def run(*args):
        t0 = time.perf_counter()
        *args, request = args  # Gradio passes the request last (see the signature below)
        session = getattr(request, "session_hash", None)
        if session and args and isinstance(args[0], cb.Session) and args[0].sid is None:
            args[0] = replace(args[0], sid=session)
        try:
            if gate is None:
                state, out = fn(vis, *args)
            else:
                with gate.enter(session or "anonymous", kind):
                    state, out = fn(vis, *args)
        except Busy as exc:
            state, out = args[0], cb.error_output(str(exc))
        timing.debug("%s %.3f", fn.__name__, 1000 * (time.perf_counter() - t0))
        if not args or state is args[0]:
            return (gr.skip(), *[out.get(name, gr.skip()) for name in outputs])
        state = board.commit(session, args[0], state)
        return (state, *[out.get(name, gr.skip()) for name in outputs])

    params = list(inspect.signature(fn).parameters.values())[1:]  # the visualizer is bound here
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                    annotation=gr.Request))
    run.__annotations__ = {"request": gr.Request}
    run.__signature__ = inspect.Signature(params)
    run.__name__ = fn.__name__
    return run


def _forget(vis: GradioVisualizer, board: SessionBoard, state) -> None:
    """A session ended (Gradio's State delete callback): free what it owned."""
    vis.generations.discard(getattr(state, "generations", ()))
    board.forget(getattr(state, "sid", None))
    if getattr(state, "sid", None):
        vis.forget_session(state.sid)


def create_gradio_app(visualizer: GradioVisualizer, warmup: bool = True, notice: str | None = None) -> gr.Blocks:
    """The app for ``visualizer``: layout, per-session state and every event, queued with
    a concurrency limit per kind of work. Launch it with ``launch_app`` (adds the CSS).
    ``warmup`` starts umap-learn's JIT compilation in a background thread (once per process).
    ``notice`` (default: the visualizer's own, e.g. "browse only") is shown on every page load."""
    limit_malloc_arenas()  # before the serving threads start: one heap per thread would only grow
    gradio_cache.install()  # two sessions shown the same image must not rewrite its cached file
    if warmup:
        umap_warmup(background=True)
    vis = visualizer
    session = cb.initial_session(vis)
    gate, board = HeavyGate(), SessionBoard()
    with gr.Blocks(title="DiffViews", delete_cache=CACHE_CLEANUP) as demo:
        ui = build_layout(vis, session)
        state = gr.State(session, delete_callback=lambda s: _forget(vis, board, s), time_to_live=SESSION_TTL_S)
        ui["state"] = state

        def listen(component, event, fn, inputs, outputs, api_name, group, **kw):
            getattr(ui[component], event)(
                fn, inputs=[state, *[ui[n] for n in inputs]], outputs=[state, *[ui[n] for n in outputs]],
                api_name=api_name, concurrency_id=group, concurrency_limit=CONCURRENCY[group],
                show_progress=kw.pop("show_progress", "minimal" if group == "light" else "full"), **kw)

        for api_name, (component, event, fn, inputs, outputs, group) in EVENTS.items():
            extra = {"trigger_mode": "always_last"} if event == "change" else {}
            heavy = {"gate": gate, "kind": group} if group in HEAVY else {}
            handler = _handler(vis, fn, outputs, board, **heavy)
            listen(component, event, handler, inputs, outputs, api_name, group, **extra)

        # overlay messages are applied in the browser, on the plot already drawn (no server round trip)
        ui["overlay"].change(None, inputs=[ui["overlay"]], outputs=None, js=OVERLAY_JS, queue=False,
                             api_visibility="private", show_progress="hidden")

        def hover(state, payload):
            t0 = time.perf_counter()
            out = cb.hover(vis, state, payload)
            timing.debug("hover %.3f", 1000 * (time.perf_counter() - t0))
            return tuple(out.get(name, gr.skip()) for name in ENDPOINT_OUTPUTS["hover"])

        ui["hover_bridge"].change(hover, inputs=[state, ui["hover_bridge"]],
                                  outputs=[ui[n] for n in ENDPOINT_OUTPUTS["hover"]], api_name="hover",
                                  trigger_mode="always_last", concurrency_id="hover",
                                  concurrency_limit=CONCURRENCY["hover"], show_progress="hidden")

        def step(delta):
            def step_frame(vis, state):
                return cb.step_frame(vis, state, delta)

            return step_frame

        for name, button, delta in (("prev_frame", "prev_button", -1), ("next_frame", "next_button", 1)):
            listen(button, "click", _handler(vis, step(delta), FRAME, board), [], FRAME, name, "light")

        def on_step_selected(state, evt: gr.SelectData):
            new, out = cb.show_frame(vis, state, evt.index)
            return (board.commit(state.sid, state, new) if new is not state else gr.skip(),
                    *[out.get(n, gr.skip()) for n in FRAME])

        def on_leave(request: gr.Request):  # the visitor closed the page (or its client): free what it owned
            board.forget(request.session_hash)
            vis.forget_session(request.session_hash)

        demo.unload(on_leave)
        ui["steps_gallery"].select(on_step_selected, inputs=[state], outputs=[state, *[ui[n] for n in FRAME]],
                                   api_visibility="private", concurrency_id="light",
                                   concurrency_limit=CONCURRENCY["light"], show_progress="minimal")
    demo.queue(default_concurrency_limit=4, api_open=False, max_size=QUEUE_SIZE)  # the queue is the only way in
    notice = notice or visualizer.notice
    if notice:
        add_notice(demo, notice)
    return demo


def add_notice(demo: gr.Blocks, text: str) -> gr.Blocks:
    """Show ``text`` on every page load of ``demo``: a warning toast and a line on the page."""

    def warn():
        gr.Warning(text)

    with demo:
        gr.Markdown(f"**Note:** {text}", elem_id="backend-notice")
        demo.load(warn, inputs=None, outputs=None)
    return demo


def launch_app(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """``demo.launch`` with the app's CSS (Gradio 6 takes css in launch, not in Blocks) and
    ``serve_options()`` (upload cap, Plotly preload). A SIGTERM (how hosts and containers stop a process) ends the
    server as Ctrl-C does, so the exit handlers run and the export folder is removed."""
    if not kwargs.get("prevent_thread_lock") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return demo.launch(server_name=host, server_port=port, share=share, css=CUSTOM_CSS,
                       **{**serve_options(), **kwargs})


def serve_options() -> dict:
    """What every host passes to ``launch`` / ``mount_gradio_app``: ``SERVE_OPTIONS`` and the page's
    Plotly preload (``preload.PreloadPlotly``, as the Gradio app's middleware)."""
    return {**SERVE_OPTIONS, "app_kwargs": preload_app_kwargs()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffviews viz", description="Serve the DiffViews web app.")
    p.add_argument("--data-dir", default=os.environ.get("DIFFVIEWS_DATA_DIR", "data"),
                   help="data directory with one folder per model (default: $DIFFVIEWS_DATA_DIR or ./data)")
    p.add_argument("--model", default=None, help="model shown first (default: the first one found)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--device", default=None, help="torch device for the model (default: cuda if available)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--max-models", type=int, default=8,
                   help="models whose map data stay in memory at once (default 8; DIFFVIEWS_MAP_BUDGET_MB bounds "
                        "their bytes); model weights are loaded one model at a time")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("DIFFVIEWS_TIMING_LOG", "").strip() in ("1", "true"):
        timing.setLevel(logging.DEBUG)
    if not 1 <= args.port <= 65535:
        print(f"error: --port must be within [1, 65535], got {args.port}", file=sys.stderr)
        return 2
    try:
        from ..data.r2_cache import LayerCache

        vis = GradioVisualizer(args.data_dir, device=args.device, max_resident_models=args.max_models,
                               default_model=args.model, layer_cache=LayerCache.from_env(args.data_dir))
        demo = create_gradio_app(vis)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    launch_app(demo, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
