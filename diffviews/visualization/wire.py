"""The wire format of the dispatch point: requests and results as plain data, pickle-free.

Two levels:

- ``to_plain`` / ``from_plain``: a dispatch dataclass ↔ nested dicts and lists of numpy
  arrays, numbers, strings, booleans and None (what a ``@spaces.GPU`` function or a Modal
  method receives and returns). Anything else (a torch tensor, an object array, a set, a
  dict with non-string keys) is refused with a ``WireError`` naming where it sits.
- ``encode`` / ``decode``: plain data ↔ one byte string: a JSON header followed by the raw
  array buffers (dtype and shape in the header). This is what crosses a pipe to a
  ``ProcessBackend`` worker; no pickle is involved anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import numpy as np

MAGIC = b"DVW1"
_PREFIX = struct.Struct("<4sQ")  # magic, header length
_ALLOWED_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_TYPE_KEY, _TUPLE_KEY, _ARRAY_KEY = "__dataclass__", "__tuple__", "__ndarray__"

_registry: dict[str, type] = {}
_DISPATCH_TYPES = ("GenerationRequest", "GenerationResult", "ExtractionRequest", "FitRequest", "FitResult")


class WireError(TypeError):
    """A value cannot cross the process boundary, or a received message is malformed."""


def register(cls: type) -> type:
    """Allow the dataclass ``cls`` on the wire (by its class name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    _registry[cls.__name__] = cls
    return cls


def _types() -> dict[str, type]:
    """The registered dataclasses; the dispatch dataclasses of gpu_ops are always among them
    (imported on first use, as gpu_ops imports the backends that import this module)."""
    if not all(name in _registry for name in _DISPATCH_TYPES):
        from . import gpu_ops

        for name in _DISPATCH_TYPES:
            register(getattr(gpu_ops, name))
    return _registry


def to_plain(obj: Any, where: str = "value") -> Any:
    """``obj`` as nested dicts/lists of numpy arrays, numbers, strings, booleans and None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in _ALLOWED_KINDS:
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise WireError(f"{where}: numpy array of dtype {obj.dtype} cannot cross the wire "
                            f"(allowed: bool, integer and float arrays)")
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _types().get(name) is not type(obj):
            raise WireError(f"{where}: dataclass {name} is not registered for the wire "
                            f"(registered: {', '.join(sorted(_registry))})")
        fields = {f.name: to_plain(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
        return {_TYPE_KEY: name, **fields}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise WireError(f"{where}: dict key {key!r} is not allowed (keys must be strings "
                                f"not starting with '__')")
            out[key] = to_plain(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, tuple):
        return {_TUPLE_KEY: [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise WireError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot cross the wire "
                    f"(allowed: numpy arrays, numbers, strings, lists, tuples, dicts, registered dataclasses)")


def from_plain(obj: Any, where: str = "value") -> Any:
    """The inverse of ``to_plain``: registered dataclasses and tuples are rebuilt."""
    if isinstance(obj, list):
        return [from_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    if _TUPLE_KEY in obj:
        return tuple(from_plain(v, f"{where}[{i}]") for i, v in enumerate(obj[_TUPLE_KEY]))
    if _TYPE_KEY in obj:
        name = obj[_TYPE_KEY]
        cls = _types().get(name)
        if cls is None:
            raise WireError(f"{where}: unknown dataclass {name!r} (registered: {', '.join(sorted(_registry))})")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: from_plain(v, f"{where}.{k}") for k, v in obj.items() if k != _TYPE_KEY}
        if set(values) - names:
            raise WireError(f"{where}: {name} has no field(s) {sorted(set(values) - names)}")
        return cls(**values)
    return {k: from_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}


def encode(obj: Any) -> bytes:
    """``obj`` (anything ``to_plain`` accepts) as one pickle-free byte string."""
    buffers: list[bytes] = []

    def strip_arrays(value):
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            buffers.append(arr.tobytes())
            return {_ARRAY_KEY: len(buffers) - 1, "dtype": arr.dtype.str, "shape": list(arr.shape)}
        if isinstance(value, dict):
            return {k: strip_arrays(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip_arrays(v) for v in value]
        return value

    header = json.dumps({"body": strip_arrays(to_plain(obj)), "buffers": [len(b) for b in buffers]},
                        separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(header)), header, *buffers])


def decode(data: bytes) -> Any:
    """The inverse of ``encode``; a malformed message raises ``WireError``."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise WireError(f"wire message of {len(view)} bytes is shorter than its {_PREFIX.size}-byte prefix")
    magic, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"wire message starts with {bytes(magic)!r}, expected {MAGIC!r}")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(view[_PREFIX.size:start]))
        sizes = [int(n) for n in header["buffers"]]
        body = header["body"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"malformed wire header: {exc}") from None
    if start + sum(sizes) != len(view):
        raise WireError(f"wire message has {len(view)} bytes; its header describes {start + sum(sizes)}")
    offsets = np.concatenate([[start], start + np.cumsum(sizes)]).astype(int)

    def restore_arrays(value):
        if isinstance(value, dict) and _ARRAY_KEY in value:
            i = value[_ARRAY_KEY]
            dtype, shape = np.dtype(value["dtype"]), tuple(value["shape"])
            if dtype.kind not in _ALLOWED_KINDS:
                raise WireError(f"wire array of dtype {dtype} is not allowed")
            raw = view[offsets[i]:offsets[i + 1]]
            if len(raw) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise WireError(f"wire array {i}: {len(raw)} bytes do not hold a {dtype} array of shape {shape}")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if isinstance(value, dict):
            return {k: restore_arrays(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore_arrays(v) for v in value]
        return value

    return from_plain(restore_arrays(body))
