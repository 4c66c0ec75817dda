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


def test_layers_timed_on_tvm_drive_a_latency_budget(tmp_path, monkeypatch):
    """latency-source=tvm: every conv / linear layer compiled by TVM for this CPU and timed
    alone (cached), the profile for the rest; the budget is met on that metric."""
    import torch
    from torch import nn

    import prunepass
    from prunepass.backends.measure.layer_latency import LayerLatency
    from prunepass.hardware import load_profile
    from prunepass.passes.plan.budget import measured_latency
    from prunepass.testing import randomize
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)  # set by the timer, undone after
    torch.manual_seed(0)
    model = randomize(nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval())
    x = (torch.randn(1, 3, 16, 16),)
    res = prunepass.prune(model, x, "prune-channels<target-latency-ms=0.7x,latency-source=tvm,"
                          "hw-trials=0,hw-threads=2>,dce", check_numerics=True)
    budget = res.record.step("remove-channels")["budget"]
    assert "measured alone on tvm (0 trials per kernel)" in budget["budget"]
    assert budget["achieved"] <= budget["target"] == pytest.approx(0.7 * budget["dense"])
    assert budget["evaluations"] <= 21
    # the metric of the pruned model, read back from the cache, is what the budget reported
    metric = measured_latency(load_profile("x86-epyc"), "tvm", 2, 0)
    assert metric(prunepass.load(res.model, x).graph) == pytest.approx(budget["achieved"])
    timer = LayerLatency("tvm", threads=2, trials=0)
    assert timer.table_key.endswith("trials=0") and len(timer._table) >= 3
    with pytest.raises(prunepass.PrunepassError, match="TVM_NUM_THREADS=2 but 1 threads"):
        LayerLatency("tvm", threads=1)


def test_a_layer_timed_on_tvm_with_trials_keeps_its_tuning_records(tmp_path, monkeypatch):
    from prunepass.backends.measure.layer_latency import LayerLatency, LayerSpec, tvm_database
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    spec = LayerSpec("conv2d", 8, 8, 8, 8, 3, 3, padding=(1, 1))
    timer = LayerLatency("tvm", trials=1, repeats=3, number=1)
    assert timer(spec) > 0 and timer.measured == 1
    records = list(tvm_database().rglob("database_tuning_record.json"))
    assert records and records[0].read_text().strip()  # the kernel's measured schedule
    again = LayerLatency("tvm", trials=1)
    assert again(spec) == timer(spec) and again.measured == 0
    assert LayerLatency("tvm", trials=0).table_key != again.table_key  # untuned: its own table


def test_layers_timed_on_tvm_together_are_tuned_in_one_call(tmp_path, monkeypatch):
    import importlib

    from prunepass.backends.measure.layer_latency import LayerLatency, LayerSpec
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    calls = []

    def spy(module):  # the real tune_model, its calls noted
        real = module.tune_model

        def tune_model(mod, *args, **kwargs):
            db, report = real(mod, *args, **kwargs)
            calls.append((len(mod) if isinstance(mod, list) else 1, report))
            return db, report
        monkeypatch.setattr(module, "tune_model", tune_model)

    spy(importlib.import_module("prunepass.backends.tvm.tune"))
    spy(importlib.import_module("prunepass.backends.tvm.compile"))
    specs = [LayerSpec("conv2d", 8, count, 8, 8, 3, 3, padding=(1, 1)) for count in (6, 8)]
    timer = LayerLatency("tvm", trials=1, repeats=3, number=1)
    assert all(ms > 0 for ms in timer.many(specs)) and timer.measured == 2
    (blocks, tuning), *builds = calls
    # two convolutions, and (channel blocks, the x86 layout) the layout transforms at the
    # blocks' edges; every kernel measured once
    convs = [t for t in tuning.tasks if "conv" in t]
    assert blocks == 2 and len(convs) == 2 and tuning.measured == len(tuning.tasks)
    # each build then finds all its kernels tuned: the conv and its block's two transforms
    assert [(n, r.measured, len(r.reused)) for n, r in builds] == [(1, 0, 3), (1, 0, 3)]


def test_a_block_compiled_by_tvm_computes_what_onnxruntime_computes(tmp_path, monkeypatch):
    """hw-round=tvm times blocks of layers: the block's ONNX form, compiled by TVM, gives
    onnxruntime's outputs, and is timed."""
    import numpy as np
    import onnxruntime as ort

    from prunepass.backends.measure.layer_latency import (BlockSpec, LayerLatency, LayerSpec,
                                                          _feed, block_onnx)
    from prunepass.backends.tvm import compile_model
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    a = LayerSpec("conv2d", 8, 12, 6, 6, 3, 3, padding=(1, 1))
    b = LayerSpec("conv2d", 4, 12, 6, 6, 1, 1)
    dw = LayerSpec("conv2d", 12, 12, 6, 6, 3, 3, padding=(1, 1), groups=12)
    c = LayerSpec("conv2d", 12, 5, 6, 6, 1, 1)
    block = BlockSpec((a, b), (dw,), (c,))
    model, inputs = block_onnx(block)
    feed = _feed(inputs)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feed)
    got = compile_model(model, None, "x86", tmp_path, route="onnx", progress=False).load()(
        *feed.values())
    assert [g.shape for g in got] == [(1, 5, 6, 6)]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    assert LayerLatency("tvm", cache=None, repeats=3, number=1)(block) > 0


def test_a_latency_budget_on_tvm_built_models_measures_every_plan(tmp_path, monkeypatch):
    """latency-source=tvm-model: each plan the search tries is built as a model, compiled by
    TVM and timed; the budget is met on those measurements and the record says so."""
    import torch
    from torch import nn

    import prunepass
    from prunepass.testing import randomize
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    torch.manual_seed(0)
    model = randomize(nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10)).eval())
    x = (torch.randn(1, 3, 24, 24),)
    res = prunepass.prune(model, x, "prune-channels<target-latency-ms=0.6x,"
                          "latency-source=tvm-model,hw-trials=0>,dce", check_numerics=True)
    budget = res.record.step("remove-channels")["budget"]
    assert budget["budget"].startswith("latency (ms, each planned model compiled by tvm")
    assert budget["achieved"] <= budget["target"] == pytest.approx(0.6 * budget["dense"])
    assert 2 <= budget["evaluations"] <= 21
    kept = [g["kept"] for g in res.record.step("remove-channels")["groups"]]
    assert kept and all(k < 32 for k in kept)  # channels went: untuned convs cost per MAC
    out = res.model(*x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_hw_check_times_plans_compiled_by_tvm(monkeypatch):
    """hw-check with hw-round=tvm: both plans are built, compiled for this CPU (untuned
    here) and timed in alternating rounds."""
    import numpy as np
    import torch
    from torch import nn

    from prunepass.frontends.torch import TorchModel
    from prunepass.passes.plan.hw_check import time_plans
    from prunepass.pm import AnalysisManager
    from prunepass.testing import randomize
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    model = TorchModel.from_module(randomize(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()),
        (torch.randn(1, 3, 8, 8),))
    cg = AnalysisManager(model).get("channel-groups")
    removed = np.zeros(cg.n_classes, bool)
    (g16,) = [g for g in cg.groups if g.size == 16]
    removed[g16.classes[:12]] = True
    rounds = time_plans(model, {"dense": cg.keep_for(np.zeros_like(removed)),
                                "pruned": cg.keep_for(removed)}, "tvm", 0, 0, rounds=2)
    assert sorted(rounds) == ["dense", "pruned"]
    assert all(len(r) == 2 and min(r) > 0 for r in rounds.values())
