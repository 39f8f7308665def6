"""Adapter registry: built-in adapters plus third-party ones from the entry-point group
``diffviews.adapters`` (``name = "package.module:AdapterClass"``)."""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import GeneratorAdapter

ENTRY_POINT_GROUP = "diffviews.adapters"
_REGISTRY: dict[str, type[GeneratorAdapter]] = {}
_entry_points_loaded = False


def register_adapter(name: str, cls: type[GeneratorAdapter] | None = None):
    """Register ``cls`` under ``name``; usable as a decorator: ``@register_adapter("x")``."""

    def _register(adapter_cls: type[GeneratorAdapter]) -> type[GeneratorAdapter]:
        if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, GeneratorAdapter)):
            raise TypeError(f"adapter {name!r} must be a GeneratorAdapter subclass, got {adapter_cls!r}")
        _REGISTRY[name] = adapter_cls
        return adapter_cls

    return _register if cls is None else _register(cls)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            register_adapter(ep.name, ep.load())
        except Exception as exc:  # a broken plug-in must not take the app down
            import warnings

            warnings.warn(f"could not load adapter entry point {ep.name!r} ({ep.value}): {exc}", stacklevel=2)


def list_adapters() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_adapter(name: str) -> type[GeneratorAdapter]:
    """The adapter class registered as ``name``."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(f"unknown adapter {name!r}; known adapters: {known}") from None
