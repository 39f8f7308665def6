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


def compute_mask_dict(activations: np.ndarray | Mapping[str, np.ndarray], neighbour_indices: Sequence[int],
                      layer_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Mean activation of the neighbours, per layer, shaped (1, C, H, W) float32.

    ``activations`` is either {layer: (N, D)} or one (N, sum D) array whose columns
    follow the order of ``layer_shapes``.
    """
    idx = np.asarray(list(neighbour_indices), dtype=np.int64)
    if idx.size == 0:
        raise ValueError("no neighbours given: select at least one point to average")
    per_layer = activations if isinstance(activations, Mapping) else split_layers(activations, layer_shapes)
    masks = {}
    for name, shape in layer_shapes.items():
        if name not in per_layer:
            raise KeyError(f"no activations for layer {name!r}; have {', '.join(per_layer)}")
        acts = per_layer[name]
        if idx.min() < 0 or idx.max() >= len(acts):
            bad = idx[(idx < 0) | (idx >= len(acts))][:5].tolist()
            raise IndexError(f"neighbour index out of range [0, {len(acts) - 1}]: {bad}")
        if acts.shape[1] != int(np.prod(shape)):
            raise ValueError(f"layer {name!r}: activations have {acts.shape[1]} columns; "
                             f"shape {tuple(shape)} needs {int(np.prod(shape))}")
        masks[name] = acts[idx].astype(np.float64).mean(axis=0).astype(np.float32).reshape(1, *shape)
    return masks
