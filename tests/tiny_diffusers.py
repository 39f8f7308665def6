"""pytest fixtures: a tiny random model of every diffusers family, built ONCE per session
from the real classes (diffviews.bench.tiny_diffusers), saved as safetensors folders and
loaded through its adapter. Import the fixtures into a test module to use them:

    from tiny_diffusers import adapters_fixture, folders_fixture, models_fixture  # noqa: F401

then ask for ``tiny_diffusers_folders`` / ``tiny_diffusers_adapters`` in a test's arguments.
(Fixtures are registered under ``name=`` so the imported names never shadow arguments.)
"""

from __future__ import annotations

import pytest
import torch

from diffviews.bench.tiny_diffusers import TINY_FAMILIES, build_tiny_family


@pytest.fixture(scope="session", name="tiny_diffusers_models")
def models_fixture(tmp_path_factory) -> dict:
    """{family: (folder, adapter)} for every key of TINY_FAMILIES."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_diffusers")
    return {family: build_tiny_family(root, family) for family in TINY_FAMILIES}


@pytest.fixture(scope="session", name="tiny_diffusers_folders")
def folders_fixture(tiny_diffusers_models) -> dict:
    """{family: saved model folder} (read-only: copy one to change it)."""
    return {family: folder for family, (folder, _) in tiny_diffusers_models.items()}


@pytest.fixture(scope="session", name="tiny_diffusers_adapters")
def adapters_fixture(tiny_diffusers_models) -> dict:
    """{family: loaded adapter} (shared: do not change their state)."""
    return {family: adapter for family, (_, adapter) in tiny_diffusers_models.items()}
