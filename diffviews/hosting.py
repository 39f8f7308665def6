"""What the hosts share: Hugging Face Spaces (``app.py``), Modal hybrid (``modal_web.py`` +
``modal_gpu.py``) and Modal single-container (``modal_app.py``).

Host-agnostic helpers: make sure the demo data exists, build the Gradio UI (with an
optional notice, e.g. "the GPU worker is unreachable"), mount it on FastAPI. Modal
helpers: names, the data Volume, the R2 secret, and container images built from this
repository's ``pyproject.toml`` extras, so every image installs what the package declares.
Nothing here imports gradio, fastapi or modal until it is called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .backends import Backend, open_backend
from .data.layout import discover_models

log = logging.getLogger(__name__)

# ---- any host ----------------------------------------------------------------------------

DATA_DIR_ENV = "DIFFVIEWS_DATA_DIR"


def ensure_demo_data(data_dir: str | Path) -> list[str]:
    """The models under ``data_dir``; builds the bundled demo data first when there are none."""
    models = discover_models(data_dir)
    if not models:
        from .data.build import build_demo

        log.info("no models under %s: building the bundled demo data", data_dir)
        build_demo(data_dir, progress=False)
        models = discover_models(data_dir)
    return models


def make_visualizer(data_dir: str | Path, backend):
    """The app's visualizer over ``data_dir`` on ``backend``; layer switches read through the
    bucket layer cache when the environment configures one (``LayerCache.from_env``)."""
    from .data.r2_cache import LayerCache
    from .visualization.app import GradioVisualizer

    return GradioVisualizer(data_dir, backend=backend, layer_cache=LayerCache.from_env(data_dir))


def build_ui(data_dir: str | Path, backend, notice: str | None = None):
    """The DiffViews Gradio app over ``data_dir`` (a ``gr.Blocks``) on ``backend``, with
    ``notice`` shown if given."""
    from .visualization.app import create_gradio_app

    return create_gradio_app(make_visualizer(data_dir, backend), notice=notice)


def start_warmup() -> None:
    """Pay umap-learn's JIT compilation in a background thread while the app starts
    (entry points call this; a no-op where cuML does the fitting)."""
    from .processing.umap import warmup

    warmup(background=True)


def worker_or_local_backend(data_dir: str | Path, connect: Callable[[], Backend]) -> tuple[Backend, str | None]:
    """(backend, notice): the remote GPU worker ``connect()`` returns, or, when it cannot be
    reached, this container's own backend (``open_backend``: its CPU, or browse-only without
    torch); the notice (None on success) says what failed and is meant for the UI."""
    try:
        return connect(), None
    except Exception as exc:  # noqa: BLE001 - any failure to reach the worker means "run here"
        backend, local_notice = open_backend(data_dir, device="cpu")
        where = "this container's CPU, which is slower" if local_notice is None else "nowhere: " + local_notice
        notice = (f"the GPU worker ({MODAL_GPU_APP}/{MODAL_WORKER_CLASS}) could not be reached "
                  f"({type(exc).__name__}: {exc}); generation, layer extraction and map fitting run on {where}")
        log.warning(notice)
        return backend, notice


def connect_gpu_worker() -> Backend:
    """The deployed Modal GPU worker (``modal_gpu.py``) as a backend."""
    from .backends.modal_worker import connect_modal_worker

    return connect_modal_worker(MODAL_GPU_APP, MODAL_WORKER_CLASS)


def ui_options() -> dict:
    """Page-level options of the UI, which Gradio 6 takes at ``launch`` / mount time."""
    from .visualization.app import CUSTOM_CSS, serve_options

    return {"css": CUSTOM_CSS, **serve_options()}


def mount_on_fastapi(demo, path: str = "/"):
    """A FastAPI app serving ``demo`` at ``path`` (what a Modal ``@modal.asgi_app`` returns)."""
    import gradio as gr
    from fastapi import FastAPI

    return gr.mount_gradio_app(FastAPI(title="DiffViews"), demo, path=path, **ui_options())


# ---- Modal -------------------------------------------------------------------------------

MODAL_GPU_APP = "diffviews-gpu"  # modal_gpu.py: the scale-to-zero GPU worker
MODAL_WEB_APP = "diffviews-web"  # modal_web.py: the CPU container serving the UI
MODAL_SINGLE_APP = "diffviews"  # modal_app.py: everything in one GPU container
MODAL_WORKER_CLASS = "GPUWorker"
MODAL_VOLUME = "diffviews-data"
MODAL_DATA_DIR = "/data"
MODAL_GPU = "T4"
GPU_SCALEDOWN_S = 120  # the GPU worker scales to zero after this long idle
WEB_SCALEDOWN_S = 600
R2_SECRET_ENV = "DIFFVIEWS_MODAL_R2_SECRET"  # name of a Modal secret holding the R2_* variables
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
NVIDIA_INDEX = "https://pypi.nvidia.com"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: pyproject extras per image: the worker gets cuML/cupy and diffusers (real models), the web container
#: the UI (it never loads weights), the single one all of them
IMAGE_EXTRAS = {"worker": ("gpu", "r2", "diffusers"), "web": ("viz", "r2"), "single": ("viz", "gpu", "r2", "diffusers")}
#: the Hugging Face cache on the data Volume: Hub weights a data folder names (``hub:<id>`` in its
#: config.json) are downloaded once by a GPU container and reused by the next ones
HF_CACHE_DIR = f"{MODAL_DATA_DIR}/.hf-cache"


def modal_image(kind: str):
    """The container image for ``kind`` ("worker", "web" or "single"), with this package added."""
    import modal

    if kind not in IMAGE_EXTRAS:
        raise ValueError(f"unknown image kind {kind!r}; choose one of {', '.join(IMAGE_EXTRAS)}")
    image = modal.Image.debian_slim(python_version="3.11")
    if kind == "web":  # CPU-only torch: a much smaller image for the UI container
        image = image.pip_install("torch>=2.2,<3", index_url=TORCH_CPU_INDEX)
    image = image.pip_install_from_pyproject(str(PYPROJECT), optional_dependencies=list(IMAGE_EXTRAS[kind]),
                                             extra_index_url=NVIDIA_INDEX)
    # MALLOC_ARENA_MAX: one glibc heap per request thread only grows (see visualization.limits)
    return (image.env({DATA_DIR_ENV: MODAL_DATA_DIR, "HF_HOME": HF_CACHE_DIR, "MALLOC_ARENA_MAX": "2"})
            .add_local_python_source("diffviews", ignore=["**/*.pyc"]))  # .py files and the demo weights


def modal_volume():
    """The Volume holding the data directory (shared by the web and GPU containers)."""
    import modal

    return modal.Volume.from_name(MODAL_VOLUME, create_if_missing=True)


def modal_secrets() -> list:
    """The R2 secret named by ``DIFFVIEWS_MODAL_R2_SECRET`` at deploy time, or none."""
    import modal

    name = os.environ.get(R2_SECRET_ENV, "").strip()
    return [modal.Secret.from_name(name)] if name else []


def commit_volume(volume) -> None:
    """Persist writes to the Volume now (inside a Modal container; a no-op when run locally)."""
    import modal

    if not modal.is_local():
        volume.commit()


def reload_volume(volume) -> None:
    """See other containers' committed writes (inside a Modal container; a no-op locally)."""
    import modal

    if not modal.is_local():
        volume.reload()
