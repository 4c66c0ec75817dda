"""Energy: profiles load and validate, node energies match hand computation, pruning lowers
energy monotonically, calibration recovers known coefficients, meters fail loudly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import prunepass
from prunepass.backends.measure.energy import RaplMeter, measure_energy, MeterUnavailable
from prunepass.frontends.torch import TorchModel
from prunepass.hardware import ProfileError, available_profiles, load_profile
from prunepass.hardware.calibrate import Run, calibrate, features, loose_bytes, loose_nodes, \
    measured_run, predict_latency, unaligned_layers
from prunepass.passes.analysis.cost import compute_cost
from prunepass.passes.analysis.energy import PJ_PER_J, compute_energy

PROFILES = ["arm-cortex-a72", "eyeriss-relative", "horowitz-45nm", "nvidia-h100", "x86-epyc"]


def test_shipped_profiles_load_with_sources():
    assert available_profiles() == PROFILES
    for name in PROFILES:
        p = load_profile(name)
        assert p.sources and all(len(s) > 20 for s in p.sources)
        assert p.memory[-1].size_bytes is None


def _profile_dict():
    return yaml.safe_load(open(load_profile("horowitz-45nm").path))


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("mac_pj"), ["missing field 'mac_pj'"]),
    (lambda d: d["mac_pj"].update(float32=-1.0), ["mac_pj.float32", ">= 0"]),
    (lambda d: d["memory"][1].pop("pj_per_byte"), ["memory[1].pj_per_byte"]),
    (lambda d: d["memory"][2].update(size_bytes=10), ["memory levels must grow"]),
    (lambda d: d.update(sources=[]), ["sources"]),
    (lambda d: d["peak_macs_per_s"].update(float32="fast"), ["peak_macs_per_s.float32", "number"]),
])
def test_bad_profiles_name_the_file_and_field(mutate, words, tmp_path):
    d = _profile_dict()
    mutate(d)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ProfileError, match="no hardware profile 'nope'"):
        load_profile("nope")


class ConvLinear(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.fc = nn.Linear(c * 16, 10, bias=False)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.flatten(1)) + (y.flatten(2) @ y.flatten(2).transpose(1, 2)).sum()


def test_node_energy_equals_hand_computation():
    prof = load_profile("horowitz-45nm")
    g = TorchModel.from_module(ConvLinear().eval(), (torch.randn(1, 3, 4, 4),)).graph
    e = {n.op: n for n in compute_energy(g, compute_cost(g), prof).nodes}
    conv = e["conv"]
    macs = 8 * 16 * 27  # outputs x (3 x 3 x 3)
    moved = (3 * 16 + 8 * 27) * 4 + 8 * 16 * 4  # input + weight read, output written (fp32)
    level = prof.level_for(moved)
    assert conv.macs == macs and conv.bytes == moved and level.name == "sram-8KB"
    assert conv.compute == pytest.approx(macs * 4.6)
    assert conv.memory == pytest.approx(moved * 1.25)
    assert conv.static == 0.0  # this profile has no static power
    lin = e["linear"]
    assert lin.compute == pytest.approx(10 * 128 * 4.6)
    mm = e["matmul"]
    assert mm.macs == 8 * 8 * 16 and mm.compute == pytest.approx(8 * 8 * 16 * 4.6)
    x86 = load_profile("x86-epyc")
    c2 = compute_energy(g, compute_cost(g), x86).nodes[0]
    lat = max(c2.macs / x86.peak("float32"), c2.bytes / (x86.level_for(c2.bytes).bandwidth_gbs * 1e9))
    assert c2.static == pytest.approx(x86.static_power_w * lat * PJ_PER_J)


def test_energy_drops_monotonically_with_pruning():
    torch.manual_seed(0)
    import torchvision
    model = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 96, 96)
    totals = []
    for r in (0.0, 0.2, 0.4, 0.6, 0.8):
        rec = prunepass.prune(model, (x,), f"prune-channels<ratio={r}>",
                              energy_profile="arm-cortex-a72").record
        totals.append(rec.energy_after["total"])
        assert rec.energy_after["source"].startswith("modelled")
    assert all(a > b for a, b in zip(totals, totals[1:])), totals


def test_calibration_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    per_mac = {"conv": 2.0e-11, "grouped_conv": 9.0e-11, "gemm": 1.2e-11}
    truth = {"s_per_byte": 1.5e-10, "s_per_node": 3e-5}
    e_truth = {"j_per_mac": 1.2e-10, "j_per_byte": 4e-10, "static_w": 3.0}
    runs = []
    for i in range(12):
        macs = {k: rng.uniform(1e7, 3e9) for k in per_mac}
        moved, nodes = rng.uniform(1e7, 4e8), int(rng.integers(20, 300))
        t = sum(per_mac[k] * macs[k] for k in macs) + truth["s_per_byte"] * moved + \
            truth["s_per_node"] * nodes
        e = e_truth["j_per_mac"] * sum(macs.values()) + e_truth["j_per_byte"] * moved + \
            e_truth["static_w"] * t
        runs.append(Run(f"m{i}", macs, moved, nodes, t, e))
    cal = calibrate(load_profile("x86-epyc"), runs, "synthetic", "2026-11-23")
    lm = cal.profile.extra["latency_model"]
    for k, v in per_mac.items():
        assert lm["s_per_mac"][k] == pytest.approx(v, rel=1e-3)
    for k, v in truth.items():
        assert lm[k] == pytest.approx(v, rel=1e-3)
    for k, v in e_truth.items():
        assert cal.profile.extra["energy_model"][k] == pytest.approx(v, rel=1e-3)
    assert cal.mean_abs_pct_error("latency") < 1e-3
    assert "calibrated on synthetic, 2026-11-23" in cal.profile.provenance
    with pytest.raises(ProfileError, match="at least 3"):
        calibrate(load_profile("x86-epyc"), runs[:2], "x")


def _widths_net(c1: int, c2: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c1, c1, 3, padding=1, groups=c1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(c2, 16)).eval()


def test_calibration_finds_the_channel_block_and_its_unaligned_cost():
    """Layers whose channels are not multiples of 8 run 3x slower per MAC and cost a fixed
    time each: the aligned fit picks block 8 among 1/4/8/16 and recovers every cost, and
    the energy analysis then predicts a held-out width exactly."""
    truth = {"conv": 2e-11, "grouped_conv": 8e-11, "gemm": 1e-11}
    truth.update({f"{k}_unaligned": 3 * v for k, v in list(truth.items())})
    s_byte, s_node, s_unaligned, s_loose = 1e-10, 2e-5, 5e-5, 4e-10

    def graph(c1: int, c2: int, size: int):  # noqa: ANN202
        g = TorchModel.from_module(_widths_net(c1, c2), (torch.randn(1, 3, size, size),)).graph
        return g, compute_cost(g)

    def true_latency(g, cost) -> float:  # noqa: ANN001
        macs, moved, nodes = features(g, cost, 8)
        return (sum(truth[k] * m for k, m in macs.items()) + s_byte * moved + s_node * nodes
                + s_unaligned * unaligned_layers(g, cost, 8) + s_loose * loose_bytes(g, cost))

    widths = [(8, 16), (12, 16), (16, 20), (20, 24), (24, 32), (28, 36), (32, 40), (36, 44),
              (40, 48), (44, 52), (48, 60), (52, 64)]
    # image sizes vary too, so no cost column is a combination of the others
    graphs = [graph(*w, 6 + 2 * (i % 3)) for i, w in enumerate(widths)]
    aligned = {b: [measured_run(str(w), g, c, true_latency(g, c), b)
                   for w, (g, c) in zip(widths, graphs)] for b in (1, 4, 8, 16)}
    cal = calibrate(load_profile("x86-epyc"), aligned[1], "synthetic", aligned=aligned)
    lm = cal.profile.extra["latency_model"]
    assert lm["channel_block"] == 8
    for k, v in truth.items():
        assert lm["s_per_mac"][k] == pytest.approx(v, rel=1e-3)
    assert lm["s_per_unaligned_layer"] == pytest.approx(s_unaligned, rel=1e-3)
    assert lm["s_per_loose_byte"] == pytest.approx(s_loose, rel=1e-3)
    # the fitted model, applied to a whole run, gives what the fit reported for it
    assert [predict_latency(lm, r) for r in aligned[8]] == pytest.approx(
        [row.predicted for row in cal.latency], rel=1e-9)
    assert cal.mean_abs_pct_error("latency") < 1e-3
    plain = calibrate(load_profile("x86-epyc"), aligned[1], "synthetic")
    assert plain.mean_abs_pct_error("latency") > 1.0  # one cost per kind cannot fit this
    held_out = graph(30, 56, 9)  # 30: unaligned for 8 (and 4)
    e = compute_energy(*held_out, cal.profile)
    assert e.totals["latency_s"] == pytest.approx(true_latency(*held_out), rel=1e-3)


class PreActivation(nn.Module):
    """What a graph compiler fuses and what it cannot: conv-bn-relu chains and residual adds
    fold into their convolution; a concatenation, a norm and activation applied to it (as in
    densenet), an activation of a tensor read twice, and pooling stand alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.bn_a, self.bn_c = nn.BatchNorm2d(8), nn.BatchNorm2d(16)
        self.conv_c, self.conv_s = nn.Conv2d(16, 8, 1), nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn_a(self.conv_a(x)))
        c = torch.cat([a, self.conv_b(x)], 1)
        y = self.conv_c(torch.relu(self.bn_c(c)))
        s = self.conv_s(x)
        y = y + torch.relu(s) + s
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_loose_nodes_are_those_no_layer_absorbs():
    g = TorchModel.from_module(PreActivation().eval(), (torch.randn(1, 3, 8, 8),)).graph
    assert loose_nodes(g) == {"cat", "batch_norm_1", "relu_1", "relu_2", "adaptive_avg_pool2d"}
    cost = compute_cost(g)
    by_node = {c.node: c.read_bytes + c.act_bytes for c in cost.nodes}
    assert loose_bytes(g, cost) == sum(by_node[n] for n in loose_nodes(g)) > 0


