"""GPU check: models built for CUDA with TVM, run, checked against torch, timed and metered.

Dense and pruned, on the GPU, with NVML energy, in one table within a time budget.

For each model and each variant (dense; pruned@R = ``prune-channels<ratio=R>,dce``, the
uniform ratio: hw-round=ort would round channel counts to onnxruntime's CPU latency
staircase, which says nothing about a GPU):
  build   prune (on the CPU), compile_model(..., target="cuda:sm_XX") untuned (TVM's dlight
          default GPU schedules), the device code compiled to a cubin with NVRTC. Builds run
          in a pool of --jobs processes while the GPU measures the models already built.
  check   the TVM library on the GPU against the same torch module on the GPU, fp32 with
          TF32 off: max |tvm - torch| / max |torch| <= --rtol (default 1e-3; TVM's NVRTC
          build uses --use_fast_math).
  time    torch (eager, CUDA) and TVM, dense and pruned, in alternating rounds in one process
          (prunepass.backends.measure.alternate), each sample ending in a device sync; ms
          are the median [IQR] over rounds, a speedup the median of per-round dense/pruned.
  energy  measure_energy(device="gpu"): NVML's total-energy counter (or integrated power)
          over >= --energy-s of back-to-back synced inferences, J per inference for the
          whole GPU, idle power included; labelled "measured: NVML ..." or "unavailable: why".
Models whose builds and run would not end inside --budget-minutes are skipped, with the
reason; each model's rows are printed (and the JSON written) as soon as it is measured.

    benchmarks/gpu_check.sh [--models resnet18,mobilenet_v2] [--ratios 0.5]
    python benchmarks/gpu_check.py --no-gpu      (no GPU here: prune and build for CUDA
                                                  only; every measured cell says so)
A model is a torchvision name (random weights, 1x3x224x224) or ``module:callable`` returning
``(module, example_input)``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance  # noqa: E402

# The default set: benchmarks/speed.py's SPEED_SET, the models measured here first and the
# ones not measured (UNKNOWN_BUILD_S) last, so that what the budget drops is at the end.
# Builds run side by side (12 processes on 16 cores), so the GPU stage (~26 s a model) is
# what the budget mostly pays for: by these estimates all eight end after ~260 s of 480.
DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "resnet50", "efficientnet_b0", "vit_b_16",
                  "convnext_tiny", "vgg16_bn", "densenet121"]
# Seconds to prepare (prune or count MACs) and build one variant for CUDA (dense,
# pruned@0.5), measured with `gpu_check.py --no-gpu --jobs 1` on 2 shared cores of an AMD
# EPYC (load average ~3), 2026-12-07: the budget's estimates. Models not listed are assumed
# to take UNKNOWN_BUILD_S a variant (about twice the slowest measured).
BUILD_S: dict[str, tuple[float, float]] = {
    "resnet18": (21.3, 16.6), "mobilenet_v2": (35.6, 44.3), "resnet50": (38.6, 44.2),
    "efficientnet_b0": (41.2, 38.7),
}
UNKNOWN_BUILD_S = 90.0
STARTUP_S = 30.0  # imports, CUDA start-up, the build pool's processes importing TVM
PLAIN_PIPELINE = "prune-channels<ratio={ratio}>,dce"
NOT_RUN = "no GPU: not run"
EM_CUDA = 190  # ELF e_machine of a cubin


# ---- models and builds (these run in the build pool's processes, or in-process) -----------

def load_model(spec: str) -> tuple[Any, Any]:
    """(module in eval mode, example input): a torchvision classifier with random weights
    (seeded, as benchmarks/speed.py makes them) or ``module:callable``."""
    import torch
    if ":" in spec:
        import importlib
        module_name, _, attr = spec.partition(":")
        model, x = getattr(importlib.import_module(module_name), attr)()
        return model.eval(), x
    import torchvision
    from prunepass.testing import randomize
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(spec, weights=None).eval())
    return model, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def variant_key(ratio: float | None) -> str:
    return "dense" if ratio is None else f"pruned@{ratio:g}"


def cubin_sm(data: bytes) -> int | None:
    """The SM version a cubin was built for (CUDA 12.8+ keep it in bits 8-15 of e_flags),
    None when ``data`` is not a CUDA ELF."""
    if data[:4] != b"\x7fELF" or len(data) < 52 or struct.unpack_from("<H", data, 18)[0] != EM_CUDA:
        return None
    return (struct.unpack_from("<I", data, 48)[0] >> 8) & 0xFF


def source_key(source: str, arch: str) -> str:
    return f"{hashlib.sha256(source.encode()).hexdigest()[:32]}.{arch}.cubin"


@contextlib.contextmanager
def keeping_cubins(cache: Path) -> Iterator[None]:
    """While compile_model runs, keep each cubin NVRTC builds under ``cache``, named by its
    CUDA source: loading the library on the GPU then takes it from there (see
    use_cached_cubins) instead of compiling the same source again."""
    import prunepass.backends.tvm.compile as compile_module
    compile_cubin = compile_module.compile_cubin

    def keep(source: str, arch: str) -> bytes:
        data = compile_cubin(source, arch)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / source_key(source, arch)).write_bytes(data)
        return data
    compile_module.compile_cubin = keep
    try:
        yield
    finally:
        compile_module.compile_cubin = compile_cubin


def build_variant(spec: str, ratio: float | None, target: str, out_dir: str | Path,
                  cubin_cache: str | Path | None = None) -> dict:
    """Load ``spec``, prune it at ``ratio`` (None: dense), save the torch module and input,
    and build it for ``target`` (the check's is "cuda:sm_XX": device code by NVRTC)
    through compile_model. Returns a row: what was built, how long it took, where it is;
    a failure is a row with ``error``."""
    import torch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = None if ratio is None else PLAIN_PIPELINE.format(ratio=ratio)
    row: dict[str, Any] = {"model": spec, "variant": variant_key(ratio), "ratio": ratio,
                           "pipeline": pipeline, "built": False}
    t0 = time.perf_counter()
    try:
        module, x = load_model(spec)
        if ratio is None:
            import prunepass
            from prunepass.passes.analysis.cost import compute_cost
            row["macs"] = row["dense_macs"] = compute_cost(
                prunepass.load(module, (x,)).graph).totals["macs"]
        else:
            import prunepass
            res = prunepass.prune(module, (x,), row["pipeline"])
            module = res.model.eval()
            row["macs"], row["dense_macs"] = res.record.cost_after["macs"], \
                res.record.cost_before["macs"]
        row["prepare_s"] = time.perf_counter() - t0  # pruned, or MACs counted
        torch.save(module, out / "module.pt")
        torch.save(x, out / "input.pt")
        from prunepass.backends.tvm import compile_model
        t1 = time.perf_counter()
        with keeping_cubins(Path(cubin_cache)) if cubin_cache else contextlib.nullcontext():
            compiled = compile_model(module, (x,), target, out, name="model",
                                     progress=False)
        row["build_s"] = time.perf_counter() - t1
        row["cubins"] = [{"file": str(p), "bytes": p.stat().st_size,
                          "sm": cubin_sm(p.read_bytes())} for p in compiled.device_code]
        row.update(built=True, module=str(out / "module.pt"), input=str(out / "input.pt"),
                   metadata=str(compiled.metadata),
                   library_mb=compiled.library.stat().st_size / 2**20)
    except Exception as err:  # any failure of this model is its row, never the whole run
        lines = str(err).strip().splitlines()
        row["error"] = f"{type(err).__name__}: {lines[0][:300] if lines else ''}"
    row["total_build_s"] = time.perf_counter() - t0
    return row


def _build_task(task: tuple) -> dict:
    return build_variant(*task)


def _worker_init(cpus: list[int] | None) -> None:
    import torch
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(1)  # one build per core: TVM's build is one thread, so is this


# ---- the budget ----------------------------------------------------------------------------

def build_estimate(spec: str, ratio: float | None) -> float:
    dense, pruned = BUILD_S.get(spec, (UNKNOWN_BUILD_S, UNKNOWN_BUILD_S))
    return dense if ratio is None else pruned


def run_estimate(n_variants: int, args: argparse.Namespace) -> float:
    """Seconds the GPU stage of one model takes: loading, the check, the timing rounds and
    the energy runs (both backends); 0 without a GPU."""
    if args.no_gpu:
        return 0.0
    return 10.0 + args.time_s + n_variants * 2 * (args.energy_s + 0.5)


def plan(models: list[str], ratios: list[float | None], jobs: int, budget_s: float,
         args: argparse.Namespace) -> tuple[list[str], dict[str, str], dict[str, float]]:
    """Which models fit the budget: builds go to the earliest free of ``jobs`` processes in
    model order, the GPU measures one model at a time once its builds are done; a model
    whose estimated end is past the budget is skipped (and its builds never start).
    Returns (the models kept, why each other one was skipped, each kept one's estimated
    end in seconds)."""
    workers = [STARTUP_S] * jobs
    gpu_free = STARTUP_S
    kept, skipped, ends = [], {}, {}
    for spec in models:
        trial, done = list(workers), 0.0
        for ratio in ratios:
            w = min(range(jobs), key=trial.__getitem__)
            trial[w] += build_estimate(spec, ratio)
            done = max(done, trial[w])
        end = max(gpu_free, done) + run_estimate(len(ratios), args)
        if end > budget_s:
            skipped[spec] = (f"skipped: estimated to end at {end:.0f} s, past the "
                             f"{budget_s:.0f} s budget (builds ~"
                             f"{sum(build_estimate(spec, r) for r in ratios):.0f} s on "
                             f"{jobs} process(es), GPU stage ~"
                             f"{run_estimate(len(ratios), args):.0f} s)")
            continue
        workers, gpu_free = trial, end
        kept.append(spec)
        ends[spec] = end
    return kept, skipped, ends


# ---- the GPU stage ---------------------------------------------------------------------------

def use_cached_cubins(cache: Path, arch: str, counts: dict[str, int]) -> Callable[..., Any]:
    """Make TVM's runtime, which compiles a library's CUDA source when the library is loaded,
    take the cubin built for that source at build time (keeping_cubins), else compile it
    with the same NVRTC call (prunepass.backends.tvm.nvrtc.compile_cubin, which finds the
    CUDA headers of NVIDIA's pip wheels too). Returns the callback."""
    from prunepass.backends.tvm.nvrtc import compile_cubin

    def compile_cuda(code: str, *_: Any) -> bytearray:
        path = cache / source_key(code, arch)
        if path.exists():
            counts["reused"] = counts.get("reused", 0) + 1
            return bytearray(path.read_bytes())
        counts["compiled"] = counts.get("compiled", 0) + 1
        data = compile_cubin(code, arch)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return bytearray(data)
    import tvm_ffi
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
    return compile_cuda


def _outputs(value: Any) -> list[Any]:
    import numpy as np
    import torch
    if isinstance(value, torch.Tensor):
        return [value.detach().float().cpu().numpy()]
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [a for v in value for a in _outputs(v)]


def compare(out: list[Any], ref: list[Any]) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, max |out - ref|) over all outputs; inf when shapes
    differ or a value is not finite."""
    import numpy as np
    from prunepass.numerics import relative_error
    if len(out) != len(ref) or any(np.shape(a) != np.shape(b) for a, b in zip(out, ref)):
        return math.inf, math.inf
    rel = relative_error(out, ref)
    abs_ = max((float(np.abs(a - b).max()) for a, b in zip(out, ref) if np.size(a)), default=0.0)
    return rel, abs_ if math.isfinite(rel) else math.inf


def timing_plan(latency_s: dict[str, float], time_s: float, rounds: int, repeats: int,
                warmup: int) -> tuple[int, int]:
    """(rounds, number): calls per sample so that all runners' rounds take about ``time_s``
    (at least 1 call, at most 50), with fewer rounds (not under 3) for very slow models."""
    per_call = sum(latency_s.values())
    number = int((time_s / rounds - warmup * per_call) / (repeats * per_call)) if per_call else 50
    number = max(1, min(50, number))
    while rounds > 3 and rounds * (warmup + repeats * number) * per_call > time_s:
        rounds -= 1
    return rounds, number


def measure_model(builds: list[dict], args: argparse.Namespace, meter: Any,
                  device: str = "cuda") -> None:
    """Check, time and meter the built variants of one model on the GPU; fills each row.
    ``meter``: an open energy meter, or the reason there is none. (``device`` "cpu" with
    libraries built for x86 runs the same steps on the CPU, for the tests.)"""
    import numpy as np
    import torch
    from prunepass.backends.measure.alternate import Spread, alternate, speedup
    from prunepass.backends.measure.energy import measure_energy
    from prunepass.backends.measure.measure import runner
    from prunepass.backends.tvm.runtime import load_compiled
    rows = [b for b in builds if b["built"]]
    x = torch.load(rows[0]["input"])
    xc = x.to(device)
    runners: dict[str, Any] = {}
    for row in rows:
        try:
            module = torch.load(row["module"], weights_only=False).eval().to(device)
            loaded = load_compiled(row["metadata"])
            with torch.inference_mode():
                ref = _outputs(module(xc))
            out = loaded(x.numpy())
            row["rel_error"], row["abs_error"] = compare([np.asarray(o) for o in out], ref)
            row["ok"] = row["rel_error"] <= args.rtol
            runners[f"torch/{row['variant']}"] = runner("torch", module, (xc,))
            runners[f"tvm/{row['variant']}"] = runner("tvm", loaded, (x,))
            row["status"] = "measured"
        except Exception as err:  # a variant that fails on the GPU is a row saying so
            lines = str(err).strip().splitlines()
            row.update(ok=False, status=f"failed on the GPU: {type(err).__name__}: "
                       f"{lines[0][:200] if lines else ''}")
    if not runners:
        return
    try:
        latency = {}
        for name, r in runners.items():  # one warm-up, then three synced calls
            sync = r.sync or (lambda: None)
            r()
            sync()
            t0 = time.perf_counter()
            for _ in range(3):
                r()
            sync()
            latency[name] = (time.perf_counter() - t0) / 3
        repeats, warmup = 3, 2
        rounds, number = timing_plan(latency, args.time_s, args.rounds, repeats, warmup)
        per_round = alternate(runners, rounds=rounds, repeats=repeats, number=number,
                              warmup=warmup, pause_s=0.0)
        for row in rows:
            for backend in ("torch", "tvm"):
                name = f"{backend}/{row['variant']}"
                if name not in per_round:
                    continue
                row[f"{backend}_ms"] = Spread.of(per_round[name]).to_dict()
                row[f"{backend}_rounds_ms"] = per_round[name]
                if row["variant"] != "dense" and f"{backend}/dense" in per_round:
                    row[f"{backend}_speedup"] = speedup(per_round[f"{backend}/dense"],
                                                        per_round[name]).to_dict()
                if isinstance(meter, str):  # no meter: say why, spend no time
                    row[f"{backend}_energy"] = {"joules": None, "source": meter}
                    continue
                calls = max(10, math.ceil(args.energy_s / max(latency[name], 1e-6)))
                reading = measure_energy(runners[name], device="gpu", calls=calls,
                                         meter=meter, sync=runners[name].sync)
                row[f"{backend}_energy"] = {"joules": reading.joules, "source": reading.source,
                                            "calls": calls, "seconds_per_call": reading.seconds,
                                            "notes": reading.notes}
            row["timing"] = {"rounds": rounds, "repeats": repeats, "number": number,
                             "warmup": warmup}
    except Exception as err:  # a CUDA error while timing: the rows say so, the run goes on
        lines = str(err).strip().splitlines()
        for row in rows:
            if row.get("status") == "measured":
                row.update(ok=False, status=f"failed while timing: {type(err).__name__}: "
                           f"{lines[0][:200] if lines else ''}")
    runners.clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- the table and the JSON ------------------------------------------------------------------

COLUMNS = [("model", 16), ("variant", 12), ("MACs red", 8), ("build s", 7),
           ("torch ms", 14), ("tvm ms", 14), ("torch up", 8), ("tvm up", 8),
           ("tvm J/inf", 18), ("torch J/inf", 18), ("max err", 8), ("ok", 4)]


def _ms(cell: dict | None) -> str:
    return f"{cell['median']:.3f} [{cell['iqr']:.3f}]" if cell else "-"


def _energy(cell: dict | None) -> str:
    if not cell:
        return "-"
    return f"{cell['joules']:.4g} measured" if cell["joules"] is not None else "unavailable"


def format_row(row: dict) -> str:
    macs = f"{row['macs_reduction']:.2f}x" if row.get("macs_reduction") else "-"
    build = f"{row['total_build_s']:.1f}" if "total_build_s" in row else "-"
    head = [row["model"], row["variant"], macs, build]
    widths = [w for _, w in COLUMNS]
    text = " ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                    for i, (c, w) in enumerate(zip(head, widths)))
    status = row.get("status", "")
    if status != "measured" or row.get("tvm_ms") is None:
        return f"{text} {status}"
    cells = [_ms(row.get("torch_ms")), _ms(row.get("tvm_ms")),
             f"{row['torch_speedup']['median']:.2f}x" if row.get("torch_speedup") else "",
             f"{row['tvm_speedup']['median']:.2f}x" if row.get("tvm_speedup") else "",
             _energy(row.get("tvm_energy")), _energy(row.get("torch_energy")),
             f"{row['rel_error']:.1e}", "ok" if row["ok"] else "FAIL"]
    return text + " " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths[4:]))


def header() -> str:
    return " ".join(f"{n:<{w}}" if i < 2 else f"{n:>{w}}" for i, (n, w) in enumerate(COLUMNS))


def gpu_machine() -> dict[str, Any]:
    """The GPU, its driver and CUDA as torch and nvidia-smi see them."""
    import torch
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import tvm
        info["tvm"] = tvm.__version__
    except ImportError:
        info["tvm"] = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"sm_{major}{minor}",
                    gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            info["driver"] = out.stdout.strip().splitlines()[0].split(",")[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def write_summary(path: Path, data: dict) -> None:
    """The JSON, less the paths of the run's own files (a temporary folder by default)."""
    rows = [{**{k: v for k, v in r.items() if k not in ("module", "input", "metadata")},
             "cubins": [{**c, "file": Path(c["file"]).name} for c in r.get("cubins", [])]}
            for r in data["rows"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "rows": rows}, indent=1, default=str) + "\n")


