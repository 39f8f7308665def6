"""Shared fixtures.

``tiny_data_dir``: a data directory holding ``digits/`` built ONCE per test session by the
real pipeline (bundled digits weights, 60 samples × 3 noise levels = 180 points, layer
"mid", its 2-D map). Treat it as read-only; copy it (``shutil.copytree``) to change it.
"""

from __future__ import annotations

import pytest

TINY_MODEL = "digits"
# one torch thread: tiny batches gain nothing from more, and shared cores stall them
TINY_BUILD = {"num_samples": 60, "noise_levels": [80.0, 50.0, 20.0], "seed": 0, "progress": False, "threads": 1}


@pytest.fixture(scope="session", autouse=True)
def _session_temp_dir(tmp_path_factory):
    """Temp files of this session (and of the processes it starts) go under pytest's own base
    folder, which pytest prunes: gradio_client, for one, leaves a folder per downloaded file."""
    import os
    import tempfile

    path = tmp_path_factory.mktemp("tmp")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(path), str(path)
    yield path
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]


@pytest.fixture(scope="session")
def tiny_build_kwargs() -> dict:
    """The keyword arguments ``tiny_data_dir`` was built with (for re-runs of the build)."""
    return dict(TINY_BUILD)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    from diffviews.data.build import build_model_data

    root = tmp_path_factory.mktemp("tiny_data")
    build_model_data(root, TINY_MODEL, **TINY_BUILD)
    return root


# ---- the web app, launched once per session (tests/test_app_api.py, browser tests) -------------

APP_SECOND_MODEL = "shapes"
APP_SECOND_BUILD = {"num_samples": 30, "noise_levels": [80.0, 40.0], "seed": 0, "progress": False}


@pytest.fixture(scope="session")
def app_data_dir(tiny_data_dir, tmp_path_factory):
    """A writable data directory for the app: a copy of ``tiny_data_dir``'s digits plus a
    tiny shapes model (30 samples × 2 noise levels = 60 points, layer "mid")."""
    import shutil

    from diffviews.data.build import build_model_data

    root = tmp_path_factory.mktemp("app_data")
    shutil.copytree(tiny_data_dir / TINY_MODEL, root / TINY_MODEL)
    build_model_data(root, APP_SECOND_MODEL, **APP_SECOND_BUILD)
    return root


@pytest.fixture(scope="session")
def running_app(app_data_dir):
    """The DiffViews app launched ONCE per test session on 127.0.0.1 (a free port), one
    resident model at a time. Yields a namespace: url, data_dir, visualizer, demo."""
    import socket
    from types import SimpleNamespace

    from diffviews.backends.local import LocalBackend
    from diffviews.visualization.app import GradioVisualizer, create_gradio_app, launch_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    visualizer = GradioVisualizer(app_data_dir, backend=LocalBackend(app_data_dir, device="cpu"), max_resident_models=1,
                                  default_model=TINY_MODEL)
    demo = create_gradio_app(visualizer, warmup=False)  # the build above already compiled umap's JIT
    launch_app(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", data_dir=app_data_dir, visualizer=visualizer,
                              demo=demo)
    finally:
        demo.close()


# ---- a headless browser, one per session (tests/test_browser.py) ------------------------------

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (installed by .ci/run); Playwright never downloads one
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright's sync API, launched once per session.
    Skips (with the reason) when chromium or Playwright is missing."""
    import os

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# ---- tiny random models of every diffusers family (tests/test_diffusers_adapters.py, ...) -----

@pytest.fixture(scope="session")
def tiny_diffusers_models(tmp_path_factory) -> dict:
    """{family: (folder, adapter)} for every key of TINY_FAMILIES."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    import torch

    from diffviews.bench.tiny_diffusers import TINY_FAMILIES, build_tiny_family

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_diffusers")
    return {family: build_tiny_family(root, family) for family in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_diffusers_folders(tiny_diffusers_models) -> dict:
    """{family: saved model folder} (read-only: copy one to change it)."""
    return {family: folder for family, (folder, _) in tiny_diffusers_models.items()}


@pytest.fixture(scope="session")
def tiny_diffusers_adapters(tiny_diffusers_models) -> dict:
    """{family: loaded adapter} (shared: do not change their state)."""
    return {family: adapter for family, (_, adapter) in tiny_diffusers_models.items()}
