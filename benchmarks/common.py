"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from prunepass.testing import randomize  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """This machine in words: architecture, CPU model, cores, memory."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (OSError, ValueError):
        mem = float("nan")
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def torch_and_tvm_threads(threads: int) -> None:
    """torch's intra-op threads, and before TVM starts, its runtime's thread count and no
    spinning after a run. Its pool threads spin after a run and slow the next runner of an
    alternating rotation (measured: onnxruntime's resnet18 at 23.8 ms instead of 9.5 ms
    between TVM runs)."""
    import torch
    torch.set_num_threads(threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def cost_model_file(root: str | Path | None = None) -> Path | None:
    """The cost model kept in the tuning database ``root`` (default: the one layer timing on
    TVM tunes into) for this CPU, or None when it has none."""
    from prunepass.backends.measure.layer_latency import tvm_database
    path = _cost_model_path(root or tvm_database())
    return path if path.exists() else None


def require_cost_model(root: str | Path) -> Path:
    """cost_model_file(root), or exit saying how to make one."""
    path = cost_model_file(root)
    if path is None:
        sys.exit(f"no cost model in {root}: tune something into it first (e.g. prune with "
                 f"hw-round=tvm, or prunepass compile --trials ... --database {root})")
    return path


def seed_cost_model(database: Path, model: Path) -> None:
    """Copy the cost model file ``model`` into the empty tuning database ``database`` for this
    CPU, as a tuning run that carries one starts."""
    path = _cost_model_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, path)


def _cost_model_path(root: str | Path) -> Path:
    """Where the tuning database ``root`` keeps its cost model for this CPU."""
    from prunepass.backends.tvm.cost_model import COST_MODEL
    from prunepass.backends.tvm.database import database_dir
    from prunepass.backends.tvm.targets import resolve_target
    return database_dir(root, resolve_target("x86")) / COST_MODEL


def cpu_flags() -> list[str]:
    """The vector extensions this CPU reports (detected, never assumed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx", "neon")))


def provenance() -> dict[str, Any]:
    """Where a result comes from: the command, the machine, its CPU features, the date."""
    import datetime
    return {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": machine(), "cpu_flags": cpu_flags(),
            "date": datetime.date.today().isoformat()}


def write_json(name: str, data: Any) -> Path:
    """benchmarks/results/NAME; a dict summary gets its provenance (command, machine, date)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    if isinstance(data, dict):
        data = {"provenance": provenance(), **data}
    path.write_text(json.dumps(data, indent=1))
    return path


def row_notes(r: dict) -> list[str]:
    """The problems every coverage table reports for a model row."""
    note = []
    if r["barriers"]:
        note.append("barriers: " + ",".join(r["barriers"]))
    if not r["shape_ok"]:
        note.append("output shape changed")
    if not r["finite"]:
        note.append("non-finite output")
    return note


def print_row(run: Callable[[], dict], model: str, **fields: Any) -> None:
    """The child side of run_isolated: print ``run()`` as one JSON line, or a failed row
    naming the exception (reported in the table, never hidden)."""
    try:
        print(json.dumps(run()))
    except Exception as e:  # any failure of the model under test is a row
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(json.dumps({"model": model, **fields, "ok": False,
                          "error": f"{type(e).__name__}: {msg}"}))


def run_isolated(script: str | Path, model: str, args: list[str], timeout: float) -> dict:
    """Run ``script --one MODEL ARGS`` in a fresh interpreter, so a crash or a leak in one
    model is a row of the table; its last JSON line is the row."""
    try:
        p = subprocess.run([sys.executable, str(script), "--one", model, *args],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "ok": False, "error": f"timed out after {timeout}s"}
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if line:
        return json.loads(line[-1])
    return {"model": model, "ok": False,
            "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
            + f" (exit status {p.returncode})"}