# ---- the run ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated torchvision names or module:callable")
    ap.add_argument("--ratios", default="0.5", help="pruning ratios (uniform), comma-separated")
    ap.add_argument("--arch", help="CUDA architecture, e.g. sm_90 (default: the GPU's; sm_90 "
                    "with --no-gpu)")
    ap.add_argument("--budget-minutes", type=float, default=8.0)
    ap.add_argument("--out", help="JSON summary (default benchmarks/results/gpu_check.json, "
                    "gpu_check_no_gpu.json with --no-gpu)")
    ap.add_argument("--no-gpu", "--dry-run", dest="no_gpu", action="store_true",
                    help="no GPU: prune and build for CUDA (NVRTC) only")
    ap.add_argument("--jobs", type=int, help="build processes (default: cores - 2, at most "
                    "12; 1 on a machine of 5 cores or fewer, builds then run in-process)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--time-s", type=float, default=10.0,
                    help="seconds of timing rounds per model (all its runners)")
    ap.add_argument("--energy-s", type=float, default=1.0,
                    help="seconds of inferences per energy reading")
    ap.add_argument("--rtol", type=float, default=1e-3,
                    help="max |tvm - torch| / max |torch| for ok")
    ap.add_argument("--work-dir", help="where libraries go (default: a temporary folder, "
                    "removed at the end)")
    args = ap.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.ratio_list = [None] + [float(r) for r in args.ratios.split(",") if r.strip()]
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be at least 1")
    return args


