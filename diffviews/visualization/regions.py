"""Box and lasso selections on a 2-D map, computed here from the region the user drew.

The plot bridge sends the region Plotly reports with ``plotly_selected`` (in map
coordinates) instead of the selected points: a few numbers rather than one entry per point
(tens of thousands in a box on a 1M-point map). ``rows_in_region`` finds the points inside
with numpy: a box includes its edges; a lasso is a closed polygon (even-odd rule, as Plotly's
own lasso).

A region is ``{"box": [[x0, x1], [y0, y1]]}`` or ``{"lasso": [[x, ...], [y, ...]]}``.
"""

from __future__ import annotations

import numpy as np

REGION_KINDS = ("box", "lasso")
#: a lasso drawn with more vertices than this is refused (Plotly adds one per mouse move)
MAX_LASSO_VERTICES = 20_000
#: point-edge crossing tests one lasso may need (~1 s of numpy); an ordinary lasso needs a few per point
MAX_LASSO_TESTS = 200_000_000


class RegionError(ValueError):
    """A region that is not a box or lasso of finite numbers."""


def _finite(name: str, values, size: int | None) -> np.ndarray:
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise RegionError(f"{name} must be a list of numbers")
    arr = np.asarray(values, dtype=np.float64)
    if size is not None and arr.size != size:
        raise RegionError(f"{name} must have {size} numbers, got {arr.size}")
    if not np.isfinite(arr).all():
        raise RegionError(f"{name} must be finite numbers")
    return arr


def parse_region(value) -> tuple[str, np.ndarray]:
    """``("box", [[x0, x1], [y0, y1]])`` (sorted) or ``("lasso", (k, 2) vertices)`` from the
    bridge's ``region`` object; raises ``RegionError`` naming the problem."""
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in REGION_KINDS:
        raise RegionError(f"a region must be an object with one key of {list(REGION_KINDS)}")
    kind, axes = next(iter(value.items()))
    if not isinstance(axes, list) or len(axes) != 2:
        raise RegionError(f"a {kind} region must be [x values, y values]")
    if kind == "box":
        return kind, np.sort(np.stack([_finite("box x range", axes[0], 2), _finite("box y range", axes[1], 2)]),
                             axis=1)
    xs, ys = _finite("lasso x", axes[0], None), _finite("lasso y", axes[1], None)
    if xs.size != ys.size or not 3 <= xs.size <= MAX_LASSO_VERTICES:
        raise RegionError(f"a lasso needs as many x as y values, 3 to {MAX_LASSO_VERTICES}; got {xs.size} and "
                          f"{ys.size}")
    return kind, np.stack([xs, ys], axis=1)


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: a horizontal ray from each point crosses the polygon's edges an odd number
    of times. The points are sorted by y once, so each edge tests only the points of its own
    y band; a lasso whose bands hold more than ``MAX_LASSO_TESTS`` point-edge tests in all is
    refused before any is made (one visitor's zigzag must not hold the server for minutes)."""
    order = np.argsort(points[:, 1], kind="stable")
    x, y = points[order, 0], points[order, 1]
    ax, ay = polygon[:, 0], polygon[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    # an edge crosses the ray of the points with min(ay, by) <= y < max(ay, by) (horizontal edges: none)
    start = np.searchsorted(y, np.minimum(ay, by), side="left")
    stop = np.searchsorted(y, np.maximum(ay, by), side="left")
    tests = int(np.sum(stop - start))
    if tests > MAX_LASSO_TESTS:
        raise RegionError(f"this lasso crosses too many points too often ({tests:,} point-edge tests, at most "
                          f"{MAX_LASSO_TESTS:,}): draw it with fewer turns")
    inside = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(stop > start):
        band = slice(start[i], stop[i])
        at = ax[i] + (y[band] - ay[i]) * (bx[i] - ax[i]) / (by[i] - ay[i])
        inside[band] ^= x[band] < at
    out = np.empty_like(inside)
    out[order] = inside
    return out


def rows_in_region(coords: np.ndarray, kind: str, shape: np.ndarray) -> np.ndarray:
    """The rows of ``coords`` ((N, ≥2) map coordinates) inside the region, ascending; raises
    ``RegionError`` for a lasso too costly to test (``MAX_LASSO_TESTS``)."""
    x, y = coords[:, 0], coords[:, 1]
    lo, hi = (shape[:, 0], shape[:, 1]) if kind == "box" else (shape.min(axis=0), shape.max(axis=0))
    rows = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))
    if kind == "lasso" and rows.size:
        rows = rows[_inside_polygon(np.asarray(coords[rows, :2], dtype=np.float64), shape)]
    return rows
