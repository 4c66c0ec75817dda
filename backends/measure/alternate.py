"""Dense vs pruned on a shared machine: time the variants in alternating rounds in one
process, so that a slow spell (another job, a frequency change) hits every variant alike,
and report each variant's latency and each speedup as the median and IQR over rounds."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from prunepass.backends.measure.latency import time_repeats


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of a list of numbers."""
    median: float
    iqr: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        return cls(float(med), float(q3 - q1), len(values))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "iqr": self.iqr, "n": self.n}


def alternate(runners: Mapping[str, Callable[[], object]], *, rounds: int = 5,
              repeats: int = 5, number: int = 3, warmup: int = 3,
              pause_s: float = 0.05, progress: Callable[[], None] | None = None
              ) -> dict[str, list[float]]:
    """For each runner, the median ms of its ``repeats`` samples in each round (one value per
    round). Rounds visit the runners in turn, the order reversed every other round, with a
    pause between runners: onnxruntime's pool threads spin for a while after each run, and
    would steal the cores of the next runner (measured: a pruned resnet18 at 7.5 ms instead
    of 3.7 ms right after another session)."""
    names = list(runners)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = runners[name]
            time.sleep(pause_s)
            samples = time_repeats(fn, repeats=repeats, number=number, warmup=warmup,
                                   sync=getattr(fn, "sync", None))
            per_round[name].append(float(np.median(samples)) * 1e3)
        if progress:
            progress()
    return per_round


def speedup(dense: list[float], pruned: list[float]) -> Spread:
    """dense / pruned latency, one ratio per round."""
    return Spread.of([d / p for d, p in zip(dense, pruned)])
