"""The app's event table: which component event calls which handler, with which inputs and
outputs, in which concurrency group; the queue's limits. ``app.py`` wires it."""

from . import callbacks as cb
from . import steering as st

#: what every map event updates; only a new base (model, layer, view, class filter) also sends the figure:
#: Gradio snapshots each output's value when the event starts and ends (~0.25 s for a 1M-point figure)
VIEW = ["status", "session_info", "overlay"]
REDRAW = ["plot", *VIEW]
SELECTION = ["selected_image", "selected_info", "neighbor_gallery"]
GENERATION = ["generated_image", "steps_gallery", "frame_image", "frame_info", "trajectory_dropdown"]
MODEL = ["model_dropdown", "layer_dropdown", "class_filter", "gen_class", "gen_steps", "gen_mask_steps",
         "gen_guidance", "gen_noise_max", "gen_noise_min"]
FRAME = ["session_info", "frame_image", "frame_info", "overlay", "status"]
GEN_INPUTS = ["gen_class", "gen_steps", "gen_mask_steps", "gen_alpha", "gen_guidance", "gen_noise_max",
              "gen_noise_min", "gen_noise_mode", "gen_seed", "gen_samples"]
STEER_INPUTS = ["gen_class", "gen_steps", "window_from", "window_to", "gen_mode", "gen_alpha", "steer_layers",
                "reference_set", "gen_guidance", "gen_noise_max", "gen_noise_min", "gen_noise_mode", "gen_seed",
                "gen_samples"]

# api_name -> (trigger component, event, handler, inputs after the state, outputs, concurrency group)
EVENTS = {
    "plot_event": ("plot_bridge", "change", cb.plot_event, ["plot_bridge", "neighbor_toggle"],
                   VIEW + SELECTION + ["frame_image", "frame_info"], "light"),
    "select_point": ("select_button", "click", cb.select_point, ["point_index", "neighbor_toggle"],
                     VIEW + SELECTION, "light"),
    "knn": ("knn_button", "click", st.suggest_knn, ["knn_k", "knn_space"], VIEW + SELECTION, "light"),
    "clear_selection": ("clear_button", "click", cb.clear_selection, [], VIEW + SELECTION, "light"),
    "filter_class": ("class_filter", "input", cb.filter_class, ["class_filter"], REDRAW, "light"),
    "switch_model": ("model_dropdown", "input", cb.switch_model, ["model_dropdown"],
                     REDRAW + SELECTION + GENERATION + MODEL, "model"),
    "switch_layer": ("layer_dropdown", "input", cb.switch_layer, ["layer_dropdown"],
                     REDRAW + SELECTION + GENERATION + ["layer_dropdown"], "layer"),
    "switch_view": ("view_radio", "input", cb.switch_view, ["view_radio"], REDRAW + SELECTION + ["view_radio"],
                    "layer"),
    "generate": ("generate_legacy_button", "click", cb.generate, GEN_INPUTS, VIEW + GENERATION, "generate"),
    "choose_trajectory": ("trajectory_dropdown", "input", cb.choose_trajectory, ["trajectory_dropdown"],
                          VIEW + GENERATION, "light"),
    "clear_trajectories": ("clear_trajectories_button", "click", cb.clear_trajectories, [], VIEW + GENERATION,
                           "light"),
    "export_selection": ("export_selection_button", "click", cb.export_selection, [], ["export_file", "status"],
                         "export"),
    "export_generation": ("export_generation_button", "click", cb.export_generation, [],
                          ["export_file", "status"], "export"),
    "steer": ("generate_button", "click", st.steer, STEER_INPUTS, VIEW + GENERATION, "generate"),
    "sweep": ("sweep_button", "click", st.sweep, STEER_INPUTS + ["sweep_over", "sweep_values"],
              VIEW + GENERATION + ["sweep_gallery", "sweep_chart"], "generate"),
    "export_sweep": ("export_sweep_button", "click", st.export_sweep, [], ["export_file", "status"], "export"),
    "use_as_set_b": ("set_b_button", "click", st.use_as_set_b, [], VIEW + SELECTION + ["set_b_info"], "light"),
    "clear_set_b": ("clear_set_b_button", "click", st.clear_set_b, [], VIEW + ["set_b_info"], "light"),
    "switch_mode": ("gen_mode", "input", st.switch_mode, ["gen_mode", "gen_alpha"], ["gen_alpha", "sweep_values"],
                    "light"),
    "switch_sweep_over": ("sweep_over", "input", st.switch_sweep_over, ["sweep_over", "gen_mode"], ["sweep_values"],
                          "light"),
    "refresh_layers": ("model_dropdown", "change", st.refresh_layers, [], ["steer_layers", "set_b_info"], "light"),
}
#: how many of one kind of work Gradio hands to the app at once (a group shares its limit); the
#: heavy kinds then pass ``limits.HeavyGate`` (per-session limit, the real slots per kind)
CONCURRENCY = {"hover": 8, "light": 8, "model": 2, "layer": 2, "generate": 4, "export": 2}
HEAVY = ("model", "layer", "generate", "export")
#: events waiting in the queue, all sessions together; beyond it Gradio answers "queue is full"
QUEUE_SIZE = 64
#: Gradio's file cache: every 60 s, files older than 10 min are deleted (and all of it at exit)
CACHE_CLEANUP = (60, 600)
#: a session idle this long is forgotten (its generations and exports freed), even without a closed tab
SESSION_TTL_S = 3600
#: what every host passes to ``launch`` / ``mount_gradio_app``: no useful upload (the app takes none), and no
#: browser run history (Gradio 6 rewrites every public event's inputs and outputs, the plot's figure included,
#: into localStorage at each event's start and end: 0.1-0.7 s of the page's main thread per click at 100k points)
SERVE_OPTIONS = {"max_file_size": 1024 * 1024, "run_history": False}
#: api_name -> the names of its outputs, in the order a client receives them (the state is not among them)
ENDPOINT_OUTPUTS = {name: spec[4] for name, spec in EVENTS.items()}
ENDPOINT_OUTPUTS.update(hover=["preview_image", "preview_info"], prev_frame=FRAME, next_frame=FRAME)
