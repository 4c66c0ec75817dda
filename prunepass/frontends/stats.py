"""Per-channel sums of an activation: what the scores that read activations need, from
any frontend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ChannelStats:
    """Sums over every element of a channel: count, sum, sum of |x|, sum of x^2."""
    count: float
    total: np.ndarray
    total_abs: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, axis: int) -> "ChannelStats":
        t = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
        t = t.reshape(-1, t.shape[-1])
        return cls(float(t.shape[0]), t.sum(0), np.abs(t).sum(0), (t * t).sum(0))

    def __add__(self, other: "ChannelStats") -> "ChannelStats":
        return ChannelStats(self.count + other.count, self.total + other.total,
                            self.total_abs + other.total_abs, self.total_sq + other.total_sq)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.total_abs / self.count

    @property
    def norm(self) -> np.ndarray:
        return np.sqrt(self.total_sq)

    @property
    def variance(self) -> np.ndarray:
        mean = self.total / self.count
        return np.maximum(self.total_sq / self.count - mean * mean, 0.0)