def check_gpu(args: argparse.Namespace) -> str:
    """The GPU's architecture; exits naming what is missing when torch cannot use a GPU."""
    import torch
    if torch.version.cuda is None:
        sys.exit(f"gpu_check: torch {torch.__version__} is a CPU-only build "
                 "(torch.version.cuda is None): install a CUDA build of torch, or run with "
                 "--no-gpu")
    if not torch.cuda.is_available():
        sys.exit(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
                 "GPU (torch.cuda.is_available() is False): check nvidia-smi and "
                 "CUDA_VISIBLE_DEVICES, or run with --no-gpu")
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    if args.arch and args.arch.rstrip("af") != arch:
        sys.exit(f"gpu_check: --arch {args.arch} cannot run on this GPU "
                 f"({torch.cuda.get_device_name(0)}, {arch}): a cubin runs only on its own "
                 "architecture; leave --arch out, or use --no-gpu to only build")
    return args.arch or arch


def main(argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    args = parse_args(argv)
    budget_s = args.budget_minutes * 60
    arch = (args.arch or "sm_90") if args.no_gpu else check_gpu(args)
    cores = os.cpu_count() or 1
    n_builds = len(args.model_list) * len(args.ratio_list)
    jobs = args.jobs or (max(1, min(cores - 2, 12)) if cores > 5 else 1)
    jobs = max(1, min(jobs, n_builds))
    out_path = Path(args.out) if args.out else RESULTS / (
        "gpu_check_no_gpu.json" if args.no_gpu else "gpu_check.json")
    planned, skipped, ends = plan(args.model_list, args.ratio_list, jobs, budget_s, args)

    def stamp() -> str:
        return f"[{time.perf_counter() - start:5.0f} s]"

    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="prunepass-gpu-")
    work = Path(args.work_dir or tmp.name)
    cache = work / "cubins"
    counts: dict[str, int] = {}
    meter: Any = "unavailable: no GPU (--no-gpu)"
    summary: dict[str, Any] = {
        "provenance": provenance(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None
                                                         else sys.argv[1:])]),
        "mode": "no-gpu" if args.no_gpu else "gpu", "arch": arch, "budget_s": budget_s,
        "jobs": jobs, "settings": {"rtol": args.rtol, "rounds": args.rounds,
                                   "time_s": args.time_s, "energy_s": args.energy_s,
                                   "fp32": "TF32 off in torch; TVM NVRTC --use_fast_math",
                                   "pruning": PLAIN_PIPELINE},
        "planned_end_s": ends, "rows": [], "skipped": dict(skipped)}
    print(f"gpu_check: {len(planned)} of {len(args.model_list)} model(s) planned within "
          f"{budget_s:.0f} s, {jobs} build process(es), target cuda:{arch}"
          + (" (no GPU: build only)" if args.no_gpu else ""), flush=True)
    for spec, why in skipped.items():
        print(f"  {spec}: {why}", flush=True)

    pool = None
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        tasks = [(spec, ratio, f"cuda:{arch}", str(work / _safe(spec) / variant_key(ratio)),
                  str(cache)) for spec in planned for ratio in args.ratio_list]
        import multiprocessing as mp
        mp_timeout = mp.TimeoutError
        if jobs > 1:
            build_cpus = main_cpus = None
            if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 6:
                cpus = sorted(os.sched_getaffinity(0))  # two cores time the GPU, the rest build
                main_cpus, build_cpus = cpus[:2], cpus[2:]
            pool = mp.get_context("spawn").Pool(jobs, _worker_init, (build_cpus,))
            if main_cpus:
                os.sched_setaffinity(0, main_cpus)
                import torch
                torch.set_num_threads(len(main_cpus))
            pending = [pool.apply_async(_build_task, (t,)) for t in tasks]
        else:
            pending = None
        summary["machine"] = gpu_machine()
        if not args.no_gpu:
            import torch
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            from prunepass.backends.measure.energy import MeterUnavailable, open_meter
            try:
                meter = open_meter("gpu")
                summary["energy_meter"] = f"measured: {meter.description}"
            except MeterUnavailable as err:
                meter = f"unavailable: {err}"
                summary["energy_meter"] = meter
            use_cached_cubins(cache, arch, counts)
            m = summary["machine"]
            print(f"GPU: {m.get('gpu')} ({m.get('capability')}), driver {m.get('driver')}, "
                  f"CUDA {m.get('cuda')}, torch {m.get('torch')}, TVM {m.get('tvm')}; energy: "
                  f"{summary['energy_meter']}", flush=True)
        print(header(), flush=True)
        n = len(args.ratio_list)
        for i, spec in enumerate(planned):
            builds, late = [], None
            reserve = run_estimate(n, args)  # the GPU stage must still fit after the builds
            for j in range(n):
                left = budget_s - (time.perf_counter() - start)
                if pending is None:  # in-process: a build cannot be cut short, so check first
                    need = sum(build_estimate(spec, r) for r in args.ratio_list[j:]) + reserve
                    if left < need:
                        late = (f"skipped: {left:.0f} s left, its builds and GPU stage need "
                                f"~{need:.0f} s")
                        break
                    builds.append(build_variant(*tasks[i * n + j]))
                    continue
                try:
                    builds.append(pending[i * n + j].get(timeout=max(left - reserve, 0.01)))
                except mp_timeout:
                    late = "skipped: its builds were not done within the budget"
                    break
                except Exception as err:  # the build process died (killed for memory, ...)
                    task = tasks[i * n + j]
                    builds.append({"model": spec, "variant": variant_key(task[1]),
                                   "ratio": task[1], "built": False,
                                   "error": f"the build process failed: "
                                            f"{type(err).__name__}: {err}"})
            if late:
                summary["skipped"][spec] = late
                print(f"{spec:16} {late}", flush=True)
                continue
            print(f"{stamp()} {spec} built: " + ", ".join(
                f"{b['variant']} {b['total_build_s']:.0f} s" if b["built"] else
                f"{b['variant']} failed" for b in builds)
                + ("" if args.no_gpu else "; measuring on the GPU"), flush=True)
            for b in builds:
                if b.get("macs") and b.get("dense_macs"):
                    b["macs_reduction"] = b["dense_macs"] / b["macs"]
                if not b["built"]:
                    b["status"] = f"build failed: {b.get('error', '')}"
                elif args.no_gpu:
                    b["status"] = NOT_RUN
                for key in ("torch_ms", "tvm_ms", "torch_speedup", "tvm_speedup",
                            "tvm_energy", "torch_energy", "rel_error", "abs_error", "ok"):
                    b.setdefault(key, None)
            left = budget_s - (time.perf_counter() - start)
            need = run_estimate(len(builds), args)
            if not args.no_gpu and any(b["built"] for b in builds):
                if left < need:
                    for b in builds:
                        if b["built"]:
                            b["status"] = (f"skipped on the GPU: {left:.0f} s left, the "
                                           f"GPU stage needs ~{need:.0f} s")
                else:
                    measure_model(builds, args, meter)
            summary["rows"] += builds
            summary["elapsed_s"] = time.perf_counter() - start
            summary["cubins_at_load"] = dict(counts)
            write_summary(out_path, summary)
            for b in builds:
                print(format_row(b), flush=True)
            print(f"{stamp()} {spec} done", flush=True)
    except KeyboardInterrupt:
        summary["interrupted"] = f"after {time.perf_counter() - start:.0f} s"
        print(f"{stamp()} interrupted: partial results in {out_path}", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        summary["elapsed_s"] = time.perf_counter() - start
        summary["cubins_at_load"] = dict(counts)
        write_summary(out_path, summary)
        if tmp is not None:
            tmp.cleanup()
    print_table(summary)
    print(f"results: {out_path} ({summary['elapsed_s']:.0f} s)", flush=True)
    return summary


def print_table(summary: dict) -> None:
    print(f"\nGPU check, target cuda:{summary['arch']}"
          + (f", {summary['machine'].get('gpu')}" if summary["machine"].get("gpu") else
             f" ({NOT_RUN})"))
    print(header())
    for row in summary["rows"]:
        print(format_row(row))
    for spec, why in summary["skipped"].items():
        print(f"{spec:16} {why}")
    if summary["mode"] == "gpu":
        print(f"ms: median [IQR] over alternating rounds, each sample synced; up: dense / "
              f"pruned; J/inf: whole-GPU energy per inference ({summary.get('energy_meter')});"
              f" max err: max|tvm - torch| / max|torch|, ok <= {summary['settings']['rtol']:g}")


def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
