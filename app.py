"""Hugging Face Spaces entry point (ZeroGPU or a plain GPU/CPU Space); also runs anywhere else.

    python app.py            # builds the demo data if missing, serves on :7860

The heavy work runs in the ``@spaces.GPU`` function ``gpu_serve`` below, which ZeroGPU
attaches a GPU to for the length of one call (its ``duration`` is estimated from the
request's header). It is the transport of the app's ``RemoteBackend``: an encoded request
in, ``worker.serve_request`` on the in-process ``LocalBackend``, an encoded reply out.
Without the ``spaces`` package the decorator is a no-op and the same function runs in
this process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

from diffviews.backends.local import LocalBackend
from diffviews.backends.remote import RemoteBackend
from diffviews.backends.wire import read_metadata
from diffviews.backends.worker import serve_request
from diffviews.hosting import DATA_DIR_ENV, build_ui, ensure_demo_data, start_warmup

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


def configure(data_dir: str | Path = DATA_DIR, device: str | None = None) -> RemoteBackend:
    """Load every model under ``data_dir``; returns the app's backend (``gpu_serve`` as transport)."""
    global _worker
    from diffviews.data.layout import discover_models

    models = discover_models(data_dir)
    # ZeroGPU forks this process per GPU call: every model stays loaded here (max_resident)
    _worker = LocalBackend(data_dir, device=device or ("cuda" if on_zero_gpu() else None),
                           max_resident=max(1, len(models)))
    for model in models:
        _worker.adapter(model)
    # map fits take a GPU slot only with cuML; umap-learn runs on the CPU and would waste GPU quota
    return RemoteBackend(gpu_serve, name="spaces", fits_remotely=cuml_installed())


# ---- GPU time per call: generous estimates for the bundled small models -----------------------

def _seconds(estimate: float) -> int:
    return int(min(MAX_GPU_SECONDS, max(10, estimate)))


def gpu_seconds(payload: bytes) -> int:
    """ZeroGPU slot length for one request, from its header only (operation and array shapes)."""
    header = read_metadata(payload)
    body = json.loads(header.get("__metadata__", {}).get("diffviews", "{}"))
    op, request = body.get("op"), body.get("payload")
    request = request if isinstance(request, dict) else {}
    shapes = {name: math.prod(spec.get("shape", [])) for name, spec in header.items()
              if name != "__metadata__" and isinstance(spec, dict)}

    def rows(field: str) -> int:  # the first dimension of a request's array field
        ref = request.get(field)
        name = ref.get("__array__") if isinstance(ref, dict) else None
        spec = header.get(name, {}) if name else {}
        return int(spec.get("shape", [0])[0]) if spec.get("shape") else 0

    if op == "generate":
        return _seconds(10 + 0.2 * request.get("num_steps", 20) * request.get("num_samples", 1))
    if op == "extract_layer":
        return _seconds(15 + rows("images") * len(request.get("noise_levels", [])) * len(request.get("layers", []))
                        / 2000)
    if op == "fit_umap":
        return _seconds(20 + rows("activations") / 5000)
    return _seconds(10 + sum(shapes.values()) / 1e8)


@gpu(duration=gpu_seconds)
def gpu_serve(payload: bytes) -> bytes:
    """One encoded request on the in-process models (a ZeroGPU call on Spaces)."""
    return serve_request(worker(), payload)


def cuml_installed() -> bool:
    return importlib.util.find_spec("cuml") is not None


def create_app(data_dir: str | Path = DATA_DIR, device: str | None = None):
    """Build the demo data if missing, load the models, make the backend; returns the gr.Blocks."""
    ensure_demo_data(data_dir)
    return build_ui(data_dir, configure(data_dir, device))


if __name__ == "__main__":
    from diffviews.visualization.app import launch_app

    logging.basicConfig(level=logging.INFO)
    start_warmup()
    launch_app(create_app(), host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
               port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
