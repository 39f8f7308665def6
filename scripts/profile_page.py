"""Where one page load of the app goes: a timeline of network requests and page milestones.

    flock /work/heavy.lock env PYTHONPATH=$PWD python scripts/profile_page.py DATA_DIR --points 4000 [--loads 3]
        [--code-root /work/main]

Serves a synthetic map of N points (as ``bench.browser`` does), opens the page in a fresh
headless Chromium context and prints, in ms from navigation start: each request's start and
end (the page, the big JS chunks, the plotly chunk, queue/load calls) and the page's own
milestones: DOMContentLoaded, the plot div present, the first ``plotly_afterplot``, every
point drawn (``bench.browser``'s test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from diffviews.bench.browser import CHROMIUM, CHROMIUM_ARGS, DRAWN_JS, PLOT, SERVER_SETUP, VIEWPORT, _App

#: records when the plot div appears and plotly's first afterplot, in performance.now() ms
PROBE_JS = """
(() => {
  const marks = window.__dvMarks = {};
  const seen = () => {
    const gd = document.querySelector('PLOT');
    if (gd && !marks.plotDiv) marks.plotDiv = performance.now();
    if (window.Plotly && !marks.plotlyGlobal) marks.plotlyGlobal = performance.now();
    if (gd && typeof gd.on === 'function' && !gd.__dvProbe) {
      gd.__dvProbe = true;
      gd.on('plotly_afterplot', () => {
        if (!marks.afterplot) marks.afterplot = performance.now(); else marks.afterplotLast = performance.now();
        marks.afterplotCount = (marks.afterplotCount || 0) + 1;
      });
      gd.on('plotly_relayout', () => { marks.relayoutCount = (marks.relayoutCount || 0) + 1; });
    }
  };
  new MutationObserver(seen).observe(document, {childList: true, subtree: true});
  const tick = () => { seen(); if (!marks.afterplot) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  document.addEventListener('DOMContentLoaded', () => { marks.domContentLoaded = performance.now(); });
})();
""".replace("PLOT", PLOT)


def _short(url: str) -> str:
    tail = url.split("/", 3)[-1]
    return tail if len(tail) < 70 else tail[:67] + "..."


#: the floor: a bare Blocks holding only a gr.Plot of the same figure (argv as bench.browser.SERVER's)
FLOOR_SERVER = SERVER_SETUP + """
import gradio as gr
from diffviews.visualization import callbacks as cb
session = cb.initial_session(vis)
with gr.Blocks() as demo:
    gr.Plot(cb.figure(vis, session), show_label=False, elem_id="umap-plot")
demo.launch(server_name="127.0.0.1", server_port=port, quiet=True)
"""

#: main-thread events worth naming in the busy summary
TRACE_CATEGORIES = "devtools.timeline,v8.execute,disabled-by-default-devtools.timeline,blink.user_timing"


def _busy(trace_path: Path, t_base_us: float, bucket_ms: int = 100) -> dict:
    """Main-thread busy ms per bucket (from navigation start) and the longest tasks, from a Chrome trace."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    main = {k for k, v in names.items() if v == "CrRendererMain"}
    tasks, inner = [], []
    for e in events:
        if (e.get("pid"), e.get("tid")) not in main or e.get("ph") != "X" or "dur" not in e:
            continue
        start = (e["ts"] - t_base_us) / 1000
        if start < 0:
            continue
        if e["name"] == "RunTask":
            tasks.append((start, e["dur"] / 1000))
        elif e["dur"] >= 30_000:
            inner.append((round(start), round(e["dur"] / 1000), e["name"],
                          str(e.get("args", {}).get("data", {}).get("url", ""))[-40:]))
    merged: list[list[float]] = []  # nested RunTasks (a task within a task) count once
    for start, dur in sorted(tasks):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + dur)
        else:
            merged.append([start, start + dur])
    buckets: dict[int, float] = {}
    for t, end in merged:
        while t < end:
            b = int(t // bucket_ms)
            part = min(end, (b + 1) * bucket_ms) - t
            buckets[b] = buckets.get(b, 0.0) + part
            t += part
    busy = " ".join(f"{round(buckets.get(b, 0)):d}" for b in range(max(buckets) + 1)) if buckets else ""
    return {f"busy_ms per {bucket_ms} ms": busy, "long events (start, ms, name, url)": sorted(inner)[:60]}


def profile_once(browser, url: str, n: int, show_all: bool, trace: Path | None = None) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    if trace:
        browser.start_tracing(page=page, path=str(trace), categories=TRACE_CATEGORIES.split(","))
    page.add_init_script(PROBE_JS)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    reqs: dict[str, dict] = {}
    base: list[float] = []

    def on_request(ev):
        if not base:
            base.append(ev["timestamp"])
        reqs[ev["requestId"]] = {"url": ev["request"]["url"], "start": ev["timestamp"], "type": ev.get("type")}

    def on_response(ev):
        r = reqs.get(ev["requestId"])
        if r is not None:
            r["ttfb"] = ev["timestamp"]

    def on_finished(ev):
        r = reqs.get(ev["requestId"])
        if r is not None:
            r["end"] = ev["timestamp"]
            r["bytes"] = ev.get("encodedDataLength", 0)

    cdp.on("Network.requestWillBeSent", on_request)
    cdp.on("Network.responseReceived", on_response)
    cdp.on("Network.loadingFinished", on_finished)
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(DRAWN_JS, arg=n, timeout=120_000, polling=50)
    drawn_ms = 1000 * (time.perf_counter() - t0)
    marks = page.evaluate("() => window.__dvMarks")
    if trace:
        browser.stop_tracing()
    context.close()
    b = base[0] if base else 0.0
    rows = []
    for r in sorted(reqs.values(), key=lambda r: r["start"]):
        size = r.get("bytes", 0)
        name = _short(r["url"])
        interesting = (size > 200_000 or "Plotly" in name or "gradio_api" in name or "config" in name
                       or r["url"].rstrip("/").count("/") <= 2)
        if show_all or interesting:
            rows.append({"url": name, "start": round(1000 * (r["start"] - b)),
                         "ttfb": round(1000 * (r.get("ttfb", r["start"]) - b)),
                         "end": round(1000 * (r.get("end", r["start"]) - b)), "kB": round(size / 1024)})
    out = {"drawn_ms (goto → all points)": round(drawn_ms), "requests": len(reqs),
           "marks (performance.now)": {k: round(v) for k, v in sorted(marks.items(), key=lambda kv: kv[1])},
           "timeline": rows}
    if trace:  # CDP timestamps are seconds on the same monotonic clock as the trace's microseconds
        out.update(_busy(trace, b * 1e6))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--points", type=int, default=4000)
    p.add_argument("--loads", type=int, default=2)
    p.add_argument("--code-root", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--all", action="store_true", help="every request, not only the big or API ones")
    p.add_argument("--floor", action="store_true", help="a bare Blocks with only the gr.Plot, not the app")
    p.add_argument("--trace", default=None, help="write a Chrome trace of the last load here and summarise it")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    server = {"server": FLOOR_SERVER} if args.floor else {}
    app = _App(Path(args.data_dir), args.points, Path(args.code_root), **server)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for i in range(args.loads):
                    trace = Path(args.trace) if args.trace and i == args.loads - 1 else None
                    res = profile_once(browser, app.url, args.points, args.all, trace)
                    print(json.dumps({"load": i, **res}, indent=1))
            finally:
                browser.close()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
