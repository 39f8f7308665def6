"""Model adapters: one interface (GeneratorAdapter), many model families."""

from .base import GeneratorAdapter
from .edm_demo import EDMDemoAdapter
from .registry import get_adapter, list_adapters, register_adapter

register_adapter(EDMDemoAdapter.name, EDMDemoAdapter)

__all__ = ["GeneratorAdapter", "EDMDemoAdapter", "get_adapter", "list_adapters", "register_adapter"]
