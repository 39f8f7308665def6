"""Forward hooks as context managers, in the spirit of TransformerLens' hook points.

``ActivationExtractor`` records named layers' outputs; ``ActivationMasker`` replaces (or
blends) them with fixed targets. Hooks are removed when the ``with`` block exits, also
when it exits with an error.

    with ActivationExtractor(adapter, ["mid"]) as ex:
        adapter.forward(x, sigma, labels)
    acts = ex.get_activations()          # {"mid": (B, C, H, W)}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch


def primary_output(output):
    """The tensor a layer's output stands for: ``output[0]`` when a block returns a tuple
    (diffusers down blocks return ``(hidden, residuals)``), else the output itself."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_primary_output(output, new: torch.Tensor):
    """``output`` with its primary tensor replaced by ``new``; the rest of a tuple unchanged."""
    return (new, *output[1:]) if isinstance(output, (tuple, list)) else new


class _HookContext(ABC):
    """Attaches one forward hook per named layer for the life of a ``with`` block."""

    def __init__(self, adapter, layers: Iterable[str]):
        self.adapter = adapter
        self.layers = list(dict.fromkeys(layers))
        self.modules = {name: adapter.get_layer_module(name) for name in self.layers}
        self._handles: list = []

    @abstractmethod
    def _make_hook(self, name: str) -> Callable:
        """The forward hook for layer ``name``."""

    def __enter__(self):
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)


class ActivationExtractor(_HookContext):
    """Records the output of each named layer on every forward pass (last one kept).

    ``on_activation(name, tensor)``, if given, is called for every recorded output,
    which is how per-step trajectories are collected without keeping every pass.
    """

    def __init__(self, adapter, layers: Iterable[str], detach: bool = True,
                 on_activation: Callable[[str, torch.Tensor], None] | None = None):
        super().__init__(adapter, layers)
        self.detach = detach
        self.on_activation = on_activation
        self._activations: dict[str, torch.Tensor] = {}

    def _make_hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            out = primary_output(output)
            out = out.detach() if self.detach else out
            self._activations[name] = out
            if self.on_activation is not None:
                self.on_activation(name, out)

        return hook

    def get_activations(self) -> dict[str, torch.Tensor]:
        return dict(self._activations)

    def clear(self) -> None:
        self._activations.clear()


MASK_MODES = ("blend", "add")
#: allowed strength per mode: blend interpolates towards a target, add scales a signed direction
ALPHA_RANGES = {"blend": (0.0, 1.0), "add": (-10.0, 10.0)}


def check_alpha(alpha: float, mode: str = "blend") -> float:
    """``alpha`` as a float, after checking ``mode`` and that alpha lies in the mode's range."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    lo, hi = ALPHA_RANGES[mode]
    if isinstance(alpha, bool) or not np.isfinite(float(alpha)) or not lo <= float(alpha) <= hi:
        raise ValueError(f"{mode} strength alpha must be within [{lo:g}, {hi:g}], got {alpha}")
    return float(alpha)


class ActivationMasker(_HookContext):
    """Edits each named layer's output with a fixed per-layer array while ``enabled``.

    ``masks`` maps layer → (1, *shape) or shape array/tensor (shape (C, H, W), or
    (tokens, C) for token-shaped layers), or a flattened (1, D) row, broadcast over the batch.
    ``mode="blend"``: the arrays are targets and the output becomes
    (1 - alpha)·own + alpha·target, alpha in [0, 1] (1 is plain replacement).
    ``mode="add"``: the arrays are directions and the output becomes own + alpha·direction,
    alpha signed in [-10, 10].
    """

    def __init__(self, adapter, masks: Mapping[str, np.ndarray | torch.Tensor], alpha: float = 1.0,
                 mode: str = "blend"):
        self.alpha = check_alpha(alpha, mode)
        self.mode = mode
        super().__init__(adapter, masks.keys())
        shapes = adapter.get_layer_shapes()
        self.enabled = True
        self.targets: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            t = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not torch.is_tensor(mask) else mask)
            t = t.to(device=adapter.device, dtype=torch.float32)
            if t.ndim == 2 and t.shape[0] == 1 and t.shape[1] == int(np.prod(shapes[name])):  # a flattened (1, D) row
                t = t.reshape(1, *shapes[name])
            elif tuple(t.shape) == tuple(shapes[name]):  # one sample without the batch axis
                t = t.unsqueeze(0)
            if tuple(t.shape[1:]) != tuple(shapes[name]) or t.shape[0] != 1:
                raise ValueError(f"mask for layer {name!r} has shape {tuple(t.shape)}; "
                                 f"expected (1, {', '.join(map(str, shapes[name]))})")
            self.targets[name] = t

    def _make_hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if not self.enabled:
                return None
            own = primary_output(output)
            target = self.targets[name].to(own.dtype).expand_as(own)
            if self.mode == "add":
                new = own + self.alpha * target
            elif self.alpha >= 1.0:
                new = target.clone()
            else:
                new = torch.lerp(own, target, self.alpha)
            return replace_primary_output(output, new)

        return hook


def run_with_cache(adapter, x: torch.Tensor, native, class_labels: torch.Tensor,
                   layers: Iterable[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass returning (denoised, {layer: activation}) — handy in notebooks."""
    layers = adapter.hookable_layers if layers is None else list(layers)
    with ActivationExtractor(adapter, layers) as ex, torch.no_grad():
        out = adapter.forward(x, native, class_labels)
    return out, ex.get_activations()
