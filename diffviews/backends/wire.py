"""The wire format of the backends: requests and results as bytes, pickle-free.

Two levels:

- ``to_plain`` / ``from_plain``: a request/result dataclass ↔ nested dicts and lists of
  numpy arrays, numbers, strings, booleans and None. Anything else (a torch tensor, an
  object array, a set, a dict with non-string keys) is refused with a ``WireError`` naming
  where it sits. A dataclass field left at its default is not sent, so a peer that does not
  know a newer field still decodes the message; a field it does not know is an error.
- ``encode`` / ``decode``: plain data ↔ one byte string in the safetensors format
  (``safetensors.numpy``): the arrays are its tensors, and the structure around them is JSON
  in its text metadata. ``decode`` of anything malformed raises ``WireError`` and nothing
  else; nesting deeper than ``MAX_DEPTH`` is refused.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from .protocol import REQUEST_TYPES

__all__ = ["WireError", "register", "to_plain", "from_plain", "encode", "decode", "read_metadata", "MAX_DEPTH"]

MAX_DEPTH = 32
_ALLOWED_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_TYPE_KEY, _TUPLE_KEY, _ARRAY_KEY = "__dataclass__", "__tuple__", "__array__"
_BODY_KEY = "diffviews"  # the safetensors metadata entry holding the JSON structure
_HEADER_LEN = struct.Struct("<Q")

_registry: dict[str, type] = {}


class WireError(TypeError):
    """A value cannot cross the process boundary, or a received message is malformed."""


def register(cls: type) -> type:
    """Allow the dataclass ``cls`` on the wire (by its class name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    _registry[cls.__name__] = cls
    return cls


for _cls in REQUEST_TYPES:
    register(_cls)


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    """``value`` equals the field's default (only plain values and empty containers count)."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return False
    plain = (type(None), bool, int, float, str, dict, list, tuple)
    return type(value) is type(default) and isinstance(value, plain) and value == default


def _check_depth(depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"{where}: nested deeper than {MAX_DEPTH} levels")


def to_plain(obj: Any, where: str = "value", _depth: int = 0) -> Any:
    """``obj`` as nested dicts/lists of numpy arrays, numbers, strings, booleans and None."""
    _check_depth(_depth, where)
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, np.generic) and obj.dtype.kind in _ALLOWED_KINDS:
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise WireError(f"{where}: numpy array of dtype {obj.dtype} cannot cross the wire "
                            f"(allowed: bool, integer and float arrays)")
        return obj
    depth = _depth + 1
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _registry.get(name) is not type(obj):
            raise WireError(f"{where}: dataclass {name} is not registered for the wire "
                            f"(registered: {', '.join(sorted(_registry))})")
        fields = {f.name: to_plain(getattr(obj, f.name), f"{where}.{f.name}", depth)
                  for f in dataclasses.fields(obj) if not _is_default(f, getattr(obj, f.name))}
        return {_TYPE_KEY: name, **fields}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise WireError(f"{where}: dict key {key!r} is not allowed (keys must be strings "
                                f"not starting with '__')")
            out[key] = to_plain(value, f"{where}[{key!r}]", depth)
        return out
    if isinstance(obj, tuple):
        return {_TUPLE_KEY: [to_plain(v, f"{where}[{i}]", depth) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]", depth) for i, v in enumerate(obj)]
    raise WireError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot cross the wire "
                    f"(allowed: numpy arrays, numbers, strings, lists, tuples, dicts, registered dataclasses)")


def from_plain(obj: Any, where: str = "value", _depth: int = 0) -> Any:
    """The inverse of ``to_plain``: registered dataclasses and tuples are rebuilt."""
    _check_depth(_depth, where)
    depth = _depth + 1
    if isinstance(obj, list):
        return [from_plain(v, f"{where}[{i}]", depth) for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    if _TUPLE_KEY in obj:
        items = obj[_TUPLE_KEY]
        if not isinstance(items, list) or len(obj) != 1:
            raise WireError(f"{where}: malformed tuple {obj!r:.80}")
        return tuple(from_plain(v, f"{where}[{i}]", depth) for i, v in enumerate(items))
    if _TYPE_KEY in obj:
        name = obj[_TYPE_KEY]
        cls = _registry.get(name) if isinstance(name, str) else None
        if cls is None:
            raise WireError(f"{where}: unknown dataclass {name!r} (registered: {', '.join(sorted(_registry))})")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: from_plain(v, f"{where}.{k}", depth) for k, v in obj.items() if k != _TYPE_KEY}
        if set(values) - names:
            raise WireError(f"{where}: {name} has no field(s) {sorted(set(values) - names)} here "
                            f"(a newer peer set them; this side does not know them)")
        try:
            return cls(**values)
        except TypeError as exc:
            raise WireError(f"{where}: cannot build {name}: {exc}") from None
    return {k: from_plain(v, f"{where}[{k!r}]", depth) for k, v in obj.items()}


def encode(obj: Any) -> bytes:
    """``obj`` (anything ``to_plain`` accepts) as one pickle-free byte string."""
    arrays: dict[str, np.ndarray] = {}

    def strip_arrays(value):
        if isinstance(value, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = np.ascontiguousarray(value)
            return {_ARRAY_KEY: name}
        if isinstance(value, dict):
            return {k: strip_arrays(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip_arrays(v) for v in value]
        return value

    body = json.dumps(strip_arrays(to_plain(obj)), separators=(",", ":"))
    return save_arrays(arrays, metadata={_BODY_KEY: body})


def read_metadata(data: bytes) -> dict:
    """The safetensors header of a message (array names → dtype/shape, plus ``__metadata__``)
    without reading the arrays: what a caller needs to size a request cheaply."""
    try:
        (length,) = _HEADER_LEN.unpack_from(data)
        if length > len(data) - _HEADER_LEN.size:
            raise ValueError(f"header of {length} bytes in a message of {len(data)}")
        header = json.loads(bytes(data[_HEADER_LEN.size:_HEADER_LEN.size + length]))
    except (struct.error, ValueError, TypeError, RecursionError) as exc:
        raise WireError(f"malformed wire message: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"malformed wire message: its header is a {type(header).__name__}, not an object")
    return header


def decode(data: bytes) -> Any:
    """The inverse of ``encode``; anything malformed raises ``WireError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"a wire message is bytes, got {type(data).__name__}")
    data = bytes(data)
    meta = read_metadata(data).get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(_BODY_KEY), str):
        raise WireError(f"malformed wire message: no {_BODY_KEY!r} entry in its metadata")
    try:
        arrays = load_arrays(data)
        body = json.loads(meta[_BODY_KEY])
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors, bad JSON, too deep: all one kind here
        raise WireError(f"malformed wire message: {type(exc).__name__}: {exc}") from None
    used: set[str] = set()

    def restore_arrays(value, depth: int):
        _check_depth(depth, "message")
        if isinstance(value, dict) and _ARRAY_KEY in value:
            name = value[_ARRAY_KEY]
            if len(value) != 1 or not isinstance(name, str) or name not in arrays or name in used:
                raise WireError(f"malformed wire message: bad array reference {value!r:.80}")
            used.add(name)
            arr = arrays[name]
            if arr.dtype.kind not in _ALLOWED_KINDS:
                raise WireError(f"wire array of dtype {arr.dtype} is not allowed")
            return arr
        if isinstance(value, dict):
            return {k: restore_arrays(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [restore_arrays(v, depth + 1) for v in value]
        return value

    restored = restore_arrays(body, 0)
    if used != set(arrays):
        raise WireError(f"malformed wire message: arrays {sorted(set(arrays) - used)} are not referenced")
    return from_plain(restored)
