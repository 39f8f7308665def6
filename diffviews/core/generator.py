"""generate(): one class-conditional sampling run with optional activation masking.

The intervention (blend towards targets, or add a signed direction; one or several
layers) is active while the step's noise level lies inside ``noise_window`` (universal %,
so the same window means the same thing for every model and step count), or, without a
window, during the first ``mask_steps`` steps (highest noise first). Intermediates
(denoised estimates, noised inputs, layer activations) are collected by a per-step
callback on the sampler loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import numpy as np
import torch

from .hooks import ActivationExtractor, ActivationMasker, check_alpha
from .sampling import NOISE_MODES, make_noise_sampler, sample
from .spec import GenerationResult


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → (B, H, W, C) uint8."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def noised_for_display(x: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> np.ndarray:
    """A noised input scaled so its per-sample spread fits the display range, then decoded
    to pixels (latent models show the decoded view of the scaled latent)."""
    std = x.flatten(1).std(dim=1).clamp(min=1.0).reshape(-1, 1, 1, 1)
    return to_uint8(decode(x / std))


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or int(value) != value or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer within [{lo}, {hi}], got {value!r}")
    return int(value)


#: slack (in noise level %) when comparing a step's level with the window bounds, so a bound
#: equal to a step's level counts as inside despite float32 sigmas
WINDOW_TOLERANCE = 1e-4


def check_noise_window(window) -> tuple[float, float]:
    """``(from_pct, to_pct)`` as floats, after checking 0 <= from <= to <= 100, both finite."""
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"noise_window must be two numbers (from %, to %), got {window!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not 0.0 <= lo <= hi <= 100.0:
        raise ValueError(f"noise_window must satisfy 0 <= from <= to <= 100 (noise level %), got {window!r}")
    return lo, hi


def mask_schedule(step_levels: np.ndarray, mask_steps: int = 0,
                  noise_window: tuple[float, float] | None = None) -> list[bool]:
    """Per step: is the intervention active? Inside ``noise_window`` (inclusive, in noise
    level %) when one is given, else during the first ``mask_steps`` steps."""
    step_levels = np.asarray(step_levels, dtype=np.float64)
    if noise_window is None:
        return [i < mask_steps for i in range(len(step_levels))]
    lo, hi = check_noise_window(noise_window)
    inside = (step_levels >= lo - WINDOW_TOLERANCE) & (step_levels <= hi + WINDOW_TOLERANCE)
    return [bool(v) for v in inside]


def generate(adapter, class_label: int | None = None, num_steps: int = 20, mask_steps: int = 0,
             noise_max: float = 100.0, noise_min: float = 0.0, guidance_scale: float = 1.0,
             noise_mode: str = "stochastic", seed: int = 0,
             masks: Mapping[str, np.ndarray | torch.Tensor] | None = None,
             extract_layers: Sequence[str] | None = None, num_samples: int = 1, alpha: float = 1.0,
             callback: Callable[[dict], None] | None = None, mask_mode: str = "blend",
             noise_window: tuple[float, float] | None = None) -> GenerationResult:
    """Sample ``num_samples`` images of ``class_label`` (None: unconditional).

    ``masks`` maps layer → (1, C, H, W) array; every layer in it is hooked. With
    ``mask_mode="blend"`` the arrays are targets, output = (1 - alpha)·own + alpha·target,
    alpha in [0, 1]; with ``mask_mode="add"`` they are directions, output = own +
    alpha·direction, alpha signed in [-10, 10].

    When the intervention is active: ``noise_window=(from_pct, to_pct)`` makes it active at
    every step whose noise level (universal %, of the step's input sigma) lies in
    [from_pct, to_pct], inclusive; without a window it is active for the first
    ``mask_steps`` steps. Giving both is an error. ``params["mask_schedule"]`` records the
    per-step on/off schedule that was applied. ``extract_layers`` are recorded at every step.
    """
    num_steps = _check_int("num_steps", num_steps, 1, 1000)
    mask_steps = _check_int("mask_steps", mask_steps, 0, num_steps)
    alpha = check_alpha(alpha, mask_mode)
    if noise_window is not None:
        if mask_steps:
            raise ValueError(f"give either mask_steps ({mask_steps}) or noise_window ({noise_window!r}), not both")
        noise_window = check_noise_window(noise_window)
    num_samples = _check_int("num_samples", num_samples, 1, 256)
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {noise_mode!r}; choose one of {', '.join(NOISE_MODES)}")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if class_label is None:
        label = adapter.null_class
    else:
        label = _check_int("class_label", class_label, 0, adapter.num_classes - 1)
    extract_layers = list(extract_layers or [])
    for layer in [*extract_layers, *(masks or {})]:
        adapter.get_layer_module(layer)  # raises with the list of known layers

    device = adapter.device
    gen = torch.Generator().manual_seed(int(seed))
    sigmas = adapter.get_timesteps(num_steps, noise_max, noise_min).to(device)
    x = adapter.get_initial_noise(num_samples, generator=gen, noise_max=noise_max)
    noise_sampler = make_noise_sampler(noise_mode, tuple(x.shape), gen, device)
    labels = torch.full((num_samples,), label, dtype=torch.long, device=device)
    sig = sigmas.cpu().numpy().astype(np.float64)
    levels = np.asarray(adapter.native_to_noise_level(np.maximum(sig, 0.0)), dtype=np.float64)
    schedule = mask_schedule(levels[:-1], mask_steps, noise_window) if masks else [False] * num_steps

    denoised_steps: list[np.ndarray] = []
    noised_steps: list[np.ndarray] = []
    traj: dict[str, list[np.ndarray]] = {layer: [] for layer in extract_layers}

    with ExitStack() as stack:
        # the masker is attached first, so the extractor records what the network really used
        # built whenever masks are given, so their shapes are checked even if the schedule is all off
        masker = stack.enter_context(ActivationMasker(adapter, masks, alpha, mask_mode)) if masks else None
        extractor = stack.enter_context(ActivationExtractor(adapter, extract_layers)) if extract_layers else None

        def denoise(x_t, sigma, i):
            if masker is not None:
                masker.enabled = schedule[i]
            return adapter.forward_with_cfg(x_t, sigma, labels, guidance_scale)

        def on_step(info: dict) -> None:
            denoised_steps.append(to_uint8(adapter.decode(info["denoised"])))
            noised_steps.append(noised_for_display(info["x"], adapter.decode))
            if extractor is not None:
                for layer, act in extractor.get_activations().items():
                    traj[layer].append(act[:num_samples].flatten(1).float().cpu().numpy())
            if callback is not None:
                callback(info)

        final = sample(denoise, adapter.step, x, sigmas, noise_sampler, on_step)

    return GenerationResult(
        images=to_uint8(adapter.decode(final)),
        denoised=np.stack(denoised_steps),
        noised=np.stack(noised_steps),
        trajectory={k: np.stack(v).astype(np.float32) for k, v in traj.items()},
        sigmas=sig,
        noise_levels=levels,
        params={"class_label": class_label, "num_steps": num_steps, "mask_steps": mask_steps,
                "noise_max": noise_max, "noise_min": noise_min, "guidance_scale": guidance_scale,
                "noise_mode": noise_mode, "seed": int(seed), "num_samples": num_samples, "alpha": alpha,
                "masked_layers": sorted(masks or {}), "mask_mode": mask_mode,
                "noise_window": list(noise_window) if noise_window is not None else None,
                "mask_schedule": schedule},
    )
