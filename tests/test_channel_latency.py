"""Hardware-aware rounding: layer latencies measured and cached, the staircase of channel
counts, snapping a group's kept count onto it, and prune-channels<hw-round=...> end to end.
Also the alternating-rounds comparison the benchmarks and `prunepass bench` use."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass.backends.measure.alternate import Spread, alternate, speedup
from prunepass.backends.measure.layer_latency import LayerLatency, LayerSpec
from prunepass.frontends.torch import TorchModel
from prunepass.passes.analysis.channel_latency import ChannelLatency, candidates, staircase
from prunepass.pm import AnalysisManager
from prunepass.testing import randomize

pytest.importorskip("onnxruntime")


class SteppedTimer:
    """A latency that rises in steps of 8 channels, in and out (test double for a backend)."""

    def __init__(self) -> None:
        self.asked: list[LayerSpec] = []

    def many(self, blocks):  # noqa: ANN001, ANN201
        self.blocks = list(blocks)
        out = []
        for b in self.blocks:
            self.asked += b.layers
            out.append(sum(float(math.ceil(s.cout / 8) * math.ceil(s.cin / 8))
                           for s in b.layers))
        return out


def net() -> nn.Module:
    return randomize(nn.Sequential(
        nn.Conv2d(3, 50, 3, padding=1), nn.BatchNorm2d(50), nn.ReLU(),
        nn.Conv2d(50, 50, 3, padding=1, groups=50), nn.ReLU(),  # depthwise: moves with 50
        nn.Conv2d(50, 30, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(30, 10)).eval())


X = (torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0)),)


def test_staircase_keeps_counts_no_larger_count_beats():
    table = {8: 1.0, 9: 2.0, 10: 2.0, 16: 2.0, 17: 3.0, 24: 2.9}
    # 24 beats 17 (fewer ms, more channels); 16 beats 9 and 10 (ties need to be faster)
    assert staircase(table) == [8, 16, 24]
    assert staircase({8: 1.0, 16: 1.02, 24: 3.0}, tolerance=0.05) == [16, 24]


def test_candidates_lie_in_the_window_and_respect_round_to():
    assert candidates(50, 64, 0.1, 1, 1) == list(range(45, 56))
    assert candidates(50, 64, 0.1, 4, 1) == [48, 52]
    assert candidates(3, 64, 0.5, 1, 2) == [2, 3, 4, 5]
    wide = candidates(500, 1000, 0.5, 1, 1)
    assert len(wide) == 24 and wide[0] == 250 and wide[-1] == 750 and 500 in wide
    # the most aligned counts of the window come first: 256, 512 (and every multiple of 64)
    assert {256, 320, 384, 448, 512, 576, 640, 704} <= set(wide)


def test_snap_moves_a_count_to_the_nearest_step_of_its_layers():
    adapter = TorchModel.from_module(net(), X)
    am = AnalysisManager(adapter)
    cg = am.get("channel-groups")
    table = ChannelLatency(adapter.graph, cg, SteppedTimer())
    g50 = next(g for g in cg.groups if g.size == 50)
    # the producer conv (cout) and the depthwise (cin = cout) scale with the count,
    # the 1x1 consumer's cin scales too: every layer of the group is asked
    assert table.latency_ms(g50, 41) > table.latency_ms(g50, 40) == table.latency_ms(g50, 33)
    asked = {(s.kind, s.groups) for s in table.timer.asked}
    assert ("conv2d", 40) in asked and ("conv2d", 1) in asked
    # timed as one block: the producer, the depthwise chain, the 1x1 consumer
    block = table.block(g50, 40)
    assert [(s.cin, s.cout, s.groups) for s in block.layers] == [(3, 40, 1), (40, 40, 40),
                                                                 (40, 30, 1)]
    assert (len(block.producers), len(block.chain), len(block.consumers)) == (1, 1, 1)
    # 35 requested: candidates 29..41; the stepped costs make 32, 40 and 41 the steps
    assert table.snap(g50, 35, window=0.15, tolerance=0.0) == 32
    assert table.snap(g50, 37, window=0.15, tolerance=0.0) == 40
    assert table.snap(g50, 50, window=0.15, tolerance=0.0) == 50  # not pruned: unchanged


def test_layer_latency_is_measured_once_and_read_from_the_cache(tmp_path):
    cache = tmp_path / "lat.json"
    spec = LayerSpec("conv2d", 8, 16, 10, 10, 3, 3, padding=(1, 1))
    lin = LayerSpec("linear", 16, 4, h=3)
    timer = LayerLatency("ort", threads=1, cache=cache, repeats=3, number=2)
    ms = timer.many([spec, lin, spec])
    assert timer.measured == 2 and ms[0] == ms[2] and all(m > 0 for m in ms)
    again = LayerLatency("ort", threads=1, cache=cache)
    assert again.many([spec, lin]) == ms[:2] and again.measured == 0
    data = json.loads(cache.read_text())
    assert data["format"] == "prunepass-layer-latency/1"
    assert LayerLatency("torch", threads=1, cache=cache, repeats=3, number=2)(spec) > 0
    cache.write_text("{not json")  # an unreadable cache is measured again, not trusted
    fresh = LayerLatency("ort", threads=1, cache=cache, repeats=3, number=2)
    fresh(lin)
    assert fresh.measured == 1
    with pytest.raises(prunepass.PrunepassError, match="'cuda'.*ort, torch, tvm"):
        LayerLatency("cuda")
    with pytest.raises(prunepass.PrunepassError, match="trials are for the tvm backend"):
        LayerLatency("ort", trials=4)
    with pytest.raises(ValueError, match="multiples of groups"):
        LayerSpec("conv2d", 6, 4, groups=4)


def test_hw_round_prunes_onto_measured_steps_and_equals_the_masked_model(tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    model = net()
    pipeline = ("prune-channels<ratio=0.3,hw-round=ort,hw-threads=1,hw-tolerance=0.0,"
                "hw-check=false>,dce")
    res = prunepass.prune(model, X, pipeline, check_numerics=True)
    step = res.record.step("remove-channels")
    assert step["max_rel_error_vs_masked"] < 1e-5
    groups = {g["channels"]: g for g in step["groups"]}
    # what the pass chose is the snap of the analysis on the same (cached) measurements
    adapter = TorchModel.from_module(model, X)
    am = AnalysisManager(adapter)
    table = am.get("channel-latency", backend="ort", threads=1)
    cg = am.get("channel-groups")
    for g in cg.groups:
        if g.size in groups:
            want = g.size - int(round(0.3 * g.size))
            assert groups[g.size]["kept"] == table.snap(g, want, window=0.15, tolerance=0.0)
    assert table.timer.measured == 0  # the pass measured them; the analysis read the cache
    assert (tmp_path / "layer-latency.json").exists()
    out = res.model(*X)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_alternate_visits_runners_in_turn_and_reverses_every_other_round():
    order = []
    runners = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    rounds = alternate(runners, rounds=3, repeats=1, number=1, warmup=0, pause_s=0.0)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert len(rounds["a"]) == len(rounds["b"]) == 3
    up = speedup([10.0, 12.0, 11.0, 30.0], [5.0, 6.0, 5.5, 10.0])
    assert up.median == pytest.approx(2.0) and up.n == 4
    assert up.iqr == pytest.approx(float(np.subtract(*np.percentile([2, 2, 2, 3], [75, 25]))))
    assert Spread.of([1.0, 2.0, 3.0]).to_dict() == {"median": 2.0, "iqr": 1.0, "n": 3}


def test_latency_budget_from_measured_layers_is_met(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    from prunepass.hardware import load_profile
    from prunepass.passes.plan.budget import measured_latency
    model = net()
    # 32x32, not X's 12x12: layers that small take a few microseconds, mostly the runtime's
    # own per-call cost, so no pruning reached 0.7x of dense in some runs
    x = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
    pipeline = ("prune-channels<target-latency-ms=0.7x,latency-source=ort,hw-threads=1>,dce")
    res = prunepass.prune(model, x, pipeline, check_numerics=True)
    budget = res.record.step("remove-channels")["budget"]
    assert "measured alone on ort" in budget["budget"]
    assert budget["achieved"] <= budget["target"] == pytest.approx(0.7 * budget["dense"])
    # the metric is the sum of the cached layer timings plus the profile for other nodes
    metric = measured_latency(load_profile("x86-epyc"), "ort", 1)
    dense = metric(TorchModel.from_module(model, x).graph)
    assert dense == pytest.approx(budget["dense"])
    assert metric(prunepass.load(res.model, x).graph) == pytest.approx(budget["achieved"],
                                                                      rel=1e-6)


def test_block_program_sums_producers_chains_and_feeds_consumers():
    from prunepass.backends.measure.layer_latency import BlockSpec, block_program
    a = LayerSpec("conv2d", 8, 16, 10, 10, 3, 3, padding=(1, 1))
    down = LayerSpec("conv2d", 4, 16, 20, 20, 1, 1, stride=(2, 2))  # 20x20 -> 10x10
    dw = LayerSpec("conv2d", 16, 16, 10, 10, 3, 3, padding=(1, 1), groups=16)
    c = LayerSpec("conv2d", 16, 8, 10, 10, 1, 1)
    far = LayerSpec("linear", 16, 5, h=3)  # another shape: reads an input of its own
    block = BlockSpec((a, down), (dw,), (c, far))
    steps, outputs, inputs = block_program(block)
    assert [(src, out) for src, _, out in steps] == [
        ("x0", "p0"), ("x1", "p1"), ("p0+p1", "t0"), ("t0", "d0"), ("d0", "c0"), ("x2", "c1")]
    assert outputs == ["c0", "c1"]
    assert inputs == {"x0": (1, 8, 10, 10), "x1": (1, 4, 20, 20), "x2": (3, 16)}
    assert BlockSpec((a,)).key == a.key and block.key != a.key
    for backend in ("ort", "torch"):
        assert LayerLatency(backend, threads=1, cache=None, repeats=3, number=1)(block) > 0


def test_hw_round_makes_the_same_choices_on_the_torch_model_and_its_onnx_export(
        tmp_path, monkeypatch):
    """The dynamo exporter writes a linear layer on a 3-D input as MatMul + Add: timed as the
    same linear layer, so both routes snap to the same counts."""
    monkeypatch.setenv("PRUNEPASS_CACHE", str(tmp_path))
    model = randomize(nn.Sequential(nn.Linear(16, 44), nn.GELU(), nn.Linear(44, 16)).eval())
    x = torch.randn(1, 10, 16)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True,
                      external_data=False)
    pipeline = "prune-channels<ratio=0.3,hw-round=ort,hw-threads=1,hw-check=false>,dce"
    routes = [prunepass.prune(model, (x,), pipeline),
              prunepass.prune(str(tmp_path / "m.onnx"), None, pipeline)]
    groups = [r.record.step("remove-channels")["groups"] for r in routes]
    kept = [sorted((g["channels"], g["kept"]) for g in gs) for gs in groups]
    assert kept[0] == kept[1] and kept[0][0][0] == 44
    onnx_am = AnalysisManager(prunepass.load(str(tmp_path / "m.onnx")))
    cg = onnx_am.get("channel-groups")
    touched = onnx_am.get("channel-latency", backend="ort", threads=1).touches
    assert {t.node.op for g in cg.groups for t in touched.get(g.id, [])} == {"matmul"}


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 24, 3, padding=1)
        self.c = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_a_consumer_of_a_concatenation_is_timed_with_all_its_inputs_scaled():
    adapter = TorchModel.from_module(randomize(Concat().eval()), X)
    am = AnalysisManager(adapter)
    cg = am.get("channel-groups")
    table = ChannelLatency(adapter.graph, cg, SteppedTimer())
    g8 = next(g for g in cg.groups if g.size == 8)
    block = table.block(g8, 4)
    assert [(s.cin, s.cout) for s in block.producers] == [(3, 4)]
    # c reads a's 8 and b's 24 channels: at half of a, b is assumed halved too (16 in all)
    assert [(s.cin, s.cout) for s in block.consumers] == [(16, 4)]


def test_groups_read_together_snap_together_to_one_fraction():
    """a (8 channels) and b (24) are concatenated into c. Each block times c with its whole
    input scaled like the group; snapped alone, 3 of 8 and 9 of 24 would go to 4 and 8, and
    c would read 12 channels, a count neither block was timed with."""
    adapter = TorchModel.from_module(randomize(Concat().eval()), X)
    cg = AnalysisManager(adapter).get("channel-groups")
    timer = SteppedTimer()
    table = ChannelLatency(adapter.graph, cg, timer)
    g8, g24 = (next(g for g in cg.groups if g.size == n) for n in (8, 24))
    assert table.read_together == [{g8.id, g24.id}]
    opts = {"window": 0.15, "tolerance": 0.0}
    assert (table.snap(g8, 3, **opts), table.snap(g24, 9, **opts)) == (4, 8)
    # together: b follows a's fraction (a's candidates 2, 3, 4 -> b at 6, 9, 12), one batch
    assert table.snap_many([(g8, 3), (g24, 9)], **opts) == [4, 12]
    assert [(s.cout, s.cin) for b in timer.blocks for s in b.producers] == [
        (2, 3), (3, 3), (4, 3), (6, 3), (9, 3), (12, 3)]
    # asked for different fractions (a budget's global ranking), each moves alone
    assert table.snap_many([(g8, 3), (g24, 15)], **opts) == [
        table.snap(g8, 3, **opts), table.snap(g24, 15, **opts)]
    assert table.snap_many([(g8, 8), (g24, 9)], **opts) == [8, table.snap(g24, 9, **opts)]


@pytest.mark.parametrize("faster", ["snapped", "asked"])
def test_hw_check_keeps_the_plan_whose_model_ran_faster(monkeypatch, faster):
    """Both plans are built and timed as models; the record carries both timings."""
    from prunepass.passes.analysis.channel_latency import ChannelLatencyAnalysis
    from prunepass.passes.plan import hw_check

    class TwoMore:  # a staircase two channels above every request
        def snap_many(self, reqs, **kw):  # noqa: ANN001, ANN003, ANN202
            return [min(g.size, k + 2) for g, k in reqs]
    monkeypatch.setattr(ChannelLatencyAnalysis, "run", lambda self, graph, am: TwoMore())
    timed = {}

    def time_plans(model, keeps, backend, threads, trials, rounds=5):  # noqa: ANN001, ANN202
        timed.update(keeps=keeps, backend=backend, threads=threads)
        return {name: [1.0 if name == faster else 1.5] * 5 for name in keeps}
    monkeypatch.setattr(hw_check, "time_plans", time_plans)
    res = prunepass.prune(net(), X, "prune-channels<ratio=0.3,hw-round=ort,hw-threads=1>,dce",
                          check_numerics=True)
    changes = res.record.step("remove-channels")
    kept = sorted((g["channels"], g["kept"]) for g in changes["groups"])
    assert kept == ([(30, 23), (50, 37)] if faster == "snapped" else [(30, 21), (50, 35)])
    assert (timed["backend"], timed["threads"]) == ("ort", 1)
    asked = timed["keeps"]["asked"]
    assert sorted({len(idx) for (name, axis), idx in asked.items() if axis == 0}) == [21, 35]
    check = changes["hw_check"]
    assert check["kept"] == faster and check["source"].startswith("measured here (ort, 1 ")
    assert check["snapped_speedup"]["median"] == pytest.approx(1.5 if faster == "snapped"
                                                               else 1 / 1.5)
    assert changes["max_rel_error_vs_masked"] < 1e-5
    from prunepass.report import format_record
    assert (f"hw-check kept the {faster} counts (snapped {1.0 if faster == 'snapped' else 1.5:.2f}"
            " ms") in format_record(res.record)


def test_hw_check_times_plans_built_from_torch_and_onnx_models(tmp_path):
    from prunepass.passes.plan.hw_check import compare, time_plans
    torch.onnx.export(net(), X, str(tmp_path / "m.onnx"), dynamo=True, external_data=False)
    for model in (TorchModel.from_module(net(), X), prunepass.load(str(tmp_path / "m.onnx"))):
        cg = AnalysisManager(model).get("channel-groups")
        g50 = next(g for g in cg.groups if g.size == 50)
        removed = np.zeros(cg.n_classes, bool)
        small = removed.copy()
        small[g50.classes[:40]] = True
        rounds = time_plans(model, {"dense": cg.keep_for(removed), "small": cg.keep_for(small)},
                            "ort", 1, 0, rounds=2)
        assert sorted(rounds) == ["dense", "small"]
        assert all(len(r) == 2 and min(r) > 0 for r in rounds.values())
    assert compare(model, cg.keep_for(small), cg.keep_for(removed), "torch", 1, 0) == {
        "kept": "snapped", "skipped": "torch cannot run a model of the onnx frontend"}
