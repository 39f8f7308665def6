"""Layer activations on disk: ``activations/<layer>.npy`` holding an (N, D) float32 array,
and ``activations/<layer>.json`` beside it describing it:

    {"layer": "mid", "shape": [64, 4, 4], "dtype": "float32", "N": 4000, "D": 1024,
     "noise_levels": [...], "seed": 0, ...}

``shape`` is one sample's layer output (C, H, W); D is its product. Both files are
written to temporary names and renamed into place, so a crash leaves either the old
pair or a pair that fails validation, never a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .layout import DataLayoutError, ModelPaths, read_json_object

DTYPE = "float32"


def save_activations(paths: ModelPaths, layer: str, array: np.ndarray, meta: dict | None = None,
                     *, shape: tuple[int, ...] | None = None) -> Path:
    """Write ``array`` (N, D) as float32 plus its sidecar; returns the .npy path.

    ``shape`` is one sample's layer output shape (C, H, W) (``meta["shape"]`` also works);
    without either it is recorded as (D,).
    """
    arr = np.ascontiguousarray(array, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"activations for layer {layer!r} must be 2-D (N, D), got shape {arr.shape}")
    meta = dict(meta or {})
    shape = tuple(int(s) for s in (shape if shape is not None else meta.pop("shape", (arr.shape[1],))))
    meta.pop("shape", None)
    if int(np.prod(shape)) != arr.shape[1]:
        raise ValueError(f"layer {layer!r}: per-sample shape {shape} has {int(np.prod(shape))} values "
                         f"but the activations have D = {arr.shape[1]}")
    sidecar = {**meta, "layer": layer, "shape": list(shape), "dtype": DTYPE,
               "N": int(arr.shape[0]), "D": int(arr.shape[1])}
    npy, side = paths.activations(layer), paths.activations_sidecar(layer)
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy, tmp_side = _tmp(npy), _tmp(side)
    try:
        with open(tmp_npy, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp_npy, npy)
        os.replace(tmp_side, side)
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return npy


def read_sidecar(paths: ModelPaths, layer: str) -> dict:
    """The validated ``<layer>.json`` sidecar."""
    side = paths.activations_sidecar(layer)
    meta = read_json_object(side, "activations sidecar", f" (expected beside {paths.activations(layer).name})")
    for key in ("layer", "shape", "dtype", "N", "D"):
        if key not in meta:
            raise DataLayoutError(f"activations sidecar {side} lacks required key {key!r} "
                                  f"(required: layer, shape, dtype, N, D)")
    if meta["dtype"] != DTYPE:
        raise DataLayoutError(f"activations sidecar {side} says dtype {meta['dtype']!r}; expected {DTYPE!r}")
    if meta["layer"] != layer:
        raise DataLayoutError(f"activations sidecar {side} describes layer {meta['layer']!r}; expected {layer!r}")
    ok_ints = all(isinstance(meta[k], int) and not isinstance(meta[k], bool) and meta[k] >= 0 for k in ("N", "D"))
    ok_shape = isinstance(meta["shape"], list) and all(isinstance(s, int) and s > 0 for s in meta["shape"])
    if not (ok_ints and ok_shape) or int(np.prod(meta["shape"])) != meta["D"]:
        raise DataLayoutError(f"activations sidecar {side}: N, D must be non-negative integers and "
                              f"prod(shape) must equal D (got N={meta['N']!r}, D={meta['D']!r}, "
                              f"shape={meta['shape']!r})")
    return meta


def load_activations(paths: ModelPaths, layer: str, expected_rows: int | None = None,
                     mmap: bool = True) -> np.ndarray:
    """The (N, D) float32 activations of ``layer``, checked against the sidecar and,
    when given, ``expected_rows`` (the metadata's row count)."""
    meta = read_sidecar(paths, layer)
    npy = paths.activations(layer)
    want = (meta["N"], meta["D"])
    if not npy.is_file():
        raise DataLayoutError(f"missing activations file {npy} (sidecar expects a {want} {DTYPE} array)")
    try:
        arr = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # truncated or not an .npy at all: numpy raises several types
        raise DataLayoutError(f"cannot read activations file {npy} (truncated or corrupt?): {exc}; "
                              f"expected a {want} {DTYPE} array") from None
    if not isinstance(arr, np.ndarray):
        raise DataLayoutError(f"activations file {npy} holds {type(arr).__name__}, expected one array")
    if arr.dtype != np.float32:
        raise DataLayoutError(f"activations file {npy} has dtype {arr.dtype}; expected {DTYPE}")
    if arr.shape != want:
        raise DataLayoutError(f"activations file {npy} has shape {arr.shape}; its sidecar expects {want}")
    if expected_rows is not None and arr.shape[0] != int(expected_rows):
        raise DataLayoutError(f"activations file {npy} has {arr.shape[0]} rows; expected {int(expected_rows)} "
                              f"(one per metadata row in {paths.metadata})")
    return arr


def activations_valid(paths: ModelPaths, layer: str, expected_rows: int | None = None) -> bool:
    try:
        load_activations(paths, layer, expected_rows=expected_rows, mmap=True)
    except DataLayoutError:
        return False
    return True


def list_layers(paths: ModelPaths) -> list[str]:
    """Layers with an activations sidecar in this model folder, sorted (not validated)."""
    if not paths.activations_dir.is_dir():
        return []
    return sorted(p.stem for p in paths.activations_dir.glob("*.json") if p.with_suffix(".npy").exists())


def delete_activations(paths: ModelPaths, layer: str) -> None:
    paths.activations(layer).unlink(missing_ok=True)
    paths.activations_sidecar(layer).unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
