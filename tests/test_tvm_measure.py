"""Latency statistics shared by the torch, onnxruntime and TVM backends, and measure() on each.
The statistics tests need no TVM; the TVM one skips without it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass.backends.measure.latency import summarize, time_repeats
from prunepass.backends.measure.measure import measure
from prunepass.testing import randomize

X = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def test_summary_statistics_are_median_and_iqr_in_ms():
    stats = summarize("x", [0.004, 0.001, 0.002, 0.003, 0.100], number=10, warmup=3)
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.q1_ms == pytest.approx(2.0) and stats.q3_ms == pytest.approx(4.0)
    assert stats.iqr_ms == pytest.approx(2.0)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(100.0)
    assert stats.mean_ms == pytest.approx(22.0)
    assert (stats.repeats, stats.number, stats.warmup) == (5, 10, 3)
    assert "median 3.000 ms" in str(stats) and stats.to_dict()["iqr_ms"] == pytest.approx(2.0)


def test_time_repeats_counts_calls():
    calls = []
    samples = time_repeats(lambda: calls.append(1), repeats=4, number=3, warmup=2)
    assert len(samples) == 4 and len(calls) == 2 + 4 * 3 and all(s >= 0 for s in samples)
    with pytest.raises(ValueError):
        time_repeats(lambda: None, repeats=0, number=1, warmup=0)


@pytest.fixture(scope="module")
def pruned() -> nn.Module:
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 1)).eval())
    return prunepass.prune(model, X, "prune-channels<ratio=0.5>,dce").model.eval()


@pytest.mark.parametrize("backend", ["torch", "ort", "tvm"])
def test_every_backend_is_measured_the_same_way(pruned, backend):
    if backend == "tvm":
        pytest.importorskip("tvm", reason="Apache TVM is not installed")
    if backend == "ort":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    stats = measure(backend, pruned, X, repeats=7, number=3, warmup=2)
    assert stats.backend == backend
    assert (stats.repeats, stats.number, stats.warmup) == (7, 3, 2)
    assert len(stats.samples_ms) == 7
    assert 0 < stats.min_ms <= stats.q1_ms <= stats.median_ms <= stats.q3_ms <= stats.max_ms
    assert stats.median_ms == pytest.approx(float(np.median(stats.samples_ms)))
    assert pruned.training is False


def test_unknown_backend():
    with pytest.raises(prunepass.PrunepassError, match="unknown backend 'tensorrt'"):
        measure("tensorrt", nn.Identity(), X)