def test_calibrated_profile_round_trips_and_drives_the_analysis(tmp_path):
    from prunepass.hardware import save_profile
    runs = [Run(f"r{i}", 1e9 * i, 1e8 * i, 10 * i, 0.01 * i + 0.002) for i in range(1, 5)]
    cal = calibrate(load_profile("x86-epyc"), runs, "test-box")
    save_profile(cal.profile, tmp_path / "cal.yaml")
    again = load_profile(tmp_path / "cal.yaml")
    assert again.extra["latency_model"] == cal.profile.extra["latency_model"]
    g = TorchModel.from_module(ConvLinear().eval(), (torch.randn(1, 3, 4, 4),)).graph
    e = compute_energy(g, compute_cost(g), again)
    assert e.latency_source == "calibrated linear model"
    macs, moved, nodes = features(g, compute_cost(g))
    lm = again.extra["latency_model"]
    assert e.totals["latency_s"] == pytest.approx(
        sum(lm["s_per_mac"][k] * m for k, m in macs.items()) + lm["s_per_byte"] * moved
        + lm["s_per_node"] * nodes)


def _fake_rapl(root, value: int, rng: int = 1000):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True, exist_ok=True)
    (z / "name").write_text("package-0\n")
    (z / "max_energy_range_uj").write_text(f"{rng}\n")
    (z / "energy_uj").write_text(f"{value}\n")
    return z


