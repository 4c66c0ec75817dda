"""TVM tuning at a small budget with and without a carried-over cost model, against onnxruntime.

For each model (random init, batch 1, 3x224x224), pruned uniformly by --ratio, TVM tunes every
kernel with --trials-per-task trials into an empty database twice:
  fresh    MetaSchedule's cost model starts empty (it ranks at random below 100 measurements)
  carried  the cost model of --source (a tuning database folder) is copied in first: it has
           seen other kernels' schedules, none of this model's (its records are not copied)
Both builds and onnxruntime (on the same pruned model, no hw-round) are then timed in
alternating rounds in one process; latencies are medians with IQR, ratios medians of
per-round ratios. All measured here.

    python benchmarks/tvm_cost_model.py [--models resnet18,mobilenet_v2] [--ratio 0.4]
        [--trials-per-task 8] [--source ~/.cache/prunepass/tvm-tuning]
Writes benchmarks/results/tvm_cost_model.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (randomize, require_cost_model, seed_cost_model,  # noqa: E402
                    torch_and_tvm_threads, write_json)

import prunepass  # noqa: E402
from prunepass.backends.measure.alternate import Spread, alternate, speedup  # noqa: E402
from prunepass.backends.measure.layer_latency import tvm_database  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402


def run_model(name: str, args: argparse.Namespace, source: Path, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name, weights=None).eval())
    x = torch.randn(1, 3, 224, 224)
    pruned = prunepass.prune(model, (x,), f"prune-channels<ratio={args.ratio}>,dce").model
    runners, tune_s = {"ort": runner("ort", pruned, (x,), threads=args.threads)}, {}
    for arm in ("fresh", "carried"):
        db = tmp / f"db-{arm}"
        if arm == "carried":
            seed_cost_model(db, source)
        t0 = time.perf_counter()
        runners[f"tvm-{arm}"] = runner("tvm", pruned, (x,), out_dir=tmp / arm, database=db,
                                       max_trials_per_task=args.trials_per_task)
        tune_s[arm] = time.perf_counter() - t0
    rounds = alternate(runners, rounds=args.rounds, repeats=5, number=1, warmup=3)
    row = {"model": name, "ratio": args.ratio, "tune_and_build_s": tune_s,
           "latency_ms": {k: Spread.of(v).to_dict() for k, v in rounds.items()},
           # per round: the fresh build's latency over the carried one's (> 1: carried faster)
           "carried_speedup": speedup(rounds["tvm-fresh"], rounds["tvm-carried"]).to_dict(),
           # per round: onnxruntime's latency over the carried build's (> 1: TVM faster)
           "carried_vs_ort": speedup(rounds["ort"], rounds["tvm-carried"]).to_dict()}
    lat = row["latency_ms"]
    print(f"{name:14} ort {lat['ort']['median']:6.2f} ms | tvm fresh "
          f"{lat['tvm-fresh']['median']:6.2f} ms ({tune_s['fresh']:.0f} s) | tvm carried "
          f"{lat['tvm-carried']['median']:6.2f} ms ({tune_s['carried']:.0f} s) | carried "
          f"{row['carried_speedup']['median']:.2f}x faster than fresh, "
          f"{row['carried_vs_ort']['median']:.2f}x onnxruntime's speed", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--trials-per-task", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--source", default=str(tvm_database()),
                    help="tuning database root whose cost model is carried over")
    ap.add_argument("--out", default="tvm_cost_model.json")
    args = ap.parse_args()
    source = require_cost_model(args.source)
    torch_and_tvm_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="prunepass-costmodel-") as tmp:
            rows.append(run_model(name, args, source, Path(tmp)))
        write_json(args.out, {"machine": platform.machine(), "threads": args.threads,
                              "trials_per_task": args.trials_per_task, "source": args.source,
                              "rows": rows})


if __name__ == "__main__":
    main()
