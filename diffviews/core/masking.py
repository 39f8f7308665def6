"""Neighbour averaging → per-layer masks. Pure numpy, so it runs on the CPU side of a
hybrid deployment and only the small masks travel to the GPU worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def split_layers(activations: np.ndarray, layer_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Split an (N, sum D_layer) array into {layer: (N, D_layer)} in ``layer_shapes`` order."""
    sizes = [int(np.prod(s)) for s in layer_shapes.values()]
    if activations.ndim != 2 or activations.shape[1] != sum(sizes):
        raise ValueError(f"activations have shape {activations.shape}; expected (N, {sum(sizes)}) for layers "
                         f"{dict(layer_shapes)}")
    bounds = np.cumsum([0, *sizes])
    return {name: activations[:, bounds[i]:bounds[i + 1]] for i, name in enumerate(layer_shapes)}


def mean_activations(activations: np.ndarray | Mapping[str, np.ndarray], indices: Sequence[int] | None,
                     layer_shapes: Mapping[str, Sequence[int]], what: str = "neighbours") -> dict[str, np.ndarray]:
    """Per-layer mean over the points ``indices`` (None: every point), shaped (1, C, H, W)
    and kept in float64 (callers cast once at the end).

    ``activations`` is either {layer: (N, D)} or one (N, sum D) array whose columns follow
    the order of ``layer_shapes``. ``what`` names the point set in error messages (plural: "neighbours").
    """
    idx = None if indices is None else np.asarray(list(indices), dtype=np.int64)
    if idx is not None and idx.size == 0:
        raise ValueError(f"no {what} given: select at least one point to average")
    per_layer = activations if isinstance(activations, Mapping) else split_layers(activations, layer_shapes)
    means = {}
    for name, shape in layer_shapes.items():
        if name not in per_layer:
            raise KeyError(f"no activations for layer {name!r}; have {', '.join(per_layer)}")
        acts = per_layer[name]
        if acts.shape[1] != int(np.prod(shape)):
            raise ValueError(f"layer {name!r}: activations have {acts.shape[1]} columns; "
                             f"shape {tuple(shape)} needs {int(np.prod(shape))}")
        if idx is None:
            if len(acts) == 0:
                raise ValueError(f"layer {name!r} has no activations to average")
            rows = acts
        else:
            if idx.min() < 0 or idx.max() >= len(acts):
                bad = idx[(idx < 0) | (idx >= len(acts))][:5].tolist()
                raise IndexError(f"{what}: index out of range [0, {len(acts) - 1}]: {bad}")
            rows = acts[idx]
        means[name] = rows.mean(axis=0, dtype=np.float64).reshape(1, *shape)
    return means


def compute_mask_dict(activations: np.ndarray | Mapping[str, np.ndarray], neighbour_indices: Sequence[int],
                      layer_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Mean activation of the neighbours, per layer, shaped (1, C, H, W) float32 (targets
    for ``generate(..., mask_mode="blend")``).

    ``activations`` is either {layer: (N, D)} or one (N, sum D) array whose columns
    follow the order of ``layer_shapes``.
    """
    means = mean_activations(activations, neighbour_indices, layer_shapes)
    return {name: m.astype(np.float32) for name, m in means.items()}


def compute_direction_dict(activations: np.ndarray | Mapping[str, np.ndarray], set_a: Sequence[int],
                           set_b: Sequence[int] | None, layer_shapes: Mapping[str, Sequence[int]]
                           ) -> dict[str, np.ndarray]:
    """Per-layer direction mean(A) − mean(B), shaped (1, C, H, W) float32 (directions for
    ``generate(..., mask_mode="add")``).

    ``set_a`` and ``set_b`` are point indices into ``activations`` (same forms as
    :func:`compute_mask_dict`). ``set_b=None`` means "all points": the direction then
    points from the global mean towards A.
    """
    mean_a = mean_activations(activations, set_a, layer_shapes, what="set A points")
    mean_b = mean_activations(activations, set_b, layer_shapes, what="set B points")
    return {name: (mean_a[name] - mean_b[name]).astype(np.float32) for name in layer_shapes}
