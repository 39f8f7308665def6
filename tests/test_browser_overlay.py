"""The mark canvas over the 2-D map (``overlay.js``): rings stay on their points through a
zoom, and a click or a KNN suggestion never makes Plotly redraw the points."""

from __future__ import annotations

import numpy as np
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


# client (viewport) pixels → map coordinates, through the plot's axes
TO_MAP_JS = """(pts) => {
  const gd = document.querySelector('PLOT');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return pts.map(p => [xa.p2l(p[0] - r.left), ya.p2l(p[1] - r.top)]);
}""".replace("PLOT", PLOT)

# Plotly's own selection state on the map: traces with selected points, redraws since the probe
UNTOUCHED_JS = """() => {
  const gd = document.querySelector('PLOT');
  const path = gd.querySelector('svg.dv-region path');
  return {afterplots: window.__afterplots, probe: gd.data.filter(t => t.meta === 'pts').every(t => t.__probe === 1),
          selected: gd.data.concat(gd._fullData).filter(t => t.selectedpoints).length,
          outline: path ? (path.getAttribute('d') || '').length > 0 : false};
}""".replace("PLOT", PLOT)


def _inside_triangle(xy: np.ndarray, tri: np.ndarray) -> set[int]:
    def side(p, q):
        return (q[0] - p[0]) * (xy[:, 1] - p[1]) - (q[1] - p[1]) * (xy[:, 0] - p[0])

    d = [side(tri[k], tri[(k + 1) % 3]) for k in range(3)]
    return {int(i) for i in np.flatnonzero(np.all([v > 0 for v in d], axis=0) | np.all([v < 0 for v in d], axis=0))}


def test_box_and_lasso_select_the_points_inside_and_leave_plotly_alone(page, running_app):
    xy = running_app.visualizer.layer("digits", "mid").coords("2-D").astype(np.float64)
    (index, x, y), other = isolated_points(page, 2)
    click(page, (index, x, y))
    page.click(f"{PLOT} [data-title='Box Select']")
    page.wait_for_function(f"() => document.querySelector('{PLOT}')._fullLayout.dragmode === 'select'")
    page.wait_for_timeout(300)
    page.evaluate(f"""() => {{
      const gd = document.querySelector('{PLOT}');
      window.__afterplots = 0;
      gd.on('plotly_afterplot', () => {{ window.__afterplots += 1; }});
      gd.data.forEach(t => {{ t.__probe = 1; }});
    }}""")

    # box: the points inside (edges in map coordinates) become neighbours, the selected point excepted
    cx, cy = (round(v) for v in screen_xy(page, 17))
    corners = [(cx + 40, cy + 30), (cx - 40, cy - 30)]  # dragged from the lower right
    (x0, y0), (x1, y1) = page.evaluate(TO_MAP_JS, corners)
    box = {int(i) for i in np.flatnonzero((xy[:, 0] >= min(x0, x1)) & (xy[:, 0] <= max(x0, x1))
                                          & (xy[:, 1] >= min(y0, y1)) & (xy[:, 1] <= max(y0, y1)))} - {index}
    assert box, "no point in the box"
    page.mouse.move(*corners[0])
    page.mouse.down()
    page.mouse.move(cx, cy)
    page.mouse.move(*corners[1])
    page.mouse.up()
    s = wait_state(page, "s.neighbours.length > 0")
    assert s["neighbours"] == sorted(box) and s["selected"] == index
    wait_ring(page, "neighbours", sorted(box))
    assert page.evaluate(UNTOUCHED_JS) == {"afterplots": 0, "probe": True, "selected": 0, "outline": True}

    # lasso: a triangle; the points inside are added after the box's
    page.click(f"{PLOT} [data-title='Lasso Select']")
    page.wait_for_function(f"() => document.querySelector('{PLOT}')._fullLayout.dragmode === 'lasso'")
    page.wait_for_timeout(300)
    page.evaluate("() => { window.__afterplots = 0; }")
    left, top, right, bottom = page.evaluate(f"() => {{ const r = document.querySelector('{PLOT} .nsewdrag')"
                                             ".getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }")
    # a triangle around the middle of the plot area, on whole pixels (mouse events report whole pixels,
    # so the page's lasso and this test's triangle are the same polygon)
    mx, my = round((left + right) / 2), round((top + bottom) / 2)
    w, h = round(0.3 * (right - left)), round(0.3 * (bottom - top))
    tri = [(mx - w, my + h), (mx + w, my + h), (mx, my - h)]
    page.mouse.move(*tri[0])
    page.mouse.down()
    page.mouse.move(*tri[1])
    page.mouse.move(*tri[2])
    page.mouse.up()
    lasso = _inside_triangle(xy, np.array(page.evaluate(TO_MAP_JS, tri))) - {index}
    assert lasso - box, "the lasso adds no point"
    s = wait_state(page, f"s.neighbours.length === {len(box | lasso)}")
    assert s["neighbours"] == sorted(box) + sorted(lasso - box)
    assert page.evaluate(UNTOUCHED_JS) == {"afterplots": 0, "probe": True, "selected": 0, "outline": True}

    # a click in lasso mode still selects the point under the mouse; a double click clears the outline
    click(page, other)
    page.mouse.dblclick(*tri[0])
    page.wait_for_function(f"() => !document.querySelector('{PLOT} svg.dv-region path').getAttribute('d')")
