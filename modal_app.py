"""Modal: the single-container variant, UI and model together on one T4 (for development).

    modal serve modal_app.py     # a live-reloading dev URL
    modal deploy modal_app.py

Simpler than the hybrid pair (``modal_web.py`` + ``modal_gpu.py``) but the GPU is billed
for as long as the UI container is up, idle or not.
"""

from __future__ import annotations

import modal

from diffviews.hosting import (
    MODAL_DATA_DIR,
    MODAL_GPU,
    MODAL_SINGLE_APP,
    WEB_SCALEDOWN_S,
    modal_image,
    modal_secrets,
    modal_volume,
)

app = modal.App(MODAL_SINGLE_APP)
volume = modal_volume()

#: the single container's declaration (tests read it back)
SINGLE_OPTIONS = dict(gpu=MODAL_GPU, image=modal_image("single"), volumes={MODAL_DATA_DIR: volume},
                      secrets=modal_secrets(), max_containers=1, scaledown_window=WEB_SCALEDOWN_S, timeout=3600)
MAX_CONCURRENT_INPUTS = 100


def create_single_app(data_dir: str = MODAL_DATA_DIR):
    """The FastAPI app: demo data ensured, an in-process LocalBackend (CUDA when present), the UI at /."""
    from diffviews.backends.local import LocalBackend
    from diffviews.hosting import build_ui, commit_volume, ensure_demo_data, mount_on_fastapi

    ensure_demo_data(data_dir)
    commit_volume(volume)
    return mount_on_fastapi(build_ui(data_dir, LocalBackend(data_dir)))


@app.function(**SINGLE_OPTIONS)
@modal.concurrent(max_inputs=MAX_CONCURRENT_INPUTS)
@modal.asgi_app()
def web():
    from diffviews.hosting import start_warmup

    start_warmup()
    return create_single_app()
