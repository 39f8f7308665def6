"""regions.rows_in_region against a plain even-odd test, and the bound on a costly lasso."""

from __future__ import annotations

import numpy as np
import pytest

from diffviews.visualization.regions import MAX_LASSO_TESTS, RegionError, parse_region, rows_in_region


def even_odd(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Point by point, edge by edge: the reference."""
    inside = []
    for px, py in points:
        odd = False
        for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
            if (ay > py) != (by > py) and px < ax + (py - ay) * (bx - ax) / (by - ay):
                odd = not odd
        inside.append(odd)
    return np.flatnonzero(inside)


@pytest.mark.parametrize("seed", range(5))
def test_lasso_selects_what_the_even_odd_rule_selects(seed):
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(3000, 2))
    angle = np.sort(rng.uniform(0, 2 * np.pi, 12 + seed))
    radius = rng.uniform(0.3, 2.0, angle.size)  # a star-shaped, non-convex polygon
    lasso = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    if seed == 4:
        lasso = np.concatenate([lasso, lasso[::-1] * 0.5])  # self-crossing: even-odd holes
    kind, shape = parse_region({"lasso": [lasso[:, 0].tolist(), lasso[:, 1].tolist()]})
    rows = rows_in_region(coords, kind, shape)
    np.testing.assert_array_equal(rows, even_odd(coords, lasso))
    assert 0 < rows.size < len(coords)


def test_a_zigzag_lasso_over_many_points_is_refused_with_its_cost():
    n = 200_000
    coords = np.random.default_rng(0).uniform(0, 1, size=(n, 2))
    turns = 2 * (MAX_LASSO_TESTS // n) + 2  # every edge spans the whole height
    xs = np.linspace(0, 1, turns)
    ys = np.where(np.arange(turns) % 2 == 0, -0.1, 1.1)
    kind, shape = parse_region({"lasso": [xs.tolist(), ys.tolist()]})
    with pytest.raises(RegionError, match="point-edge tests, at most 200,000,000"):
        rows_in_region(coords, kind, shape)
    # the same lasso over fewer points is fine
    assert rows_in_region(coords[:1000], kind, shape).dtype.kind == "i"
