"""Latency statistics: each sample is the mean time of ``number`` back-to-back calls after
``warmup`` untimed ones (the scheme of TVM's time_evaluator); a run reports the median and
the interquartile range of its samples, robust to the odd slow sample on a shared machine."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    backend: str
    device: str
    median_ms: float
    iqr_ms: float          # q3 - q1
    q1_ms: float
    q3_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    repeats: int           # number of samples
    number: int            # calls averaged in each sample
    warmup: int            # untimed calls before the first sample
    samples_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.backend} ({self.device}): median {self.median_ms:.3f} ms, IQR "
                f"{self.iqr_ms:.3f} ms ({self.repeats} samples x {self.number} calls, "
                f"{self.warmup} warm-up)")


def summarize(backend: str, samples_s: Sequence[float], *, number: int, warmup: int,
              device: str = "cpu") -> LatencyStats:
    """Statistics of per-sample mean call times given in seconds."""
    if not samples_s:
        raise ValueError("no latency samples to summarize")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    q1, median, q3 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    return LatencyStats(backend, device, median, q3 - q1, q1, q3, float(ms.mean()),
                        float(ms.min()), float(ms.max()), len(ms), number, warmup,
                        tuple(float(v) for v in ms))


def time_repeats(fn: Callable[[], Any], *, repeats: int, number: int, warmup: int,
                 sync: Callable[[], None] | None = None) -> list[float]:
    """Call ``fn`` warmup times, then take ``repeats`` samples of ``number`` calls each;
    returns the mean seconds per call of each sample. ``sync`` waits for asynchronous work
    (e.g. torch.cuda.synchronize) before the clock is read."""
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, number >= 1, warmup >= 0; got {repeats}, "
                         f"{number}, {warmup}")
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) / number)
    return samples
