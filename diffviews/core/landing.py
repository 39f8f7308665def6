"""Where did a generation land on the map? Pure numpy, so it runs on the CPU side.

The landed class of a sample is the majority class of the ``k`` map points nearest to its
final map position, among the points at the map's lowest noise level (the ones closest to
finished images). With a point set A (the selection the intervention steered towards),
the report also gives how far each sample ended from A's centroid and how much closer it
got than where it started (its trajectory's first point, or the same seed's unsteered
result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class LandingReport:
    landed: np.ndarray  # (B,) label that won the vote of the k nearest lowest-level map points
    vote_share: np.ndarray  # (B,) fraction of those k points carrying the winning label
    k: int  # number of voters used (k, or fewer when the lowest level has fewer points)
    level: float  # the noise level whose points voted
    distance_final: np.ndarray | None = None  # (B,) final point → centroid of A
    distance_start: np.ndarray | None = None  # (B,) start point → centroid of A
    travelled: np.ndarray | None = None  # (B,) distance_start - distance_final: > 0 moved towards A

    def share(self, label) -> float:
        """Fraction of samples that landed in ``label``."""
        return float(np.mean(self.landed == label))


def _as_points(name: str, arr, n: int | None = None) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or (n is not None and len(arr) != n):
        want = f"({n}, 2)" if n is not None else "(N, 2)"
        raise ValueError(f"{name} has shape {arr.shape}; expected {want} map coordinates")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite coordinates")
    return arr


def _vote(labels: np.ndarray, dists: np.ndarray) -> tuple[object, float]:
    """Majority label of one sample's voters; a tie goes to the label of the nearest voter."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    tied = np.flatnonzero(counts == counts.max())
    if len(tied) > 1:
        nearest = {c: dists[inverse == c].min() for c in tied}
        best = min(tied, key=nearest.__getitem__)
    else:
        best = tied[0]
    return values[best], counts[best] / len(labels)


def landing_report(final_coords, map_coords, map_labels, map_levels, k: int = 10,
                   set_a: Sequence[int] | None = None, start_coords=None) -> LandingReport:
    """Landed class and vote share for each of the B generated samples.

    ``final_coords`` (B, 2): the samples' final positions on the map. ``map_coords`` (N, 2),
    ``map_labels`` (N,) and ``map_levels`` (N,): the map's points, their classes and noise
    levels. ``set_a``: indices of the map points the intervention aimed at; with it the report
    holds each sample's distance to their centroid, and with ``start_coords`` (B, 2) as well,
    the distance travelled towards it.
    """
    final = _as_points("final_coords", final_coords)
    points = _as_points("map_coords", map_coords)
    labels, levels = np.asarray(map_labels), np.asarray(map_levels, dtype=np.float64)
    if labels.shape != (len(points),) or levels.shape != (len(points),):
        raise ValueError(f"map_labels {labels.shape} and map_levels {levels.shape} must both be "
                         f"({len(points)},), one per map point")
    if len(points) == 0:
        raise ValueError("the map has no points to vote")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if start_coords is not None and set_a is None:
        raise ValueError("start_coords needs set_a: distance travelled is measured towards set A's centroid")

    lowest = float(levels.min())
    voters = np.flatnonzero(np.isclose(levels, lowest))
    k_used = min(int(k), len(voters))
    d = np.linalg.norm(final[:, None, :] - points[voters][None, :, :], axis=-1)  # (B, n_voters)
    nearest = np.argpartition(d, k_used - 1, axis=1)[:, :k_used]
    votes = [_vote(labels[voters[row]], d[b, row]) for b, row in enumerate(nearest)]
    report = LandingReport(landed=np.array([v[0] for v in votes], dtype=labels.dtype),
                           vote_share=np.array([v[1] for v in votes], dtype=np.float64), k=k_used, level=lowest)
    if set_a is not None:
        idx = np.asarray(list(set_a), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(points):
            raise ValueError(f"set_a must hold map point indices within [0, {len(points) - 1}], got {idx[:5].tolist()}")
        centroid = points[idx].mean(axis=0)
        report.distance_final = np.linalg.norm(final - centroid, axis=1)
        if start_coords is not None:
            start = _as_points("start_coords", start_coords, len(final))
            report.distance_start = np.linalg.norm(start - centroid, axis=1)
            report.travelled = report.distance_start - report.distance_final
    return report
