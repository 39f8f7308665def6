"""End to end in headless chromium: the launched app (``running_app``) driven like a person would.

The map is a Plotly WebGL scatter, so the tests find a point's pixel position from the
plot's own axes (``_fullLayout.xaxis.l2p``) and move the real mouse there. Plotly only
reports a click when the button stays down for a moment, so a click is down, 120 ms, up.
Each step waits for its visible result (the hover text, the session's state in the
``Session state`` panel, the plot title), never for a fixed time. A screenshot of each key
state is saved in ``artifacts/screenshots/``.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from PIL import Image

from diffviews.visualization import gpu_ops

pytestmark = pytest.mark.browser
PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}
WAIT_MS = 30_000  # any single UI reaction
HEAVY_WAIT_MS = 150_000  # a generation or a layer extraction (the first one in a process compiles umap's JIT)

# every map point ('pts' traces) as [index, x px, y px], on screen
POINTS_JS = """() => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const out = [];
  for (const t of gd._fullData) {
    if (t.meta !== 'pts') continue;
    for (let k = 0; k < t.x.length; k++) out.push([t.customdata[k], r.left + xa.l2p(t.x[k]), r.top + ya.l2p(t.y[k])]);
  }
  return {points: out, box: [r.left, r.top, r.right, r.bottom]};
}"""

# every trace as drawn, Plotly's and the marks painted on the canvas over a 2-D map (rings, the
# frame marker): name, meta, mode, marker symbol, number of points, customdata
TRACES_JS = """() => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  return {title: gd._fullLayout.title.text, traces: gd._fullData.concat(gd.__dvMarkTraces || []).map(t => ({
    name: t.name, meta: t.meta, mode: t.mode, symbol: t.marker ? t.marker.symbol : null, n: t.x.length,
    x: Array.from(t.x).slice(0, 8), customdata: t.meta === 'pts' ? [] : Array.from(t.customdata || [])}))};
}"""

# the session state shown by the app (a JSON tree: one token per line under the label)
STATE_JS = """() => {
  const e = document.querySelector('#session-info');
  if (!e) return null;
  try { return JSON.parse(e.innerText.split('\\n').slice(1).join('')); } catch (err) { return null; }
}"""

# ---- helpers -----------------------------------------------------------------------------------

def shot(page, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def open_app(browser, url: str):
    """A fresh browser context (its own Gradio session) on the app, with the state panel open."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#umap-plot .js-plotly-plot .nsewdrag")
    page.get_by_text("Session state", exact=True).click()
    page.wait_for_selector("#session-info")
    page.evaluate("() => window.scrollTo(0, 0)")
    return page


def state(page) -> dict:
    return page.evaluate(STATE_JS) or {}


def wait_state(page, condition: str, timeout: int = WAIT_MS) -> dict:
    """Wait until the session state ``s`` shown on the page satisfies the JS ``condition``."""
    page.wait_for_function(f"() => {{ const s = ({STATE_JS})(); return s !== null && ({condition}); }}",
                           timeout=timeout)
    return state(page)


def traces(page) -> dict:
    return page.evaluate(TRACES_JS)


def wait_idle(page, timeout: int = WAIT_MS) -> None:
    """Wait until no output shows a pending or running event."""
    page.wait_for_function("() => ![...document.querySelectorAll('[data-testid=status-tracker]')]"
                           ".some(e => /processing|queue|%|\\ds/.test(e.innerText))", timeout=timeout)


def isolated_points(page, count: int = 1) -> list[tuple[int, float, float]]:
    """The ``count`` map points farthest (in screen pixels) from any other point, so that
    the mouse on one of them can only mean that point."""
    page.evaluate("() => window.scrollTo(0, 0)")
    data = page.evaluate(POINTS_JS)
    left, top, right, bottom = data["box"]
    pts = [(int(i), x, y) for i, x, y in data["points"]]
    assert pts, "the map has no points"
    inside = [p for p in pts if left + 8 < p[1] < right - 8 and top + 8 < p[2] < bottom - 8]

    def gap(p):
        return min((math.dist(p[1:], q[1:]) for q in pts if q is not p), default=math.inf)

    best = sorted(inside, key=gap, reverse=True)[:count]
    assert len(best) == count and gap(best[-1]) > 3, f"no isolated points on the map: {best}"
    return best


