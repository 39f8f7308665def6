"""Modal: the CPU container serving the UI in the hybrid deployment (GPU work in ``modal_gpu.py``).

    modal deploy modal_gpu.py && modal deploy modal_web.py

One container (``max_containers=1``, so every browser session lands on the same process
and its per-session state) serves many concurrent requests (``@modal.concurrent``). Heavy
work goes to the deployed GPU worker, looked up by name; if that lookup fails, the page
says so and everything runs on this container's CPU instead (or, in an image without
torch, the app only browses the maps already built).
"""

from __future__ import annotations

import modal

from diffviews.hosting import (
    MODAL_DATA_DIR,
    MODAL_WEB_APP,
    WEB_SCALEDOWN_S,
    modal_image,
    modal_secrets,
    modal_volume,
)

app = modal.App(MODAL_WEB_APP)
volume = modal_volume()

#: the web function's declaration (tests read it back); no GPU here
WEB_OPTIONS = dict(image=modal_image("web"), volumes={MODAL_DATA_DIR: volume}, secrets=modal_secrets(),
                   max_containers=1, scaledown_window=WEB_SCALEDOWN_S, timeout=3600)
MAX_CONCURRENT_INPUTS = 100


def create_web_app(data_dir: str = MODAL_DATA_DIR, connect=None):
    """The FastAPI app: demo data ensured, the Modal GPU worker installed as backend (or the
    local fallback, with its notice on the page), the Gradio UI mounted at /."""
    from diffviews.hosting import (
        build_ui,
        commit_volume,
        connect_gpu_worker,
        ensure_demo_data,
        mount_on_fastapi,
        worker_or_local_backend,
    )

    ensure_demo_data(data_dir)
    commit_volume(volume)  # the GPU worker reads the same configs
    backend, notice = worker_or_local_backend(data_dir, connect or connect_gpu_worker)
    return mount_on_fastapi(build_ui(data_dir, backend, notice=notice))


@app.function(**WEB_OPTIONS)
@modal.concurrent(max_inputs=MAX_CONCURRENT_INPUTS)
@modal.asgi_app()
def web():
    from diffviews.hosting import start_warmup

    start_warmup()
    return create_web_app()