def test_rapl_reader_corrects_a_wrapped_counter(tmp_path):
    z = _fake_rapl(tmp_path, 900)
    meter = RaplMeter(tmp_path)
    start = meter.read()
    (z / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 -> 100
    joules, notes = meter.joules_between(start, meter.read())
    assert joules == pytest.approx(200e-6)
    assert "wrapped" in notes[0]


def test_missing_or_unreadable_meters_are_clear(tmp_path):
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        RaplMeter(tmp_path / "nothing")
    z = _fake_rapl(tmp_path, 5)
    (z / "energy_uj").write_text("garbage\n")
    with pytest.raises(MeterUnavailable, match="not a counter"):
        RaplMeter(tmp_path)
    # with no meter the reading says why, carries the time, and is never a silent zero
    r = measure_energy(lambda: sum(range(1000)), device="tpu", calls=3)
    assert not r.measured and r.joules is None and r.seconds > 0
    assert r.source.startswith("unavailable: unknown meter device 'tpu'")
    # a real counter through the same path: measured, positive, labelled
    z = _fake_rapl(tmp_path / "ok", 0, rng=10**12)
    meter = RaplMeter(tmp_path / "ok")
    ticks = iter(range(1000, 10**6, 1000))
    def work():  # the fake counter advances as the "hardware" works
        (z / "energy_uj").write_text(f"{next(ticks)}\n")
    r = measure_energy(work, meter=meter, calls=4)
    assert r.measured and r.joules == pytest.approx(1000e-6)
    assert r.source == "measured: RAPL package-0"


def test_budgets_land_within_two_percent():
    import torchvision
    x = torch.randn(1, 3, 96, 96)
    for factory in (torchvision.models.resnet18, torchvision.models.mobilenet_v2):
        model = factory().eval()
        for pipeline, key in (("prune-channels<target-macs=0.5x>", "macs"),
                              ("prune-channels<target-energy=0.6x,profile=x86-epyc>", "energy")):
            rec = prunepass.prune(model, (x,), pipeline, energy_profile="x86-epyc").record
            if key == "macs":
                ratio = rec.cost_after["macs"] / rec.cost_before["macs"]
                assert 0.49 * 0.98 <= ratio <= 0.5, ratio
            else:
                ratio = rec.energy_after["total"] / rec.energy_before["total"]
                assert 0.6 * 0.98 <= ratio <= 0.6 + 1e-9, ratio


def test_infeasible_budget_is_refused():
    import torchvision
    with pytest.raises(prunepass.PlanError, match="cannot be met"):
        prunepass.prune(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 64, 64),),
                        "prune-channels<target-macs=1000>")


def test_layer_table_fit_recovers_known_coefficients():
    from prunepass.hardware.calibrate import fit_layer_latency
    rng = np.random.default_rng(1)
    runs = []
    for i in range(10):
        layer_s, moved, nodes = rng.uniform(1e-3, 5e-2), rng.uniform(1e7, 4e8), int(
            rng.integers(20, 300))
        t = 0.8 * layer_s + 2e-11 * moved + 1e-5 * nodes
        runs.append(Run(f"m{i}", 1e9, moved, nodes, t, layer_s=layer_s))
    model, rows = fit_layer_latency(runs)
    assert model["per_layer"] == pytest.approx(0.8, rel=1e-3)
    assert model["s_per_byte"] == pytest.approx(2e-11, rel=1e-3)
    assert model["s_per_node"] == pytest.approx(1e-5, rel=1e-3)
    assert max(abs(r.rel_error) for r in rows) < 1e-6
    with pytest.raises(ProfileError, match="layer_s"):
        fit_layer_latency(runs[:3] + [Run("x", 1e9, 1e7, 5, 0.01)])
