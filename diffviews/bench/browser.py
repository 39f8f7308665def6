"""What a person waits for in the browser, at 4k, 100k and 1M synthetic points.

For each size an app process serves one synthetic model (``scale.synthetic_model``: the real
visualizer, handlers and page; only loading from disk is skipped) on 127.0.0.1, and headless
Debian chromium (Playwright, never a downloaded browser) times, from the action to the
visible result:

- ``page``: page open → the plot drawn with every point (fresh browser context each time);
- ``hover``: mouse moved onto a point → its preview text shown;
- ``click``: mouse released on a point → its red selection ring drawn (painted on the map's
  mark canvas, or in a checkout without one, drawn by Plotly);
- ``knn``: "Suggest KNN" clicked → the lime KNN rings drawn;
- ``lasso``: a box selection released → the cyan neighbour rings drawn.

The driver only uses element ids and the plot's own data, so ``code_root`` can point the app
process at another checkout (e.g. main, for the "before" numbers of the same run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from .soak import free_port
from .timing import rounded

SIZES = (4_000, 100_000, 1_000_000)
QUICK_SIZES = (4_000,)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 1000}
PLOT = "#umap-plot .js-plotly-plot"

#: a server process's start: ``vis`` holds one synthetic model of N points (argv: data dir, N, port)
SERVER_SETUP = """
import sys
from pathlib import Path
from diffviews.bench.scale import _serve_synthetic
from diffviews.visualization.visualizer import GradioVisualizer
data_dir, n, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
vis = GradioVisualizer(data_dir, device="cpu")
(name,) = _serve_synthetic(vis, data_dir, [n])
vis.default_model = name
vis.model(name)
"""
#: the app process: the app on that model
SERVER = SERVER_SETUP + """
from diffviews.visualization.app import create_gradio_app, launch_app
demo = create_gradio_app(vis, warmup=False)
launch_app(demo, host="127.0.0.1", port=port, quiet=True)
"""

# points of the map on screen: [index, x px, y px] (a sample of at most `limit`), and the plot box
POINTS_JS = """(limit) => {
  const gd = document.querySelector('PLOT');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const out = [];
  let total = 0;
  for (const t of gd._fullData) if (t.meta === 'pts') total += t.x.length;
  const step = Math.max(1, Math.floor(total / limit));
  let k = 0;
  for (const t of gd._fullData) {
    if (t.meta !== 'pts') continue;
    for (let j = 0; j < t.x.length; j++, k++) {
      if (k % step) continue;
      out.push([t.customdata[j], r.left + xa.l2p(t.x[j]), r.top + ya.l2p(t.y[j])]);
    }
  }
  return {points: out, box: [r.left, r.top, r.right, r.bottom]};
}""".replace("PLOT", PLOT)

DRAWN_JS = """(n) => {
  const gd = document.querySelector('PLOT');
  if (!gd || !gd._fullData || !gd.querySelector('.nsewdrag')) return false;
  let total = 0;
  for (const t of gd._fullData) if (t.meta === 'pts') total += t.x.length;
  return total === n && !!gd.querySelector('canvas');
}""".replace("PLOT", PLOT)

# the points ringed as `name` as a string ('' when none): painted on the mark canvas (gd.__dvMarks,
# set when the canvas is painted) or, in a checkout without it, drawn as a Plotly ring trace
RING_JS = """(name) => {
  const gd = document.querySelector('PLOT');
  const marks = gd && gd.__dvMarks;
  if (marks && marks[name]) return marks[name].join(',');
  const t = gd && gd._fullData ? gd._fullData.find(t => t.meta === 'ring' && t.name === name) : null;
  return t ? Array.from(t.customdata || []).join(',') : '';
}""".replace("PLOT", PLOT)


class _App:
    """The app process for one size (``code_root`` first on its path; ``server``: its code, argv as ``SERVER``'s)."""

    def __init__(self, data_dir: Path, n: int, code_root: Path, timeout: float = 600.0, server: str = SERVER):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", server, str(data_dir), str(n), str(self.port)],
                                     env=env, cwd=str(code_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app for {n} points exited: {self.proc.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=5).close()
                return
            except OSError:
                time.sleep(1.0)
        self.close()
        raise RuntimeError(f"the app for {n} points did not answer within {timeout:.0f} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: an action whose result is not shown within this long counts as missed (not timed)
ACTION_TIMEOUT_MS = 20_000


def _summary(times_ms: list[float], tried: int | None = None) -> dict:
    t = np.asarray(times_ms, dtype=float)
    out = {"p50_ms": rounded(np.percentile(t, 50), 1), "p95_ms": rounded(np.percentile(t, 95), 1),
           "max_ms": rounded(t.max(), 1), "actions": int(t.size)}
    if tried is not None:
        out["missed"] = int(tried - t.size)
    return out


def _open(browser, url: str, n: int, timeout_ms: int):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(DRAWN_JS, arg=n, timeout=timeout_ms, polling=50)
    return context, page, 1000 * (time.perf_counter() - t0)


def _wait_ring_change(page, name: str, before: str, timeout_ms: int) -> str:
    page.wait_for_function(f"([name, before]) => ({RING_JS})(name) !== before", arg=[name, before],
                           timeout=timeout_ms, polling="raf")
    return page.evaluate(RING_JS, name)


def _targets(page, count: int, seed: int) -> list[tuple[int, float, float]]:
    data = page.evaluate(POINTS_JS, 20000)
    left, top, right, bottom = data["box"]
    inside = [p for p in data["points"] if left + 20 < p[1] < right - 60 and top + 20 < p[2] < bottom - 60]
    rng = np.random.default_rng(seed)
    return [tuple(inside[i]) for i in rng.choice(len(inside), size=count, replace=len(inside) < count)]


def _hover(page, points, timeout_ms: int) -> list[float]:
    times = []
    for _, x, y in points:
        before = page.inner_text("#preview-info")
        page.mouse.move(x + 30, y + 30)
        t0 = time.perf_counter()
        page.mouse.move(x, y)
        try:
            page.wait_for_function("(b) => document.querySelector('#preview-info').innerText !== b", arg=before,
                                   timeout=timeout_ms, polling="raf")
        except Exception:  # noqa: BLE001 - the nearest point may be the one already shown: not an action
            continue
        times.append(1000 * (time.perf_counter() - t0))
    return times


def _click(page, points, timeout_ms: int) -> list[float]:
    times = []
    for _, x, y in points:
        before = page.evaluate(RING_JS, "selected")
        page.mouse.move(x, y)
        page.mouse.down()
        page.wait_for_timeout(120)  # plotly reports a click only when the button stays down a moment
        t0 = time.perf_counter()
        page.mouse.up()
        try:
            _wait_ring_change(page, "selected", before, timeout_ms)
        except Exception:  # noqa: BLE001 - the same point again: no change to see
            continue
        times.append(1000 * (time.perf_counter() - t0))
    return times


def _knn(page, actions: int, timeout_ms: int) -> list[float]:
    times = []
    for i in range(actions):
        page.fill("#knn-k input[type=number]", str(10 + i % 2))
        page.keyboard.press("Tab")
        before = page.evaluate(RING_JS, "knn")
        t0 = time.perf_counter()
        page.click("#knn-button")
        try:
            _wait_ring_change(page, "knn", before, timeout_ms)
        except Exception:  # noqa: BLE001 - not shown in time: a miss
            continue
        times.append(1000 * (time.perf_counter() - t0))
    return times


def _lasso(page, points, timeout_ms: int) -> list[float]:
    page.evaluate(f"() => window.Plotly.relayout(document.querySelector('{PLOT}'), {{dragmode: 'select'}})")
    page.wait_for_timeout(300)
    times = []
    for _, x, y in points:
        before = page.evaluate(RING_JS, "neighbours")
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 15, y + 8)
        page.mouse.move(x + 30, y + 16)
        t0 = time.perf_counter()
        page.mouse.up()
        try:
            _wait_ring_change(page, "neighbours", before, timeout_ms)
        except Exception:  # noqa: BLE001 - an empty box (or only known neighbours): nothing to show
            continue
        times.append(1000 * (time.perf_counter() - t0))
    return times


def measure_size(browser, url: str, n: int, actions: int, page_loads: int, timeout_ms: int) -> dict:
    loads = []
    for _ in range(page_loads):
        context, page, ms = _open(browser, url, n, timeout_ms)
        loads.append(ms)
        context.close()
    context, page, _ = _open(browser, url, n, timeout_ms)
    try:
        page.evaluate("() => window.scrollTo(0, 0)")
        pts = _targets(page, 3 * actions, seed=n)
        result = {"points": n, "page": _summary(loads)}
        wait = min(timeout_ms, ACTION_TIMEOUT_MS)
        for name, run in (("hover", lambda: _hover(page, pts[:actions], wait)),
                          ("click", lambda: _click(page, pts[actions:2 * actions], wait)),
                          ("knn", lambda: _knn(page, actions, wait)),
                          ("lasso", lambda: _lasso(page, pts[2 * actions:], wait))):
            times = run()
            tried = actions if name in ("hover", "click", "knn", "lasso") else None
            result[name] = _summary(times, tried) if times else {"error": "no action showed a result"}
        return result
    finally:
        context.close()


def measure(data_dir: Path, sizes=SIZES, actions: int = 20, page_loads: int = 20,
            code_root: Path | None = None, timeout_s: float = 120.0) -> dict:
    """{size: {"page"|"hover"|"click"|"knn"|"lasso": {p50_ms, p95_ms, max_ms, actions}}} for the
    app of ``code_root`` (default: this package's checkout)."""
    from playwright.sync_api import sync_playwright

    from .environment import load_average

    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    root = Path(code_root) if code_root else Path(__file__).resolve().parents[2]
    out = {"code_root": str(root), "chromium": CHROMIUM}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            out["chromium_version"] = browser.version
            for n in sizes:
                app = _App(Path(data_dir), int(n), root)
                try:
                    res = measure_size(browser, app.url, int(n), actions, page_loads, int(1000 * timeout_s))
                finally:
                    app.close()
                res["load_average"] = load_average()
                out[str(n)] = res
        finally:
            browser.close()
    return out
