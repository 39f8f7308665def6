"""Take README's steering and map-honesty screenshots (docs/sweep.png, docs/honesty.png).

    python scripts/take_steering_screenshots.py --data-dir data --model digits

Launches the app on 127.0.0.1 in this process and drives Debian's headless chromium (as
``take_screenshot.py`` does): a selection of another class becomes set B, a point of
``--class`` with its k nearest neighbours is set A, then an ``add``-mode sweep over α with one
seed, generating set B's class. ``sweep.png``: the map with every sweep trajectory and the sweep's grid and chart.
``honesty.png``: the map (its quality in the title), the status with the KNN agreement line,
and the hover preview of an extrapolated (hollow) trajectory step.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image
from take_screenshot import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, default_point, fill_number, open_page, serve


def save(png: bytes, out: Path, box: tuple[int, int, int, int], width: int) -> None:
    """Crop, scale to ``width`` px and save as an optimised PNG."""
    image = Image.open(io.BytesIO(png)).convert("RGB").crop(box)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    print(f"saved {out} ({image.width}×{image.height}, {out.stat().st_size // 1024} KB)")


def drive(url: str, out_dir: Path, a: int, b: int, b_class: str, k: int, steps: int, values: str,
          width: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, 1400)

            def set_number(elem_id: str, value) -> None:
                fill_number(page, elem_id, value)

            def select(point: int) -> None:
                set_number("point-index", point)
                page.locator("#select-point-button").click()
                page.wait_for_function(f"() => document.querySelector('#selected-info').innerText"
                                       f".startsWith('#{point} ')")
                set_number("knn-k", k)
                page.locator("#knn-button").click()
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('nearest')")

            select(b)
            page.locator("#set-b-button").click()
            page.wait_for_function("() => document.querySelector('#set-b-info').innerText.includes('point(s)')")
            page.locator("#gen-mode label", has_text="add").click()
            values_box = page.locator("#sweep-values textarea, #sweep-values input").first
            page.wait_for_function("() => document.querySelector('#sweep-values textarea, #sweep-values input')"
                                   ".value.startsWith('-2')")  # the mode's defaults arrived; now ours
            values_box.fill(values)
            values_box.press("Tab")
            set_number("gen-steps", steps)
            field = page.locator("#gen-class input")  # generate set B's class, steered towards set A
            field.click()
            field.fill(b_class)
            page.get_by_role("option", name=b_class, exact=True).wait_for()
            field.press("ArrowDown")
            field.press("Enter")
            select(a)
            page.locator("#sweep-button").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Sweep over')",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("() => document.querySelector('#sweep-chart .js-plotly-plot') !== null")
            page.wait_for_timeout(800)
            page.locator("button.label-wrap", has_text="Generate from neighbours").click()
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(500)
            rect = page.evaluate("() => { const r = document.querySelector('#sweep-chart')"
                                 ".closest('.block, .gradio-accordion') ?? document.querySelector('#sweep-chart');"
                                 " const p = document.querySelector('#umap-plot').getBoundingClientRect();"
                                 " const s = document.querySelector('#sweep-gallery').getBoundingClientRect();"
                                 " const c = document.querySelector('#sweep-chart').getBoundingClientRect();"
                                 " return [p.top, Math.max(s.bottom, c.bottom) + window.scrollY]; }")
            png = page.screenshot(full_page=True)
            full = Image.open(io.BytesIO(png))
            save(png, out_dir / "sweep.png", (0, int(rect[0]) - 8, full.width, int(rect[1]) + 8), width)
            # honesty: KNN agreement in the status, hover an extrapolated step of the last sweep value
            page.locator("#knn-button").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('also among')")
            page.evaluate("() => window.scrollTo(0, 0)")
            x, y = page.evaluate("""() => {
              const gd = document.querySelector('#umap-plot .js-plotly-plot');
              const ts = gd._fullData.filter(t => t.name === 'extrapolated');
              const t = ts[ts.length - 1];
              const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
              return [r.left + gd._fullLayout.xaxis.l2p(t.x[0]), r.top + gd._fullLayout.yaxis.l2p(t.y[0])];
            }""")
            page.mouse.move(x + 20, y + 20)
            page.mouse.move(x, y, steps=4)
            page.wait_for_function("() => document.querySelector('#preview-info').innerText.includes('extrapolated')")
            page.wait_for_timeout(500)
            bottom = page.evaluate("() => document.querySelector('#status').getBoundingClientRect().bottom")
            png = page.screenshot()
            save(png, out_dir / "honesty.png", (340, 60, 1400, int(bottom) + 12), width)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="built data directory (default: data)")
    p.add_argument("--model", default="digits")
    p.add_argument("--class", dest="class_name", default="3", help="class of set A's point (default 3)")
    p.add_argument("--b-class", default="8", help="class of set B's point (default 8)")
    p.add_argument("--k", type=int, default=10, help="neighbours of each set (default 10)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--values", default="0, 1, 2, 3, 4", help="the sweep's α values")
    p.add_argument("--width", type=int, default=1000, help="width of the saved PNGs in px (default 1000)")
    p.add_argument("--out-dir", default="docs")
    args = p.parse_args(argv)

    def run(url, vis):
        a, b = (default_point(vis, args.model, name) for name in (args.class_name, args.b_class))
        drive(url, Path(args.out_dir), a, b, args.b_class, args.k, args.steps, args.values, args.width)

    return serve(args.data_dir, args.model, run)


if __name__ == "__main__":
    sys.exit(main())
