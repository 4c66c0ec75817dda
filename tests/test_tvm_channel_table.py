"""Hardware-aware channel counts: a layer's latency across channel counts, measured with TVM
and cached on disk; the staircase of counts worth pruning to."""
from __future__ import annotations

import json

import pytest

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

import prunepass.backends.tvm.channel_table as channel_table  # noqa: E402
from prunepass.backends.measure.latency import summarize  # noqa: E402
from prunepass.backends.tvm import LayerShape, channel_latency_table, staircase  # noqa: E402

SHAPE = LayerShape("conv2d", in_channels=4, size=8)


def test_table_is_measured_once_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "channels.json"
    table = channel_latency_table(SHAPE, [4, 8], "x86", cache=cache, repeats=3, number=2,
                                  warmup=1)
    assert sorted(table) == [4, 8]
    assert all(s.repeats == 3 and s.median_ms > 0 for s in table.values())
    data = json.loads(cache.read_text())
    (target_key,) = data["tables"]
    assert set(data["tables"][target_key]["conv2d k3 s1 in4 8x8 n1 trials0"]) == {"4", "8"}

    compiled = []
    real = channel_table.compile_model
    monkeypatch.setattr(channel_table, "compile_model",
                        lambda *a, **k: compiled.append(k) or real(*a, **k))
    again = channel_latency_table(SHAPE, [4, 8, 12], "x86", cache=cache, repeats=3,
                                  number=2, warmup=1)
    assert len(compiled) == 1  # only the new count, 12, was built and measured
    assert again[4] == table[4] and again[8] == table[8] and again[12].median_ms > 0


def test_staircase_keeps_counts_no_larger_count_beats():
    def t(ms: float):
        return summarize("tvm", [ms / 1e3], number=1, warmup=0)

    table = {8: t(1.0), 12: t(1.6), 16: t(1.5), 24: t(2.4), 32: t(2.5)}
    # 12 channels take longer than 16: never prune to 12, keep 16.
    assert staircase(table) == [8, 16, 24, 32]
    # With a 5% tolerance, 24 is not worth it: 32 costs only 4% more.
    assert staircase(table, tolerance=0.05) == [8, 16, 32]


def test_layer_kind_is_checked():
    with pytest.raises(ValueError, match="conv2d or linear"):
        LayerShape("attention", 4, 8)
    layer, (x,) = LayerShape("linear", in_channels=6, size=5).module(3)
    assert layer(x).shape == (5, 3)
