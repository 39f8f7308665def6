"""Time from starting the app process to the first served page, and the import cost.

``python -m diffviews.visualization.app`` is started on a free 127.0.0.1 port and its page
is requested every 50 ms until it answers 200; then its log is watched for the end of the
background umap warm-up (until then the first map fit would still compile). The app is
then stopped (this process started it, so it ends it by its process id).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .soak import free_port, stop_process_group
from .timing import rounded

#: what the app logs when its background umap warm-up has finished
WARMUP_DONE = "JIT warm-up done"
#: the app as it was before our speed-ups: no kernel cache, umap-learn's own neighbours, full warm-up
BEFORE_ENV = {"DIFFVIEWS_JIT_CACHE": "0", "DIFFVIEWS_EXACT_KNN": "0", "DIFFVIEWS_WARMUP_LARGE": "1"}
IMPORT_SNIPPET = ("import time; t0 = time.perf_counter(); import {module}; "
                  "print(time.perf_counter() - t0)")


def _env() -> dict:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def import_seconds(module: str) -> float:
    """Seconds to import ``module`` in a fresh interpreter (interpreter start-up excluded)."""
    out = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET.format(module=module)], capture_output=True,
                         text=True, env=_env(), check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def launch_timings(data_dir: Path, model: str, env: dict | None = None, timeout: float = 300.0) -> dict:
    """Start the app; seconds until its first page answers 200 (``first_page_s``) and until its
    background umap warm-up logs that it is done (``warmup_done_s``; None if not within ``timeout``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "diffviews.visualization.app", "--data-dir", str(data_dir), "--model", model,
           "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"]
    log = tempfile.TemporaryFile()  # the app's log (a file: a full pipe would stall it)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**_env(), **(env or {})},
                            start_new_session=True)

    def log_text() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        first_page = None
        while first_page is None:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode} before serving a page: "
                                   f"{log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        first_page = time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if first_page is None and time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the app served no page at {url} within {timeout:.0f} s")
            time.sleep(0.05)
        warmup_done = None
        while time.perf_counter() - t0 < timeout and proc.poll() is None:
            if WARMUP_DONE in log_text():
                warmup_done = time.perf_counter() - t0
                break
            time.sleep(0.1)
        return {"first_page_s": rounded(first_page, 2), "warmup_done_s": warmup_done and rounded(warmup_done, 1)}
    finally:
        stop_process_group(proc)
        log.close()


def measure(data_dir: Path, model: str, quick: bool = False) -> dict:
    """First page and warm-up end, import of the app module; the full run adds the app as it
    was before our speed-ups (``*_before_s``) and torch's, gradio's and umap's imports alone."""
    result = launch_timings(data_dir, model)
    result["import_app_s"] = rounded(import_seconds("diffviews.visualization.app"), 2)
    if not quick:
        before = launch_timings(data_dir, model, env=BEFORE_ENV)
        result.update(first_page_before_s=before["first_page_s"], warmup_done_before_s=before["warmup_done_s"])
        for name in ("torch", "gradio", "umap"):
            result[f"import_{name}_s"] = rounded(import_seconds(name), 2)
    return result
