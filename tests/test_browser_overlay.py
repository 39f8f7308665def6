"""The mark canvas over the 2-D map (``overlay.js``): rings stay on their points through a
zoom, and a click or a KNN suggestion never makes Plotly redraw the points."""

from __future__ import annotations

import pytest

from tests.test_browser import click, isolated_points, open_app, set_number, traces, wait_ring, wait_state
from tests.test_browser_scale import screen_xy

pytestmark = pytest.mark.browser

PLOT = "#umap-plot .js-plotly-plot"

# where the canvas shows red (the selection ring's colour): the centre of those pixels on
# screen and how many there are (null when none)
RED_CENTRE_JS = """() => {
  const cv = document.querySelector('#umap-plot canvas.dv-marks');
  if (!cv || !cv.width) return null;
  const box = cv.getBoundingClientRect(), sx = box.width / cv.width, sy = box.height / cv.height;
  const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  let n = 0, cx = 0, cy = 0;
  for (let k = 0; k < px.length; k += 4) {
    if (px[k + 3] > 128 && px[k] > 200 && px[k + 1] < 80 && px[k + 2] < 80) {
      const i = k / 4;
      cx += i % cv.width; cy += Math.floor(i / cv.width); n += 1;
    }
  }
  return n ? {x: box.left + (cx / n + 0.5) * sx, y: box.top + (cy / n + 0.5) * sy, n} : null;
}"""


@pytest.fixture
def page(browser, running_app):
    page = open_app(browser, running_app.url)
    yield page
    page.context.close()


def ring_offset(page, index: int) -> float:
    red, (x, y) = page.evaluate(RED_CENTRE_JS), screen_xy(page, index)
    assert red is not None and red["n"] > 10, "no red ring painted"
    return max(abs(red["x"] - x), abs(red["y"] - y))


def test_ring_stays_on_its_point_through_a_zoom(page):
    index, x, y = isolated_points(page, 1)[0]
    click(page, (index, x, y))
    assert ring_offset(page, index) < 1.5
    assert not [t for t in page.evaluate(f"() => document.querySelector('{PLOT}')._fullData.map(t => t.meta)")
                if t == "ring"], "the ring is a Plotly trace, not a mark"
    ranges = page.evaluate(f"() => document.querySelector('{PLOT}')._fullLayout.xaxis.range.slice()")
    # zoom with the mouse: a box around the point (plotly's default drag mode)
    page.mouse.move(x - 50, y - 40)
    page.mouse.down()
    page.mouse.move(x + 10, y + 5, steps=4)
    page.mouse.move(x + 60, y + 45, steps=4)
    page.mouse.up()
    page.wait_for_function(f"(r) => document.querySelector('{PLOT}')._fullLayout.xaxis.range[0] !== r[0]",
                           arg=ranges)
    page.wait_for_timeout(300)
    assert ring_offset(page, index) < 1.5  # repainted where the point now is
    after = screen_xy(page, index)
    assert abs(after[0] - x) > 5 or abs(after[1] - y) > 5, "the zoom did not move the point"
    # and back (double click: autorange)
    page.evaluate(f"() => window.Plotly.relayout(document.querySelector('{PLOT}'), "
                  "{'xaxis.autorange': true, 'yaxis.autorange': true})")
    page.wait_for_timeout(300)
    assert ring_offset(page, index) < 1.5


def test_click_and_knn_leave_the_points_alone(page):
    first, second = isolated_points(page, 2)
    click(page, first)
    page.evaluate(f"""() => {{
      const gd = document.querySelector('{PLOT}');
      window.__afterplots = 0;
      gd.on('plotly_afterplot', () => {{ window.__afterplots += 1; }});
      gd.data.forEach(t => {{ t.__probe = 1; }});
      window.__fullBase = gd._fullData.filter(t => t.meta === 'pts');
    }}""")
    click(page, second)
    set_number(page, "knn-k", 5)
    page.click("#knn-button")
    s = wait_state(page, "s.knn.length === 5")
    wait_ring(page, "knn", s["knn"])
    wait_ring(page, "selected", [second[0]])
    same = page.evaluate(f"""() => {{
      const gd = document.querySelector('{PLOT}');
      const base = gd._fullData.filter(t => t.meta === 'pts');
      const probe = gd.data.filter(t => t.meta === 'pts').every(t => t.__probe === 1);
      return {{afterplots: window.__afterplots, probe,
               full: base.length === window.__fullBase.length && base.every((t, k) => t === window.__fullBase[k])}};
    }}""")
    assert same == {"afterplots": 0, "probe": True, "full": True}, same
    names = sorted(t["name"] for t in traces(page)["traces"] if t["meta"] == "ring")
    assert names == ["knn", "selected"]
