"""Model adapters: one interface (GeneratorAdapter), many model families.

The diffusers families (``diffusers-unet``, ``dit``, ``sd-unet``) are registered here
without importing diffusers: it is imported when such a model is loaded.
"""

from .base import GeneratorAdapter
from .diffusers_base import DiffusersAdapter, adapter_for_model
from .diffusers_unet import DiffusersUNetAdapter
from .dit import DiTAdapter
from .edm_demo import EDMDemoAdapter
from .registry import get_adapter, list_adapters, register_adapter
from .sd_unet import SDUNetAdapter

register_adapter(EDMDemoAdapter.name, EDMDemoAdapter)
for _cls in (DiffusersUNetAdapter, DiTAdapter, SDUNetAdapter):
    register_adapter(_cls.name, _cls)

__all__ = ["GeneratorAdapter", "EDMDemoAdapter", "DiffusersAdapter", "DiffusersUNetAdapter", "DiTAdapter",
           "SDUNetAdapter", "adapter_for_model", "get_adapter", "list_adapters", "register_adapter"]
