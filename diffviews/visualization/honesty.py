"""How far the map can be trusted, for the app: the three signals of ``processing.quality``.

- map quality: the 2-D map's neighbourhood preservation lives in its JSON (``data.maps``; maps
  saved before it was recorded get it computed once on load, ``LayerAccess.layer``) and is
  shown in the plot's title (``figures``).
- ``trajectory_flags``: per trajectory step, is its projected position an extrapolation?
  (noise level outside the map's recorded levels, or farther from every real activation than
  95 % of real points are from their nearest neighbour), with the reason. Measured in the
  scaled + PCA space the map was fitted in; the real points' nearest-neighbour distances are
  computed once per layer and kept; the flags once per generation.
Functions take the app's ``GradioVisualizer`` as ``vis`` (not imported here: the visualizer's
callers import this module).

- ``knn_agreement``: how many of a point's k neighbours on the map are also among its k
  nearest in activation space, and the other way round.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ..processing.quality import neighbour_agreement, real_nn_distances, step_confidence
from .generations import GenerationRecord
from .models import LayerData

__all__ = ["trajectory_flags", "step_note", "knn_agreement", "agreement_text"]

_nn_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # LayerData -> real NN distances
_flag_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # GenerationRecord -> flags per sample
_lock = threading.Lock()


def _real_nn(ld: LayerData, features: np.ndarray) -> np.ndarray:
    with _lock:
        cached = _nn_cache.get(ld)
    if cached is None:
        cached = real_nn_distances(features)
        with _lock:
            _nn_cache[ld] = cached
    return cached


def trajectory_flags(vis, rec: GenerationRecord) -> list[dict]:
    """Per sample of ``rec``: ``step_confidence``'s arrays for its trajectory at ``rec.layer``
    (``extrapolated`` (S,) bool, ``reason`` (S,) str, ``percentile``, ``inside_levels``, ...)."""
    with _lock:
        cached = _flag_cache.get(rec)
    if cached is not None:
        return cached
    md, ld = vis.model(rec.model), vis.layer(rec.model, rec.layer)
    pipe = ld.pipeline(md.paths)
    real = pipe.train_features_
    reference = _real_nn(ld, real)
    traj = rec.result.trajectory[rec.layer]  # (S, B, D)
    levels = np.round(rec.result.noise_levels[:traj.shape[0]], 1)  # one decimal, as the UI shows them
    out = [step_confidence(pipe.preprocess(traj[:, b]), real, reference, levels, md.noise_levels)
           for b in range(traj.shape[1])]
    with _lock:
        _flag_cache[rec] = out
    return out


def step_note(vis, rec: GenerationRecord, sample: int, step: int) -> str:
    """A line for the hover preview of one trajectory step: why its position is extrapolated,
    or how close it lies to real activations."""
    flags = trajectory_flags(vis, rec)[sample]
    if flags["extrapolated"][step]:
        return f"**extrapolated position:** {flags['reason'][step]}"
    return (f"within the map's data (nearest real activation closer than for "
            f"{100 - flags['percentile'][step]:.0f} % of real points)")


def knn_agreement(vis, model: str, layer: str, view: str, index: int, k: int) -> dict:
    """``neighbour_agreement`` of ``index``'s ``k`` nearest on the map (of ``view``) and in
    activation space."""
    on_map, _ = vis.neighbours(model, layer, view, index, k, "map")
    in_acts, _ = vis.neighbours(model, layer, view, index, k, "activations")
    return neighbour_agreement(on_map, in_acts)


def agreement_text(agreement: dict, space: str) -> str:
    """'7 of these 10 map neighbours are also among the 10 nearest in activation space.' (or the
    other way round when the neighbours were measured in activation space)."""
    n, k = agreement["overlap"], agreement["k_map"]
    if space == "map":
        return (f"{n} of these {k} map neighbours are also among the {k} nearest in activation space "
                f"({k - n} are near only on the map).")
    return (f"{n} of these {k} activation-space neighbours are also among the {k} nearest on the map "
            f"({k - n} are near only in the layer).")
