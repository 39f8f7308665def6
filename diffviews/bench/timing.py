"""Small measuring tools shared by the benchmark sections: latency percentiles, resident
memory, and running one measurement in a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

#: the last line a worker process prints starts with this, followed by its result as JSON
RESULT_PREFIX = "BENCH-RESULT "


def latency(fn: Callable[[int], object], calls: int) -> dict:
    """Call ``fn(i)`` for i in 0..calls-1 and summarise the wall time per call in ms."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times[i] = 1000.0 * (time.perf_counter() - t0)
    return {"p50_ms": rounded(np.percentile(times, 50)), "p95_ms": rounded(np.percentile(times, 95)),
            "mean_ms": rounded(times.mean()), "max_ms": rounded(times.max()), "calls": calls}


def seconds(fn: Callable[[], object]) -> tuple[float, object]:
    """``(wall seconds, fn())``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_seconds(fn: Callable[[int], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls ``fn(i)``, in seconds."""
    return float(np.median([seconds(lambda i=i: fn(i))[0] for i in range(max(1, repeats))]))


def rounded(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; elsewhere the peak from ``resource``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def emit_result(result: dict) -> None:
    """What a worker process ends with (``run_worker`` reads it back)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(module: str, args: Sequence[str], env: dict | None = None, timeout: float = 900.0) -> dict:
    """Run ``python -m module args...`` in a fresh process and return the result it emitted.

    ``env`` adds to (a value of None removes from) this process's environment. A worker that
    fails or prints no result raises RuntimeError with the end of its output."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"benchmark worker `python -m {module}` failed (exit code {proc.returncode}): {tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
