"""Take README's screenshot (docs/screenshot.png) of the app on the demo data.

    python scripts/take_screenshot.py --data-dir data --model digits --out docs/screenshot.png

Launches the app on 127.0.0.1 (a free port) in this process, drives Debian's headless
chromium (``/usr/bin/chromium``; Playwright never downloads a browser) through a short
session: select a point (``Point #`` + ``Select``), suggest its k nearest neighbours,
generate from them, hover a step of the new trajectory; then saves the top of the page
(map, selection, neighbours, the generation and its denoising steps) as a PNG and
stops the app. The data directory is used as it is (the layer must already be built).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
TIMEOUT_MS = 300_000
# a screen box (x0, y0, x1, y1) around the overlays (rings, trajectory), 1/zoom of the plot's size
ZOOM_BOX_JS = """(zoom) => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const xs = [], ys = [];
  for (const t of gd._fullData) {
    if (t.meta === 'pts') continue;
    for (let k = 0; k < t.x.length; k++) { xs.push(xa.l2p(t.x[k])); ys.push(ya.l2p(t.y[k])); }
  }
  const cx = (Math.min(...xs) + Math.max(...xs)) / 2, cy = (Math.min(...ys) + Math.max(...ys)) / 2;
  const w = Math.max(r.width / zoom, Math.max(...xs) - Math.min(...xs) + 80);
  const h = Math.max(r.height / zoom, Math.max(...ys) - Math.min(...ys) + 80);
  const x0 = Math.min(Math.max(cx - w / 2, 0), r.width - w), y0 = Math.min(Math.max(cy - h / 2, 0), r.height - h);
  return [r.left + x0, r.top + y0, r.left + x0 + w, r.top + y0 + h];
}"""  # a generation on a busy CPU, with umap's JIT compiled on first use


def default_point(vis, model: str, class_name: str) -> int:
    """The first point of ``class_name`` at the model's lowest noise level (the clearest image)."""
    md = vis.model(model)
    if class_name not in md.class_names:
        raise SystemExit(f"error: unknown class {class_name!r} for {model}; classes: {', '.join(md.class_names)}")
    rows = np.flatnonzero((md.metadata.class_label == md.class_names.index(class_name)) & (md.level_rank == 0))
    return int(rows[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_page(browser, url: str, width: int):
    """A page of ``width`` px on the app, once its map is drawn."""
    page = browser.new_page(viewport={"width": width, "height": 1000}, device_scale_factor=1)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#umap-plot .js-plotly-plot .nsewdrag")
    return page


def fill_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def drive(url: str, out: Path, point: int, k: int, steps: int, seed: int, width: int, zoom: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, width)

            def set_number(elem_id: str, value) -> None:
                fill_number(page, elem_id, value)

            set_number("point-index", point)
            page.locator("#select-point-button").click()
            page.wait_for_function(f"() => document.querySelector('#selected-info').innerText.startsWith('#{point} ')")
            set_number("knn-k", k)
            page.locator("#knn-button").click()
            page.wait_for_function(f"() => document.querySelectorAll('#neighbor-gallery img').length === {k}")
            set_number("gen-steps", steps)
            set_number("window-from", 50)
            set_number("gen-seed", seed)
            page.locator("#generate-button").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Generated')",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function(f"() => [...document.querySelectorAll('#steps-gallery img')]"
                                   f".filter(i => i.complete && i.naturalWidth > 0).length === {steps}")
            # fold the generation settings (the result stays in view) and zoom the map moderately
            # around the selection, its neighbours and the trajectory (a box drag, as a person would)
            page.locator("button.label-wrap", has_text="Generate from neighbours").click()
            page.evaluate("() => window.scrollTo(0, 0)")
            box = page.evaluate(ZOOM_BOX_JS, zoom)
            page.mouse.move(box[0], box[1])
            page.mouse.down()
            page.mouse.move(box[2], box[3], steps=8)
            page.mouse.up()
            page.wait_for_selector(".plotly-notifier .notifier-note", state="detached")  # "double-click to zoom out"
            # hover a step in the middle of the trajectory: its image shows in the preview
            x, y = page.evaluate("""(step) => {
              const gd = document.querySelector('#umap-plot .js-plotly-plot');
              const t = gd._fullData.find(t => (t.meta || '').startsWith('traj:') && t.mode === 'lines+markers');
              const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
              return [r.left + gd._fullLayout.xaxis.l2p(t.x[step]), r.top + gd._fullLayout.yaxis.l2p(t.y[step])];
            }""", steps // 2)
            page.mouse.move(x + 20, y + 20)
            page.mouse.move(x, y, steps=4)
            page.wait_for_function("() => document.querySelector('#preview-info').innerText.includes('generation')")
            page.wait_for_timeout(500)  # let the preview image paint
            bottom = page.evaluate("() => document.querySelector('#steps-gallery').getBoundingClientRect().bottom")
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, int(bottom) + 16)))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    print(f"saved {out} ({image.width}×{image.height}, {out.stat().st_size // 1024} KB)")


def serve(data_dir: str, model: str, run) -> int:
    """Launch the app on ``data_dir`` (127.0.0.1, a free port), call ``run(url, visualizer)``, stop it."""
    if not os.access(CHROMIUM, os.X_OK):
        print(f"error: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2

    from diffviews.visualization.app import GradioVisualizer, create_gradio_app, launch_app

    vis = GradioVisualizer(data_dir, device="cpu", max_resident_models=1, default_model=model)
    demo = create_gradio_app(vis)
    port = free_port()
    launch_app(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        run(f"http://127.0.0.1:{port}/", vis)
    finally:
        demo.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="built data directory (default: data)")
    p.add_argument("--model", default="digits", help="model to show (default: digits)")
    p.add_argument("--point", type=int, default=None, help="point to select (default: first of --class at the "
                                                             "lowest noise level)")
    p.add_argument("--class", dest="class_name", default="3", help="class of the default point (default: 3)")
    p.add_argument("--k", type=int, default=10, help="neighbours to suggest (default 10)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=1400, help="browser window width in px (default 1400)")
    p.add_argument("--zoom", type=float, default=2.2, help="map zoom around the selection and trajectory "
                                                            "(1 = whole map; default 2.2)")
    p.add_argument("--out", default="docs/screenshot.png")
    args = p.parse_args(argv)

    def run(url, vis):
        point = default_point(vis, args.model, args.class_name) if args.point is None else args.point
        drive(url, Path(args.out), point, args.k, args.steps, args.seed, args.width, args.zoom)

    return serve(args.data_dir, args.model, run)


if __name__ == "__main__":
    sys.exit(main())
