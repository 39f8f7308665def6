"""Record layer activations of real images noised to several noise levels.

Point order is noise-level-major: point ``j * N + i`` is sample ``i`` at
``noise_levels[j]``. Noise is drawn from one seeded generator, so the same inputs give
the same activations; each image really is noised (x + sigma * eps) before the forward.
Latent models take pixel images (what a data folder holds) and encode them with their VAE
first (``adapter.encode``, deterministic), batch by batch; arrays already in the model's
space are used as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .hooks import ActivationExtractor, _HookContext


class _ForwardDone(Exception):
    """Raised by ``_StopAfter``'s hook: every recorded layer has run; the rest of the pass is not needed."""


class _StopAfter(_HookContext):
    """Ends a forward pass once each named layer has run (``run``). The first pass runs whole
    and counts each layer's calls; later passes stop early only when each ran exactly once."""

    def __init__(self, adapter, layers):
        super().__init__(adapter, layers)
        self.calls = dict.fromkeys(self.layers, 0)
        self.armed = False

    def _make_hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            self.calls[name] += 1
            if self.armed and all(self.calls.values()):
                raise _ForwardDone

        return hook

    def run(self, forward: Callable[..., object], *args) -> None:
        """``forward(*args)``, cut short after the last named layer once armed."""
        self.calls = dict.fromkeys(self.layers, 0)
        try:
            forward(*args)
        except _ForwardDone:
            return
        self.armed = all(count == 1 for count in self.calls.values())


@torch.no_grad()
def extract_activations(adapter, images: np.ndarray, labels: np.ndarray, noise_levels: Sequence[float],
                        layers: Sequence[str], seed: int = 0, batch_size: int = 256,
                        progress: Callable[[int, int], None] | None = None,
                        out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``images`` (N, C, H, W) float32 in the model's range → {layer: (len(levels) * N, D) float32}.
    For a latent model ``images`` may be pixels in [-1, 1] (N, image_channels, image_resolution,
    image_resolution): they are encoded first. ``out`` gives the arrays to write into, batch by
    batch (e.g. memory-mapped ``.npy`` files, so nothing bigger than a batch is held in memory);
    missing layers are allocated."""
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    model_space = (adapter.channels, adapter.resolution, adapter.resolution)
    pixel_space = (adapter.image_channels, adapter.image_resolution, adapter.image_resolution)
    encode = images.ndim == 4 and images.shape[1:] == pixel_space != model_space
    if images.ndim != 4 or not (encode or images.shape[1:] == model_space):
        also = "" if pixel_space == model_space else f" or pixels (N, {', '.join(map(str, pixel_space))})"
        raise ValueError(f"images have shape {images.shape}; expected (N, {', '.join(map(str, model_space))})"
                         f"{also}")
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    n, layers = len(images), list(layers)
    shapes = adapter.get_layer_shapes()
    out = dict(out or {})
    for layer in layers:
        want = (len(noise_levels) * n, int(np.prod(shapes[layer])))
        if layer not in out:
            out[layer] = np.empty(want, dtype=np.float32)
        elif tuple(out[layer].shape) != want:
            raise ValueError(f"out[{layer!r}] has shape {tuple(out[layer].shape)}; expected {want}")
    gen = torch.Generator().manual_seed(int(seed))
    total, done = len(noise_levels) * n, 0
    if encode:  # once, not at every noise level
        images = np.concatenate([adapter.encode(torch.from_numpy(images[s:s + batch_size]).to(adapter.device))
                                 .float().cpu().numpy() for s in range(0, n, batch_size)])
    # the extractor's hooks are attached first, so they record before the stop hook fires
    with ActivationExtractor(adapter, layers) as ex, _StopAfter(adapter, layers) as stop:
        for j, level in enumerate(noise_levels):
            sigma = adapter.noise_level_to_native(float(level))
            for start in range(0, n, batch_size):
                x0 = torch.from_numpy(images[start:start + batch_size]).to(adapter.device)
                eps = torch.randn(x0.shape, generator=gen).to(adapter.device)
                y = torch.from_numpy(labels[start:start + batch_size]).to(adapter.device)
                x = adapter.add_noise(x0, sigma, eps)
                stop.run(adapter.forward, x, sigma, y)
                rows = slice(j * n + start, j * n + start + len(x0))
                for layer, act in ex.get_activations().items():
                    out[layer][rows] = act.flatten(1).float().cpu().numpy()
                done += len(x0)
                if progress is not None:
                    progress(done, total)
    return out