def hover(page, point: tuple[int, float, float], tries: int = 3) -> str:
    """Move the mouse onto ``point`` and wait for its preview; returns the preview text.
    The mouse comes from a little way off, again, if the plot was being redrawn under it."""
    index, x, y = point
    shown = f"() => document.querySelector('#preview-info').innerText.startsWith('#{index} ')"
    for attempt in range(tries):
        page.mouse.move(x + 30, y + 30)
        page.mouse.move(x, y, steps=4)
        try:
            page.wait_for_function(shown, timeout=WAIT_MS // tries)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
    return page.locator("#preview-info").inner_text()


def wait_ring(page, name: str, indices: list[int]) -> None:
    """Wait until the plot (redrawn after a selection) shows ring ``name`` on exactly ``indices``."""
    page.wait_for_function(f"() => {{ const d = ({TRACES_JS})().traces.filter(t => t.meta === 'ring'"
                           f" && t.name === '{name}'); return d.length === 1 &&"
                           f" JSON.stringify(d[0].customdata) === '{list(indices)}'.replace(/ /g, ''); }}")


def click(page, point: tuple[int, float, float]) -> dict:
    """A real click on ``point`` (plotly needs the button held ~100 ms); waits for the
    selection in the session state and for the redrawn plot's red ring."""
    index, x, y = point
    hover(page, point)
    page.mouse.down()
    page.wait_for_timeout(120)
    page.mouse.up()
    s = wait_state(page, f"s.selected === {index}")
    wait_ring(page, "selected", [index])
    return s


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input[type=number]').value === '{value}'")


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a dropdown by typing it and pressing Enter: ONE ``input`` event.

    (A mouse pick makes Gradio 6.31 send ``input`` twice, on the pick and on the blur that
    follows; the duplicate then queues behind the first and may show its queue status on
    the shared outputs instead of the first one's progress.)"""
    field = page.locator(f"#{elem_id} input")
    field.click()
    field.fill(option)
    page.get_by_role("option", name=option, exact=True).wait_for()
    field.press("ArrowDown")
    field.press("Enter")
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === '{option}'")


def image_loaded(page, selector: str) -> None:
    page.wait_for_function(f"() => {{ const i = document.querySelector('{selector} img');"
                           " return i !== null && i.complete && i.naturalWidth > 0; }")


def coloured_pixels(page) -> int:
    """Pixels of clearly saturated colour inside the plotting area (the class colours; the
    background is white, the legend and title lie outside)."""
    page.evaluate("() => window.scrollTo(0, 0)")
    box = page.locator("#umap-plot .nsewdrag").bounding_box()
    png = page.screenshot(clip=box)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return int(np.count_nonzero(rgb.max(axis=2) - rgb.min(axis=2) > 80))


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(browser, running_app):
    """One page on the digits model, shared by the map tests (each sets up its own selection)."""
    page = open_app(browser, running_app.url)
    yield page
    page.context.close()


# ---- the tests ---------------------------------------------------------------------------------

def test_page_loads_with_the_map(page, running_app):
    md = running_app.visualizer.model("digits")
    drawn = traces(page)
    points = [t for t in drawn["traces"] if t["meta"] == "pts"]
    assert drawn["title"].startswith("digits · ")
    assert sum(t["n"] for t in points) == md.n_points
    assert sorted({t["name"] for t in points}) == sorted(md.class_names)  # traces per class and noise band
    assert coloured_pixels(page) > 2 * md.n_points, "the points are not drawn"  # WebGL really rendered them
    assert page.locator("#umap-plot .legendtext").count() == len(md.class_names)
    shot(page, "01_loaded")


def test_hovering_a_point_shows_its_preview(page, running_app):
    md = running_app.visualizer.model("digits")
    a, b = isolated_points(page, 2)
    for index, point in ((a[0], a), (b[0], b)):  # a second hover replaces the first
        text = hover(page, point)
        assert f"sample {int(md.metadata.sample_id[index])}" in text
        assert f"class {md.class_name(int(md.metadata.class_label[index]))}" in text
        assert "noise" in text and "%" in text
    image_loaded(page, "#preview-image")
    shot(page, "02_hover")


def test_clicking_selects_a_point(page, running_app):
    md = running_app.visualizer.model("digits")
    first, second = isolated_points(page, 2)
    click(page, first)
    s = click(page, second)  # clicking a new point after a selection just moves the selection
    assert (s["model"], s["layer"], s["selected"], s["neighbours"], s["knn"]) == ("digits", "mid", second[0], [], [])
    page.wait_for_function(f"() => document.querySelector('#selected-info').innerText.startsWith('#{second[0]} ')")
    assert f"sample {int(md.metadata.sample_id[second[0]])}" in page.locator("#selected-info").inner_text()
    image_loaded(page, "#selected-image")
    rings = [t for t in traces(page)["traces"] if t["meta"] == "ring"]
    assert [(r["name"], r["customdata"]) for r in rings] == [("selected", [second[0]])]  # one red ring, moved
    shot(page, "03_selected")


def test_knn_fills_the_neighbour_gallery(page, running_app):
    point = isolated_points(page, 1)[0]
    click(page, point)
    set_number(page, "knn-k", 6)
    page.locator("#knn-button").click()
    s = wait_state(page, f"s.selected === {point[0]} && s.knn.length === 6")
    want, _ = running_app.visualizer.neighbours("digits", "mid", "2-D", point[0], 6, "map")
    assert s["knn"] == want.tolist()
    page.wait_for_function("() => [...document.querySelectorAll('#neighbor-gallery img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 6")
    gallery = page.locator("#neighbor-gallery").inner_text()
    assert all(f"#{i} " in gallery for i in want.tolist()) and "d=" in gallery
    wait_ring(page, "knn", want.tolist())  # lime rings on the map
    shot(page, "04_knn")


def test_generate_shows_the_image_and_draws_its_trajectory(page):
    point = isolated_points(page, 1)[0]
    click(page, point)
    page.locator("#knn-button").click()
    wait_state(page, "s.knn.length > 0")
    set_number(page, "gen-steps", 4)
    set_number(page, "window-from", 50)
    page.locator("#generate-button").click()
    s = wait_state(page, "s.generations.length === 1 && s.active !== null", timeout=HEAVY_WAIT_MS)
    gen = s["active"]
    assert s["generations"] == [gen] and s["frame"] == 3
    image_loaded(page, "#generated-image")
    image_loaded(page, "#frame-image")
    page.wait_for_function("() => [...document.querySelectorAll('#steps-gallery img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 4")
    assert "Generated 1 × class" in page.locator("#status").inner_text()
    drawn = [t for t in traces(page)["traces"] if t["meta"] == f"traj:{gen}:0"]
    by_name = {t["name"]: t for t in drawn}
    line = by_name[f"trajectory {gen[:6]}"]
    assert line["mode"] == "lines+markers" and line["n"] == 4 and line["customdata"] == [0, 1, 2, 3]
    assert all(math.isfinite(v) for v in line["x"])
    assert by_name["start"]["symbol"] == "diamond" and by_name["end"]["symbol"] == "star"
    assert by_name["frame"]["customdata"] == [3]  # the shown frame (the last step) is ringed
    page.evaluate("() => window.scrollTo(0, 0)")
    shot(page, "05_generated", full_page=True)


def test_switching_to_a_new_layer_shows_progress_then_its_map(browser, running_app):
    vis = running_app.visualizer
    preferred = ["bottleneck", "enc_4x4", "dec_4x4", *vis.layers("digits")]
    layer = next((name for name in preferred if not vis.layer_is_built("digits", name)), None)
    assert layer is not None, "every layer of the tiny digits model is already built"
    # the real extraction, held until the test has seen the progress (so that it cannot finish unseen)
    release, calls = threading.Event(), []
    real = gpu_ops._extract_layer_on_gpu

    def held(backend, request):
        calls.append(list(request.layers))
        if not release.wait(HEAVY_WAIT_MS / 1000):
            raise RuntimeError("the browser test never released the extraction")
        return real(backend, request)

    page = open_app(browser, running_app.url)
    try:
        before = traces(page)
        with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=held):
            choose(page, "layer-dropdown", layer)
            # the progress of this stage (not just the first message) reaches the plot and the status line
            for where in ("#umap-plot", "#status"):
                page.wait_for_function(f"() => [...document.querySelectorAll('{where} [data-testid=status-tracker]')]"
                                       f".some(e => e.innerText.includes('Extracting layer {layer} for '))")
            shot(page, "06_layer_progress")
            assert calls == [[layer]]  # the extraction is under way (and held) while the progress shows
            release.set()
            page.wait_for_function(f"() => document.querySelector('#umap-plot .js-plotly-plot')"
                                   f"._fullLayout.title.text.startsWith('digits · {layer} · ')",
                                   timeout=HEAVY_WAIT_MS)
            wait_idle(page, timeout=HEAVY_WAIT_MS)
        s = wait_state(page, f"s.layer === '{layer}'")
        assert s["model"] == "digits" and calls == [[layer]]
        assert f"Layer {layer} extracted and mapped now" in page.locator("#status").inner_text()
        assert page.locator("#layer-dropdown input").input_value() == layer
        after = traces(page)
        points = [t for t in after["traces"] if t["meta"] == "pts"]
        assert sum(t["n"] for t in points) == vis.model("digits").n_points
        old = {t["name"]: t["x"] for t in before["traces"] if t["meta"] == "pts"}
        assert any(t["x"] != old[t["name"]] for t in points), "the map did not change"
        assert coloured_pixels(page) > 2 * vis.model("digits").n_points
        assert (running_app.data_dir / "digits" / "embeddings" / f"{layer}.csv").is_file()  # cached on disk
        shot(page, "07_layer_mapped")
    finally:
        release.set()
        page.context.close()


def test_two_browser_contexts_on_different_models_stay_independent(browser, running_app):
    vis = running_app.visualizer
    digits, shapes = vis.model("digits"), vis.model("shapes")
    a = open_app(browser, running_app.url)
    b = open_app(browser, running_app.url)
    try:
        choose(b, "model-dropdown", "shapes")
        b.wait_for_function("() => document.querySelector('#umap-plot .js-plotly-plot')"
                            "._fullLayout.title.text.startsWith('shapes · ')", timeout=HEAVY_WAIT_MS)
        wait_idle(b, timeout=HEAVY_WAIT_MS)
        assert wait_state(b, "s.model === 'shapes'")["n_points"] == shapes.n_points

        a1, a2 = isolated_points(a, 2)
        b1, b2 = isolated_points(b, 2)
        assert click(a, a1)["model"] == "digits"
        assert click(b, b1)["model"] == "shapes"
        # each page, after the other one's switch and click: its own model's previews, hover live
        for page, md, point in ((a, digits, a2), (b, shapes, b2)):
            text = hover(page, point)
            assert f"sample {int(md.metadata.sample_id[point[0]])}" in text
            assert f"class {md.class_name(int(md.metadata.class_label[point[0]]))}" in text
        sa, sb = state(a), state(b)
        assert (sa["model"], sa["selected"], sa["n_points"]) == ("digits", a1[0], digits.n_points)
        assert (sb["model"], sb["selected"], sb["n_points"]) == ("shapes", b1[0], shapes.n_points)
        for page, md in ((a, digits), (b, shapes)):  # each map is its own model's
            drawn = traces(page)
            assert drawn["title"].startswith(f"{md.name} · ")
            assert sorted({t["name"] for t in drawn["traces"] if t["meta"] == "pts"}) == sorted(md.class_names)
            assert page.locator("#model-dropdown input").input_value() == md.name
        # and A's clicks still work after B's
        sa = click(a, a2)
        assert (sa["model"], sa["selected"]) == ("digits", a2[0]) and state(b)["selected"] == b1[0]
        assert a.locator("#selected-info").inner_text().startswith(f"#{a2[0]} ")
        shot(a, "08_contexts_digits")
        shot(b, "09_contexts_shapes")
    finally:
        a.context.close()
        b.context.close()
