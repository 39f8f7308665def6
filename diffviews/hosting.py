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
from pathlib import Path

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


def build_ui(data_dir: str | Path, notice: str | None = None):
    """The DiffViews Gradio app over ``data_dir`` (a ``gr.Blocks``) on the installed dispatch
    backend, with ``notice`` shown if given. Layer switches read through the bucket layer
    cache when the environment configures one (``LayerCache.from_env``)."""
    from .data.r2_cache import LayerCache
    from .visualization.app import GradioVisualizer, create_gradio_app
    from .visualization.gpu_ops import get_gpu_backend

    visualizer = GradioVisualizer(data_dir, backend=get_gpu_backend(), layer_cache=LayerCache.from_env(data_dir))
    demo = create_gradio_app(visualizer)
    if notice:
        add_notice(demo, notice)
    return demo


def start_warmup() -> None:
    """Pay umap-learn's JIT compilation in a background thread while the app starts
    (entry points call this; a no-op where cuML does the fitting)."""
    from .processing.umap import warmup

    warmup(background=True)


def add_notice(demo, text: str):
    """Show ``text`` on every page load of ``demo``: a warning toast and a line on the page."""
    import gradio as gr

    def warn():
        gr.Warning(text)

    with demo:
        gr.Markdown(f"**Note:** {text}", elem_id="backend-notice")
        demo.load(warn, inputs=None, outputs=None)
    return demo


def ui_options() -> dict:
    """Page-level options of the UI, which Gradio 6 takes at ``launch`` / mount time."""
    from .visualization.app import CUSTOM_CSS

    return {"css": CUSTOM_CSS}


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
#: pyproject extras per image: the worker gets cuML/cupy, the web container the UI, the single one both
IMAGE_EXTRAS = {"worker": ("gpu", "r2"), "web": ("viz", "r2"), "single": ("viz", "gpu", "r2")}


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
    return (image.env({DATA_DIR_ENV: MODAL_DATA_DIR})
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
