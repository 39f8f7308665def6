"""Where the numbers were measured: machine, library versions and the compute backend."""

from __future__ import annotations

import os
import platform
from importlib import metadata as importlib_metadata

PACKAGES = ("diffviews", "numpy", "torch", "scikit-learn", "umap-learn", "numba", "pynndescent", "scipy",
            "gradio", "plotly", "cuml-cu12", "cupy-cuda12x")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe() -> dict:
    """Machine, versions and backend (which UMAP, which torch device and thread count)."""
    import torch

    from ..processing.umap_backend import FORCE_CPU_ENV, JIT_CACHE_ENV, jit_cache_wanted, select_backend

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                    "memory_gib": _memory_gib(), "gpu": gpu, "load_average_at_start": load_average()},
        "versions": _versions(),
        "backend": {"umap": select_backend(), "torch_device": "cuda" if gpu else "cpu",
                    "torch_threads": torch.get_num_threads(), "numba_jit_disk_cache": jit_cache_wanted(),
                    FORCE_CPU_ENV: os.environ.get(FORCE_CPU_ENV), JIT_CACHE_ENV: os.environ.get(JIT_CACHE_ENV)},
    }
