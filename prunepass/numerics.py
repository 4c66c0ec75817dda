"""Comparing model outputs: the one error measure every numerical check uses."""
from __future__ import annotations

import numpy as np


def relative_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    err = 0.0
    for x, y in zip(a, b):
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            return float("inf")  # NaN compares false: max() would keep the old error
        denom = max(float(np.abs(y).max()), 1e-12) if y.size else 1.0
        err = max(err, float(np.abs(x - y).max()) / denom if x.size else 0.0)
    return err
