"""Hugging Face Spaces entry point (ZeroGPU or a plain GPU/CPU Space); also runs anywhere else.

    python app.py            # builds the demo data if missing, serves on :7860

The heavy work runs in the ``@spaces.GPU`` functions below, which ZeroGPU attaches a GPU
to for the length of one call (their ``duration`` is estimated from the request). They
take and return plain data (``wire.to_plain``), and ``SpacesBackend`` installs them as the
dispatch backend of ``diffviews.visualization.gpu_ops``. Without the ``spaces`` package the
decorator is a no-op and the same functions run in this process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from diffviews.hosting import DATA_DIR_ENV, build_ui, ensure_demo_data, start_warmup
from diffviews.visualization.gpu_ops import (
    ExtractionRequest,
    FitRequest,
    FitResult,
    GenerationRequest,
    GenerationResult,
    GPUBackend,
    LocalBackend,
    set_gpu_backend,
)
from diffviews.visualization.wire import from_plain, to_plain

try:
    import spaces
except ImportError:  # not on Spaces: the GPU functions run in this process
    spaces = None

log = logging.getLogger("diffviews.spaces")

DATA_DIR = Path(os.environ.get(DATA_DIR_ENV, "data"))
MAX_GPU_SECONDS = 120  # the longest ZeroGPU slot we ask for


def gpu(duration):
    """``@spaces.GPU(duration=...)`` on Spaces; elsewhere the function is left as it is."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def on_zero_gpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


# ---- the models, loaded once in the main process ------------------------------------------
# On ZeroGPU each GPU call runs in a short-lived fork of this process, so the weights are
# loaded (to "cuda", which ZeroGPU emulates until a GPU is attached) before serving, not
# lazily inside a GPU call where they would be loaded again every time.

_worker: LocalBackend | None = None


def worker() -> LocalBackend:
    """The in-process backend the GPU functions run on (configured by ``configure``)."""
    if _worker is None:
        raise RuntimeError("app.configure(data_dir) has not been called")
    return _worker


def configure(data_dir: str | Path = DATA_DIR, device: str | None = None) -> LocalBackend:
    """Load every model under ``data_dir`` and install ``SpacesBackend`` as the dispatch backend."""
    global _worker
    from diffviews.data.layout import discover_models

    _worker = LocalBackend(data_dir, device=device or ("cuda" if on_zero_gpu() else None))
    for model in discover_models(data_dir):
        _worker.adapter(model)
    set_gpu_backend(SpacesBackend())
    return _worker


# ---- GPU time per call: generous estimates for the bundled small models -----------------------

def _seconds(estimate: float) -> int:
    return int(min(MAX_GPU_SECONDS, max(10, estimate)))


def generation_seconds(request: dict) -> int:
    return _seconds(10 + 0.2 * request.get("num_steps", 20) * request.get("num_samples", 1))


def extraction_seconds(request: dict) -> int:
    images = np.asarray(request.get("images", np.empty((0,))))
    return _seconds(15 + len(images) * len(request.get("noise_levels", [])) * len(request.get("layers", [])) / 2000)


def fit_seconds(request: dict) -> int:
    return _seconds(20 + len(np.asarray(request.get("activations", np.empty((0,))))) / 5000)


# ---- the GPU functions (plain data in, plain data out) ------------------------------------------

@gpu(duration=generation_seconds)
def gpu_generate(request: dict) -> dict:
    return to_plain(worker().generate(from_plain(request)))


@gpu(duration=extraction_seconds)
def gpu_extract_layer(request: dict) -> dict:
    return to_plain(worker().extract_layer(from_plain(request)))


@gpu(duration=fit_seconds)
def gpu_fit_umap(request: dict) -> dict:
    return to_plain(worker().fit_umap(from_plain(request)))


@gpu(duration=10)
def gpu_layer_shapes(model: str) -> dict:
    return to_plain(worker().layer_shapes(model))  # one dummy forward pass, on the model's device


def cuml_installed() -> bool:
    return importlib.util.find_spec("cuml") is not None


class SpacesBackend(GPUBackend):
    """Dispatch through the ``@spaces.GPU`` functions. Map fits take a GPU slot only when
    cuML is installed; umap-learn runs on the CPU and would only waste GPU quota. Layer
    shapes are asked once per model (a ZeroGPU call forgets what it cached)."""

    name = "spaces"

    def __init__(self):
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    @property
    def fits_remotely(self) -> bool:
        """New maps are fitted in a GPU call only with cuML; otherwise in this process, where
        umap-learn's own transform then projects trajectories."""
        return cuml_installed()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return from_plain(gpu_generate(to_plain(request)))

    def extract_layer(self, request: ExtractionRequest) -> dict[str, np.ndarray]:
        return from_plain(gpu_extract_layer(to_plain(request)))

    def fit_umap(self, request: FitRequest) -> FitResult:
        if cuml_installed():
            return from_plain(gpu_fit_umap(to_plain(request)))
        return worker().fit_umap(request)

    def layer_shapes(self, model: str) -> dict[str, tuple[int, ...]]:
        if model not in self._shapes:
            self._shapes[model] = from_plain(gpu_layer_shapes(model))
        return dict(self._shapes[model])


def create_app(data_dir: str | Path = DATA_DIR, device: str | None = None):
    """Build the demo data if missing, load the models, install the backend; returns the gr.Blocks."""
    ensure_demo_data(data_dir)
    configure(data_dir, device)
    return build_ui(data_dir)


if __name__ == "__main__":
    from diffviews.visualization.app import launch_app

    logging.basicConfig(level=logging.INFO)
    start_warmup()
    launch_app(create_app(), host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
               port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
