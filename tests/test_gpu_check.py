"""benchmarks/gpu_check: every part that runs without a GPU. The build path it uses (CUDA
device code through NVRTC, the cubins the GPU run takes at load), the NVML meter against a
stub pynvml, the timing runner's CUDA sync, the budget, its --no-gpu mode end to end, and
its shell script's refusal where there is no GPU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                    "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

from prunepass.backends.measure.alternate import alternate  # noqa: E402
from prunepass.backends.measure.energy import measure_energy  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402
from prunepass.backends.tvm.runtime import LoadedModel  # noqa: E402
from tests.rule_models import ResidualNet  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402

TINY = f"{__name__}:tiny_net"
# MACs by hand: conv 3->16 3x3 and two convs 16->16 3x3 on 16x16, linear 16->10; pruned at
# 0.5 every one of them keeps 8 channels.
DENSE_MACS = 16 * 256 * 27 + 2 * 16 * 256 * 144 + 16 * 10
PRUNED_MACS = 8 * 256 * 27 + 2 * 8 * 256 * 72 + 8 * 10


def tiny_net() -> tuple[nn.Module, torch.Tensor]:
    from prunepass.testing import randomize
    return (randomize(ResidualNet().eval()),
            torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)))


# ---- (a) the script's CUDA build, and the cubins its GPU run loads ---------------------------

def test_build_variant_prunes_and_builds_sm90_device_code_the_gpu_run_reuses(tmp_path,
                                                                            monkeypatch):
    import prunepass.backends.tvm.compile as compile_module
    sources: list[str] = []
    compile_cubin = compile_module.compile_cubin

    def recording(source: str, arch: str) -> bytes:
        sources.append(source)
        return compile_cubin(source, arch)
    monkeypatch.setattr(compile_module, "compile_cubin", recording)
    cache = tmp_path / "cubins"
    row = gpu_check.build_variant(TINY, 0.5, "cuda:sm_90", tmp_path / "v", cache)
    assert row["built"], row.get("error")
    assert (row["variant"], row["pipeline"]) == ("pruned@0.5", "prune-channels<ratio=0.5>,dce")
    assert (row["dense_macs"], row["macs"]) == (DENSE_MACS, PRUNED_MACS)
    module = torch.load(row["module"], weights_only=False)
    assert [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 8]
    assert module(torch.load(row["input"])).shape == (1, 10)
    # the device code: a CUDA ELF for sm_90, built by NVRTC from the library's own source
    (cubin,) = row["cubins"]
    data = Path(cubin["file"]).read_bytes()
    assert cubin["sm"] == 90 and gpu_check.cubin_sm(data) == 90 and cubin["bytes"] == len(data)
    assert gpu_check.cubin_sm(b"\x7fELF" + bytes(60)) is None  # an ELF, not a CUDA one
    (source,) = sources
    library = (tmp_path / "v" / "model.so").read_bytes()
    assert source.count('extern "C" __global__') >= 3 and source.encode() in library
    # loading the library on the GPU compiles that source: the callback takes the cubin
    counts: dict[str, int] = {}
    callback = gpu_check.use_cached_cubins(cache, "sm_90", counts)
    assert bytes(callback(source)) == data and counts == {"reused": 1}
    # a source it has not seen is compiled by the same NVRTC call, and kept
    kernel = 'extern "C" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }'
    new = callback(kernel)
    assert gpu_check.cubin_sm(bytes(new)) == 90 and counts == {"reused": 1, "compiled": 1}
    assert (cache / gpu_check.source_key(kernel, "sm_90")).read_bytes() == bytes(new)
    assert compile_module.compile_cubin is recording  # keeping_cubins put it back


# ---- (b) the NVML meter against a stub pynvml -----------------------------------------------

class NVMLError(Exception):
    pass


def fake_pynvml(monkeypatch, *, counter: bool | str = True, init_error: str | None = None,
                power_mw: int = 150_000) -> dict:
    """A pynvml whose energy counter (mJ) is the ``state`` dict's "mj", advanced by the
    measured work (counter="clock": advanced by ``power_mw`` over wall time), and whose
    power reads ``power_mw``."""
    state = {"mj": 5_000_000, "inits": 0}
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError

    def init() -> None:
        state["inits"] += 1
        if init_error:
            raise NVMLError(init_error)

    def energy(handle: str) -> int:
        assert handle == "gpu0"
        if not counter:
            raise NVMLError("Not Supported")
        if counter == "clock":
            return int(power_mw * time.perf_counter())  # mW x s = mJ
        return state["mj"]
    nvml.nvmlInit = init
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nvml.nvmlDeviceGetName = lambda h: b"Fake H100"  # older bindings return bytes
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    nvml.nvmlDeviceGetPowerUsage = lambda h: power_mw
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return state


def test_nvml_energy_counter_gives_joules_per_call(monkeypatch):
    state = fake_pynvml(monkeypatch)
    syncs = []

    def infer() -> None:  # each inference costs the "GPU" 250 mJ
        state["mj"] += 250
    r = measure_energy(infer, device="gpu", calls=8, sync=lambda: syncs.append(1))
    assert r.measured and r.joules == pytest.approx(0.25)
    assert r.source == "measured: NVML GPU 0 (Fake H100, energy counter)"
    assert len(syncs) == 1 + 8  # after the warm-up, then after every measured call
    assert state["mj"] == 5_000_000 + 9 * 250


def test_nvml_without_a_counter_integrates_power(monkeypatch):
    fake_pynvml(monkeypatch, counter=False, power_mw=150_000)
    r = measure_energy(lambda: time.sleep(0.02), device="gpu", calls=20)
    assert r.source == "measured: NVML GPU 0 (Fake H100, integrated power)"
    # 150 W for the time of a call; the samples miss at most the ends of the run
    assert r.joules == pytest.approx(150.0 * r.seconds, rel=0.15)
    assert 0.02 <= r.seconds < 0.1


def test_nvml_that_cannot_open_the_gpu_is_unavailable_with_the_reason(monkeypatch):
    state = fake_pynvml(monkeypatch, init_error="Driver Not Loaded")
    r = measure_energy(lambda: None, device="gpu", calls=3)
    assert not r.measured and r.joules is None and r.seconds >= 0
    assert r.source == "unavailable: NVML cannot open GPU 0: Driver Not Loaded"
    assert state["inits"] == 1
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    r = measure_energy(lambda: None, device="gpu:1", calls=3)
    assert r.source.startswith("unavailable: nvidia-ml-py is not installed")


# ---- timing: the TVM runner syncs a CUDA device; the budget ---------------------------------

class FakeDevice:
    def __init__(self, name: str) -> None:
        self.name, self.syncs = name, 0

    def __str__(self) -> str:
        return self.name

    def sync(self) -> None:
        self.syncs += 1


def test_tvm_runner_on_a_cuda_device_syncs_every_sample():
    calls = []
    cuda = FakeDevice("cuda:0")
    run = runner("tvm", LoadedModel({"main": lambda: calls.append(1)}, cuda, []), ())
    assert run.device == "cuda:0" and run.sync == cuda.sync
    rounds = alternate({"tvm": run}, rounds=2, repeats=3, number=4, warmup=1, pause_s=0)
    assert len(rounds["tvm"]) == 2
    assert len(calls) == 2 * (1 + 3 * 4) and cuda.syncs == 2 * (1 + 3)
    assert runner("tvm", LoadedModel({"main": lambda: None}, FakeDevice("cpu:0"), []),
                  ()).sync is None


def test_timing_plan_and_budget():
    # 4 runners of 1 ms: 10 s over 5 rounds of (2 warm-up + 3 samples x number) calls
    assert gpu_check.timing_plan({k: 1e-3 for k in "abcd"}, 10.0, 5, 3, 2) == (5, 50)
    assert gpu_check.timing_plan({k: 0.05 for k in "abcd"}, 10.0, 5, 3, 2) == (5, 2)
    # too slow for 5 rounds of one call per sample: fewer rounds, never under 3
    assert gpu_check.timing_plan({"a": 1.0}, 10.0, 5, 3, 2) == (3, 1)
    args = gpu_check.parse_args(["--models", "resnet18,mobilenet_v2"])
    r18 = sum(gpu_check.BUILD_S["resnet18"])
    gpu_stage = gpu_check.run_estimate(2, args)
    assert gpu_stage == 10.0 + 10.0 + 2 * 2 * 1.5
    end = gpu_check.STARTUP_S + r18 + gpu_stage
    kept, skipped, ends = gpu_check.plan(["resnet18", "mobilenet_v2"], [None, 0.5], 1, end,
                                         args)
    assert kept == ["resnet18"] and ends == {"resnet18": pytest.approx(end)}
    assert skipped["mobilenet_v2"].startswith("skipped: estimated to end at ")
    assert f"past the {end:.0f} s budget" in skipped["mobilenet_v2"]
    # two build processes build a model's variants side by side
    kept, _, _ = gpu_check.plan(["resnet18"], [None, 0.5], 2,
                             gpu_check.STARTUP_S + max(gpu_check.BUILD_S["resnet18"])
                             + gpu_stage, args)
    assert kept == ["resnet18"]


# ---- the GPU stage, run on the CPU: check, alternating rounds, energy, the table -------------

def test_measure_model_checks_times_and_meters_each_variant(tmp_path, monkeypatch):
    """measure_model with libraries built for x86 and device "cpu": the steps of the GPU run,
    with a stub NVML whose counter runs at a constant 100 W; a corrupted torch module fails
    the check."""
    from prunepass.backends.measure.energy import NvmlMeter
    rows = [gpu_check.build_variant(TINY, r, "x86", tmp_path / str(r)) for r in (None, 0.5)]
    assert all(r["built"] and r["cubins"] == [] for r in rows), rows
    bad = dict(rows[1], variant="pruned@0.5-corrupt", module=str(tmp_path / "bad.pt"))
    module = torch.load(rows[1]["module"], weights_only=False)
    with torch.no_grad():
        module.head.weight.mul_(2.0)
    torch.save(module, bad["module"])
    rows.append(bad)
    fake_pynvml(monkeypatch, counter="clock", power_mw=100_000)
    args = gpu_check.parse_args(["--time-s", "0.3", "--energy-s", "0.2", "--rounds", "3"])
    gpu_check.measure_model(rows, args, NvmlMeter(), device="cpu")
    dense, pruned, corrupt = rows
    for row in rows:
        assert row["status"] == "measured"
        assert row["timing"]["rounds"] == 3 and len(row["tvm_rounds_ms"]) == 3
        for backend in ("torch", "tvm"):
            assert row[f"{backend}_ms"]["median"] > 0
            energy = row[f"{backend}_energy"]
            assert energy["source"] == "measured: NVML GPU 0 (Fake H100, energy counter)"
            assert energy["calls"] >= 10
            assert energy["joules"] == pytest.approx(100.0 * energy["seconds_per_call"],
                                                     rel=0.05)
    assert dense["ok"] and pruned["ok"]
    assert dense["rel_error"] < 1e-5 and pruned["rel_error"] < 1e-5
    assert not corrupt["ok"] and corrupt["rel_error"] > 0.1
    assert "torch_speedup" not in dense
    assert pruned["tvm_speedup"]["median"] == pytest.approx(
        float(np.median([d / p for d, p in zip(dense["tvm_rounds_ms"],
                                               pruned["tvm_rounds_ms"])])))
    pruned["macs_reduction"], pruned["total_build_s"] = 3.68, 5.0
    line = gpu_check.format_row(pruned)
    assert re.search(r"pruned@0\.5\s+3\.68x\s+5\.0\s+\d+\.\d{3} \[\d+\.\d{3}\]", line), line
    assert line.count(" measured") == 2 and line.endswith(" ok")
    assert gpu_check.format_row(corrupt).endswith(" FAIL")
    # no meter: the cells give the reason and no number, and no time is spent on them
    rows = [dict(r, status=None) for r in rows[:2]]
    gpu_check.measure_model(rows, args, "unavailable: NVML cannot open GPU 0: x", device="cpu")
    assert rows[1]["tvm_energy"] == {"joules": None,
                                     "source": "unavailable: NVML cannot open GPU 0: x"}
    assert "unavailable" in gpu_check.format_row(rows[1])


def test_default_models_are_the_speed_set_measured_ones_first():
    import ast
    tree = ast.parse((BENCHMARKS / "speed.py").read_text())
    speed_set = next(ast.literal_eval(node.value) for node in tree.body
                     if isinstance(node, ast.Assign)
                     and getattr(node.targets[0], "id", None) == "SPEED_SET")
    assert sorted(gpu_check.DEFAULT_MODELS) == sorted(speed_set)
    measured = [m for m in gpu_check.DEFAULT_MODELS if m in gpu_check.BUILD_S]
    assert gpu_check.DEFAULT_MODELS[:len(measured)] == measured
    assert gpu_check.UNKNOWN_BUILD_S >= max(max(v) for v in gpu_check.BUILD_S.values())


# ---- (c) --no-gpu end to end ------------------------------------------------------------------

def test_no_gpu_mode_builds_everything_and_measures_nothing(tmp_path, capsys):
    out = tmp_path / "check.json"
    # builds in-process; the budget fits the tiny model (unknown to the estimates:
    # UNKNOWN_BUILD_S a variant) and not resnet18 after it
    budget_s = gpu_check.STARTUP_S + 2 * gpu_check.UNKNOWN_BUILD_S + 1
    summary = gpu_check.main(["--no-gpu", "--models", f"{TINY},resnet18", "--jobs", "1",
                              "--budget-minutes", str(budget_s / 60), "--out", str(out),
                              "--work-dir", str(tmp_path / "work")])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [r["status"] for r in data["rows"]] == [r["status"] for r in summary["rows"]]
    assert not {"module", "input", "metadata"} & set(data["rows"][0])  # no temporary paths
    assert (data["mode"], data["arch"], data["jobs"], data["machine"].get("gpu")) == \
        ("no-gpu", "sm_90", 1, None)
    assert data["command"].startswith("benchmarks/gpu_check.py --no-gpu")
    assert set(data["skipped"]) == {"resnet18"}
    assert data["skipped"]["resnet18"].startswith("skipped: estimated to end at")
    assert [(r["model"], r["variant"]) for r in data["rows"]] == [(TINY, "dense"),
                                                                  (TINY, "pruned@0.5")]
    for row in data["rows"]:
        assert row["built"] and row["status"] == "no GPU: not run"
        assert [c["sm"] for c in row["cubins"]] == [90]
        for key in ("torch_ms", "tvm_ms", "torch_speedup", "tvm_speedup", "tvm_energy",
                    "torch_energy", "rel_error", "abs_error", "ok"):
            assert row[key] is None, key  # nothing measured, nothing made up
    assert data["rows"][1]["macs_reduction"] == pytest.approx(DENSE_MACS / PRUNED_MACS)
    # the table: each row's measured columns are one "not run" cell, no numbers
    lines = [ln for ln in text.splitlines() if ln.startswith(TINY)]
    assert len(lines) == 4  # printed as measured, and in the final table
    for line in lines:
        assert re.fullmatch(rf"{re.escape(TINY)}\s+(dense|pruned@0\.5)\s+\d+\.\d\dx\s+"
                            r"\d+\.\d no GPU: not run", line), line
    assert "resnet18         skipped: estimated to end at" in text


def test_builds_in_a_process_pool_come_back_as_rows(tmp_path, capsys):
    """--jobs 2: builds run in spawned processes (as on a 16-core GPU machine); what they
    return, a failure included, is the row. (Models that fail at once keep this fast.)"""
    summary = gpu_check.main(["--no-gpu", "--models", "no_such_module:net", "--ratios", "0.5",
                              "--jobs", "2", "--out", str(tmp_path / "c.json"),
                              "--work-dir", str(tmp_path / "work")])
    assert summary["jobs"] == 2
    assert [(r["variant"], r["built"]) for r in summary["rows"]] == [("dense", False),
                                                                     ("pruned@0.5", False)]
    for row in summary["rows"]:
        assert row["status"] == ("build failed: ModuleNotFoundError: No module named "
                                 "'no_such_module'")
        assert row["ok"] is None and row["tvm_ms"] is None
    assert "no_such_module:net dense" in capsys.readouterr().out


# ---- (d) the shell script refuses without a GPU ------------------------------------------------

def _script(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(BENCHMARKS / "gpu_check.sh"), "--models", "x"],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)


def test_shell_script_names_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _script({"PATH": str(empty)}, tmp_path)  # no nvidia-smi on PATH
    assert p.returncode == 2
    assert "nvidia-smi not found" in p.stderr and "--no-gpu" in p.stderr
    # a driver that lists a GPU, and a CUDA torch that sees none (this machine)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\n")
    (stub / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    if torch.version.cuda is None:
        expected = "is a CPU-only build (torch.version.cuda is None)"
    else:
        expected = "sees no GPU (torch.cuda.is_available() is False)"
    p = _script(env, tmp_path)
    assert p.returncode == 2, p.stdout
    assert expected in p.stderr
    p = _script({**env, "PYTHON": "no-such-python"}, tmp_path)
    assert p.returncode == 2 and "python interpreter 'no-such-python' not found" in p.stderr
    # everything there: the arguments go through to gpu_check.py, its exit status comes back
    fake = stub / "fake-python"
    fake.write_text('#!/bin/sh\nif [ "$1" = - ]; then cat >/dev/null; exit 0; fi\n'
                    'echo "ran: $*"; exit 3\n')
    fake.chmod(0o755)
    p = subprocess.run(["/bin/bash", str(BENCHMARKS / "gpu_check.sh"), "--models", "a,b",
                        "--budget-minutes=2"], capture_output=True, text=True,
                       env={**env, "PYTHON": str(fake)}, timeout=60, cwd=tmp_path)
    assert p.returncode == 3
    assert p.stdout == f"ran: -u {BENCHMARKS}/gpu_check.py --models a,b --budget-minutes=2\n"
    (stub / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    p = _script(env, tmp_path)
    assert p.returncode == 2 and "nvidia-smi failed: NVIDIA-SMI has failed" in p.stderr
