"""A 100k-point map in headless chromium: click, box-select and generate on it.

The model is the real tiny digits model (``tiny_data_dir``) with its samples repeated to
100,080 points (``bench.scale.replicate_model``: real activations and images, map positions
jittered), so generation, its masks and the trajectory projection run for real. The points
are sent to the browser once: a probe set on the drawn base traces must survive every
click, selection and generation (overlays are swapped in place, never the whole figure).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from diffviews.backends.local import LocalBackend
from diffviews.bench.scale import replicate_model
from diffviews.visualization.app import GradioVisualizer, create_gradio_app, launch_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_POINTS = 100_000
PLOT = "#umap-plot .js-plotly-plot"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
WAIT_MS = 60_000

STATE_JS = """() => {
  const e = document.querySelector('#session-info');
  if (!e) return null;
  try { return JSON.parse(e.innerText.split('\\n').slice(1).join('')); } catch (err) { return null; }
}"""

# the customdata of every overlay ring by name, the number of points drawn, and the probe
DRAWN_JS = """() => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  const rings = {}, traj = [];
  let points = 0;
  for (const t of gd._fullData.concat(gd.__dvMarkTraces || [])) {  // Plotly's traces and the painted marks
    if (t.meta === 'pts') points += t.x.length;
    else if (t.meta === 'ring') rings[t.name] = Array.from(t.customdata);
    else if (typeof t.meta === 'string' && t.meta.startsWith('traj:')) traj.push(t.meta);
  }
  return {points, rings, traj, probe: gd.data.filter(t => t.meta === 'pts').every(t => t.__probe === 1)};
}"""


@pytest.fixture(scope="module")
def big_app(tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("big_data")
    replicate_model(tiny_data_dir / "digits", root, "digits", N_POINTS, layers=["mid"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vis = GradioVisualizer(root, backend=LocalBackend(root, device="cpu"), default_model="digits")
    demo = create_gradio_app(vis, warmup=False)
    launch_app(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", vis
    finally:
        demo.close()


def state(page) -> dict:
    return page.evaluate(STATE_JS) or {}


def wait_state(page, condition: str) -> dict:
    page.wait_for_function(f"() => {{ const s = ({STATE_JS})(); return s !== null && ({condition}); }}")
    return state(page)


def drawn(page) -> dict:
    return page.evaluate(DRAWN_JS)


def wait_rings(page, name: str, indices: list[int]) -> None:
    page.wait_for_function(f"(want) => JSON.stringify((({DRAWN_JS})()).rings[{name!r}] || []) === want",
                           arg=str(list(indices)).replace(" ", ""))


def screen_xy(page, index: int) -> tuple[float, float]:
    """Where point ``index`` is on screen (from the plot's own axes)."""
    return tuple(page.evaluate("""(i) => {
      const gd = document.querySelector('#umap-plot .js-plotly-plot');
      const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
      for (const t of gd._fullData) {
        if (t.meta !== 'pts') continue;
        const k = Array.prototype.indexOf.call(t.customdata, i);
        if (k >= 0) return [r.left + gd._fullLayout.xaxis.l2p(t.x[k]), r.top + gd._fullLayout.yaxis.l2p(t.y[k])];
      }
      return null;
    }""", index))


def test_click_box_select_and_generate_on_a_100k_map(browser, big_app):
    url, vis = big_app
    md = vis.model("digits")
    assert md.n_points >= N_POINTS
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_function(f"() => {{ const gd = document.querySelector('{PLOT}'); return gd && gd._fullData"
                               f" && gd.querySelector('.nsewdrag'); }}", timeout=WAIT_MS)
        assert drawn(page)["points"] == md.n_points
        page.get_by_text("Session state", exact=True).click()
        page.wait_for_selector("#session-info")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.evaluate(f"() => document.querySelector('{PLOT}').data.forEach(t => {{ t.__probe = 1; }})")

        # click: the point under the mouse is selected and ringed in red
        x, y = screen_xy(page, 17)
        page.mouse.move(x, y)
        page.mouse.down()
        page.wait_for_timeout(120)
        page.mouse.up()
        selected = wait_state(page, "s.selected !== null")["selected"]
        wait_rings(page, "selected", [selected])

        # box select around it: the points inside become neighbours (cyan rings)
        page.click(f"{PLOT} [data-title='Box Select']")
        page.mouse.move(x - 12, y - 12)
        page.mouse.down()
        page.mouse.move(x, y)
        page.mouse.move(x + 12, y + 12)
        page.mouse.up()
        s = wait_state(page, "s.neighbours.length > 0")
        wait_rings(page, "neighbours", s["neighbours"])
        assert len(s["neighbours"]) > 10  # a dense 100k map: many points in a 24-pixel box

        # generate from them: the image, and its trajectory drawn over the same points
        for elem, value in (("gen-steps", "4"), ("window-from", "50")):
            page.fill(f"#{elem} input[type=number]", value)
            page.keyboard.press("Tab")
        page.click("#generate-button")
        s = wait_state(page, "s.active !== null && s.generations.length === 1")
        page.wait_for_function(f"(m) => ({DRAWN_JS})().traj.includes(m)", arg=f"traj:{s['active']}:0")
        page.wait_for_function("() => { const i = document.querySelector('#generated-image img');"
                               " return i && i.complete && i.naturalWidth > 0; }")
        after = drawn(page)
        assert after["points"] == md.n_points and after["rings"]["selected"] == [selected]
        assert after["probe"], "the base points were redrawn from a new figure instead of updated in place"
        assert "Generated 1 × class" in page.inner_text("#status")
        page.evaluate("() => window.scrollTo(0, 0)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "scale_100k_generated.png"))
    finally:
        context.close()
