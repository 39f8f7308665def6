"""Sweeps: one generation per value of one parameter, everything else (seed included) fixed,
so the row of results shows what that parameter alone does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .generator import GenerationResult, check_noise_window, generate
from .hooks import check_alpha

#: what a sweep can vary: the strength, or one bound of the noise window (in noise level %):
#: "window_start" is noise_window[0] (from %, the low-noise bound), "window_end" noise_window[1]
SWEEP_OVER = ("alpha", "window_start", "window_end")
MAX_SWEEP_VALUES = 32


def sweep_kwargs(over: str, value: float, generate_kwargs: dict) -> dict:
    """The keyword arguments of ``generate`` for one sweep value."""
    kw = dict(generate_kwargs)
    if over == "alpha":
        kw["alpha"] = value
        return kw
    if kw.get("mask_steps"):
        raise ValueError(f"a sweep over {over} sets noise_window; do not give mask_steps ({kw['mask_steps']})")
    start, end = kw.get("noise_window") or (0.0, 100.0)
    kw["noise_window"] = (value, end) if over == "window_start" else (start, value)
    return kw


def sweep(adapter, values: Sequence[float], over: str = "alpha", **generate_kwargs) -> list[GenerationResult]:
    """``generate(adapter, **generate_kwargs)`` once per value of ``over`` (one of
    ``SWEEP_OVER``), each with the same seed. A window sweep keeps the other bound of
    ``noise_window`` (default 0–100 %). Each result's params record ``sweep_over`` and
    ``sweep_value``."""
    if over not in SWEEP_OVER:
        raise ValueError(f"cannot sweep over {over!r}; choose one of {', '.join(SWEEP_OVER)}")
    values = [float(v) for v in values]
    if not 1 <= len(values) <= MAX_SWEEP_VALUES:
        raise ValueError(f"a sweep takes 1 to {MAX_SWEEP_VALUES} values, got {len(values)}")
    if not all(np.isfinite(values)):
        raise ValueError(f"sweep values must be finite numbers, got {values}")
    if over == "alpha" and not generate_kwargs.get("masks"):
        raise ValueError("a sweep over alpha needs masks: without them every value gives the same image")
    runs = [sweep_kwargs(over, value, generate_kwargs) for value in values]
    for kw in runs:  # every value is checked before the first (slow) generation
        check_alpha(kw.get("alpha", 1.0), kw.get("mask_mode", "blend"))
        if kw.get("noise_window") is not None:
            check_noise_window(kw["noise_window"])
    results = []
    for value, kw in zip(values, runs):
        r = generate(adapter, **kw)
        r.params.update(sweep_over=over, sweep_value=value)
        results.append(r)
    return results
