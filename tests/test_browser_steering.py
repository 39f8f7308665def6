"""Steering and the map's honesty signals in headless chromium (helpers from ``test_browser``):
build set B, run a 5-value sweep and see its grid and chart; extrapolated trajectory steps
are drawn hollow and hovering one says why."""

from __future__ import annotations

import pytest
from test_browser import (
    HEAVY_WAIT_MS,
    click,
    isolated_points,
    open_app,
    set_number,
    shot,
    traces,
    wait_ring,
    wait_state,
)

pytestmark = pytest.mark.browser

# screen position of every point of the trace named ``name`` as [customdata, x px, y px]
TRACE_POINTS_JS = """(name) => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const out = [];
  for (const t of gd._fullData) {
    if (t.name !== name) continue;
    for (let k = 0; k < t.x.length; k++) out.push([t.customdata[k], r.left + xa.l2p(t.x[k]), r.top + ya.l2p(t.y[k]),
                                                   t.marker.color, t.meta]);
  }
  return out;
}"""


# the distance (px) from the screen point [x, y] to the nearest other point drawn on the map
CLEARANCE_JS = """([x, y]) => {
  const gd = document.querySelector('#umap-plot .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  let best = Infinity;
  for (const t of gd._fullData) {
    if (!t.x || !t.y) continue;
    for (let k = 0; k < t.x.length; k++) {
      const d = Math.hypot(r.left + xa.l2p(t.x[k]) - x, r.top + ya.l2p(t.y[k]) - y);
      if (d > 0.5) best = Math.min(best, d);
    }
  }
  return best;
}"""

@pytest.fixture(scope="module")
def page(browser, running_app):
    page = open_app(browser, running_app.url)
    yield page
    page.context.close()


def test_set_b_then_a_five_value_sweep_shows_grid_chart_and_trajectories(page):
    b = isolated_points(page, 1)[0]
    click(page, b)
    set_number(page, "knn-k", 4)
    page.locator("#knn-button").click()
    wait_state(page, "s.knn.length === 4")
    page.locator("#set-b-button").click()
    s = wait_state(page, "s.set_b.length === 5 && s.selected === null")
    wait_ring(page, "set B", s["set_b"])
    assert "Set B: 5 point(s)" in page.locator("#set-b-info").inner_text()
    a = next(p for p in isolated_points(page, 6) if p[0] not in s["set_b"])  # (scrolls back to the map)
    click(page, a)
    page.locator("#knn-button").click()
    wait_state(page, "s.knn.length === 4")
    page.locator("#gen-mode label", has_text="add").click()
    page.wait_for_function("() => document.querySelector('#sweep-values textarea, #sweep-values input')"
                           ".value.startsWith('-2')")
    set_number(page, "gen-steps", 4)
    page.locator("#sweep-button").click()
    s = wait_state(page, "s.sweep.length === 5", timeout=HEAVY_WAIT_MS)
    page.wait_for_function("() => [...document.querySelectorAll('#sweep-gallery img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 5")
    grid = page.locator("#sweep-gallery").inner_text()
    assert all(f"α = {v} · landed" in grid for v in (-2, -1, 0, 1, 2)), grid
    chart = page.wait_for_function("() => { const gd = document.querySelector('#sweep-chart .js-plotly-plot');"
                                   " return gd && gd._fullData && gd._fullData.length === 2 &&"
                                   " gd._fullData.map(t => t.x.length); }").json_value()
    assert chart == [5, 5]
    drawn = {t["meta"].split(":")[1] for t in traces(page)["traces"] if str(t["meta"]).startswith("traj:")}
    assert set(s["sweep"]) <= drawn  # every value's trajectory on the map
    assert "Sweep over α (5 values" in page.locator("#status").inner_text()
    page.evaluate("() => window.scrollTo(0, 0)")
    shot(page, "20_sweep", full_page=True)


def test_extrapolated_steps_are_hollow_and_their_hover_says_why(page):
    s = wait_state(page, "s.active !== null", timeout=HEAVY_WAIT_MS)
    steps = page.evaluate(TRACE_POINTS_JS, "extrapolated")
    assert steps, "no step was drawn as extrapolated (the tiny map holds only 80, 50 and 20 % noise)"
    assert all(color == "#FFFFFF" for _, _, _, color, _ in steps)  # hollow: white fill, coloured outline
    line = {t["name"]: t for t in traces(page)["traces"] if t["meta"] == f"traj:{s['active']}:0"}
    assert line["extrapolated"]["symbol"] == "circle" and line[f"trajectory {s['active'][:6]}"]["n"] == 4
    page.evaluate("() => window.scrollTo(0, 0)")
    mine = [p for p in steps if p[4] == f"traj:{s['active']}:0"]
    # hover the step farthest from every other point drawn (trajectories of a sweep lie close together)
    step, x, y = max(mine, key=lambda p: page.evaluate(CLEARANCE_JS, [p[1], p[2]]))[:3]
    page.mouse.move(x + 30, y + 30)
    page.mouse.move(x, y, steps=4)
    page.wait_for_function("() => document.querySelector('#preview-info').innerText"
                           ".includes('extrapolated position')")
    why = page.locator("#preview-info").inner_text()
    assert "outside the map's" in why or "farther from every real activation" in why, why
    shot(page, "21_extrapolated_hover")
