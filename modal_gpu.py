"""Modal: the scale-to-zero GPU worker of the hybrid deployment (UI in ``modal_web.py``).

    modal deploy modal_gpu.py        # deploys the app "diffviews-gpu" with the class GPUWorker

One T4 container holds the models (loaded once per container in ``@modal.enter``) and
serves every backend operation (``generate``, ``extract_layer``, ``fit_umap`` with cuML on
the GPU, ``layer_shapes``, ``unload``) through one method, ``serve``: encoded request in,
encoded reply out (``diffviews.backends.worker.serve_request``, the loop every worker
shares). It scales to zero after ``GPU_SCALEDOWN_S`` idle seconds. The data directory lives
on the Volume "diffviews-data", mounted at /data and
shared with the web container. ``seed_layer`` serves ``scripts/seed_layer_cache.py --modal``.
"""

import modal

from diffviews.hosting import (
    GPU_SCALEDOWN_S,
    MODAL_DATA_DIR,
    MODAL_GPU,
    MODAL_GPU_APP,
    commit_volume,
    modal_image,
    modal_secrets,
    modal_volume,
    reload_volume,
)

app = modal.App(MODAL_GPU_APP)
volume = modal_volume()

#: everything the worker class is declared with (tests read it back)
WORKER_OPTIONS = dict(gpu=MODAL_GPU, image=modal_image("worker"), volumes={MODAL_DATA_DIR: volume},
                      secrets=modal_secrets(), scaledown_window=GPU_SCALEDOWN_S, timeout=900)


@app.cls(**WORKER_OPTIONS)
class GPUWorker:
    data_dir: str = modal.parameter(default=MODAL_DATA_DIR)

    @modal.enter()
    def load(self) -> None:
        """Load every model's weights once per container (onto the GPU when there is one)."""
        from diffviews.backends.local import LocalBackend
        from diffviews.data.layout import discover_models

        reload_volume(volume)
        self.backend = LocalBackend(self.data_dir)
        for model in discover_models(self.data_dir):
            self.backend.adapter(model)

    def _reload_on_layout_error(self, exc: Exception) -> bool:
        """A model the web container built after this one started: look at the volume again, retry."""
        from diffviews.data.layout import DataLayoutError

        if not isinstance(exc, DataLayoutError):
            return False
        reload_volume(volume)
        return True

    @modal.method()
    def serve(self, payload: bytes) -> bytes:
        """One encoded request (``diffviews.backends.wire``) in, the encoded reply out."""
        from diffviews.backends.worker import serve_request

        return serve_request(self.backend, payload, retry_if=self._reload_on_layout_error)

    @modal.method()
    def seed_layer(self, model: str, layer: str) -> str:
        """Build one layer on this GPU (the model folder too, for a bundled demo model that is
        missing) and upload it to the bucket; returns the status of ``r2_cache.seed_layer``."""
        from diffviews.data.build import build_model_data
        from diffviews.data.layout import discover_models
        from diffviews.data.r2_cache import LayerCache, seed_layer

        reload_volume(volume)
        if model not in discover_models(self.data_dir):
            build_model_data(self.data_dir, model, device=self.backend.device, progress=False)
        status = seed_layer(LayerCache(self.data_dir), model, layer, device=self.backend.device)
        commit_volume(volume)
        return status
