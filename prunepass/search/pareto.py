"""Pareto fronts and hypervolume, over plain numbers (so uniform baselines and searched
points are compared with the same code)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_loss(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> np.ndarray:
    a = np.asarray(points, dtype=float).reshape(len(points), len(maximize))
    return np.where(np.asarray(maximize), -a, a)


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    la, lb = _as_loss([a, b], maximize)
    return bool(np.all(la <= lb) and np.any(la < lb))


def non_dominated(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept)."""
    if not len(points):
        return []
    loss = _as_loss(points, maximize)
    keep = []
    for i, p in enumerate(loss):
        beaten = np.all(loss <= p, axis=1) & np.any(loss < p, axis=1)
        if not beaten.any():
            keep.append(i)
    return keep


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float],
                   maximize: Sequence[bool] = (False, True)) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` in two objectives.
    By default the first objective is minimised (MACs) and the second maximised
    (accuracy): the reference is then the worst corner (largest MACs, lowest accuracy)
    and points beyond it add nothing."""
    if len(maximize) != 2:
        raise ValueError("hypervolume_2d takes two objectives")
    if not len(points):
        return 0.0
    loss = _as_loss(points, maximize)
    ref = _as_loss([reference], maximize)[0]
    loss = loss[np.all(loss < ref, axis=1)]
    if not len(loss):
        return 0.0
    loss = loss[np.lexsort((loss[:, 1], loss[:, 0]))]  # by x, then y
    area, best_y = 0.0, ref[1]
    for x, y in loss:  # sweep left to right: each point adds the strip below the best y
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)
