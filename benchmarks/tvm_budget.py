"""How close TVM's tuned kernels come to onnxruntime's as the tuning budget grows.

Each layer (a 3x3 convolution with its ReLU, batch 1; by default one per resnet18 stage) is
tuned by MetaSchedule with each budget of --budgets trials, every budget into its own empty
database holding the cost model of --source (as a tuning run here starts), then built, and
timed in alternating rounds in one process with onnxruntime running the same layer; ratios
are onnxruntime's latency over TVM's per round (> 1: TVM faster), median and IQR. All
measured here.

    python benchmarks/tvm_budget.py [--layers 64x56,128x28,256x14,512x7]
        [--budgets 8,32,128] [--threads 2] [--source ~/.cache/prunepass/tvm-tuning]
Writes benchmarks/results/tvm_budget.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (require_cost_model, seed_cost_model, torch_and_tvm_threads,  # noqa: E402
                    write_json)

from prunepass.backends.measure.alternate import Spread, alternate, speedup  # noqa: E402
from prunepass.backends.measure.layer_latency import LayerSpec, tvm_database  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402


def parse_layer(text: str) -> LayerSpec:
    """"CxS": C -> C channels, 3x3, padding 1, on S x S inputs."""
    channels, size = (int(v) for v in text.lower().split("x"))
    return LayerSpec("conv2d", channels, channels, size, size, 3, 3, padding=(1, 1))


def run_layer(text: str, args: argparse.Namespace, source: Path, tmp: Path) -> dict:
    module, x = parse_layer(text).torch_module()
    runners, tune_s = {"ort": runner("ort", module, x, threads=args.threads)}, {}
    for budget in args.budgets:
        db = tmp / f"db-{budget}"
        seed_cost_model(db, source)
        t0 = time.perf_counter()
        runners[f"tvm-{budget}"] = runner("tvm", module, x, out_dir=tmp / str(budget),
                                          database=db, max_trials_per_task=budget)
        tune_s[budget] = time.perf_counter() - t0
    rounds = alternate(runners, rounds=args.rounds, repeats=5, number=5, warmup=3)
    row = {"layer": text, "tune_and_build_s": tune_s,
           "latency_ms": {k: Spread.of(v).to_dict() for k, v in rounds.items()},
           "tvm_vs_ort": {b: speedup(rounds["ort"], rounds[f"tvm-{b}"]).to_dict()
                          for b in args.budgets}}
    cells = " | ".join(f"{b:4d} trials {row['latency_ms'][f'tvm-{b}']['median']:7.3f} ms "
                       f"({row['tvm_vs_ort'][b]['median']:.2f}x, {tune_s[b]:.0f} s)"
                       for b in args.budgets)
    print(f"conv3x3 {text:7} ort {row['latency_ms']['ort']['median']:7.3f} ms | {cells}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="64x56,128x28,256x14,512x7",
                    help="CxS: a C -> C 3x3 convolution on S x S inputs, comma separated")
    ap.add_argument("--budgets", default="8,32,128",
                    help="trials per kernel, each tuned from scratch (cost model carried)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--source", default=str(tvm_database()),
                    help="tuning database root whose cost model each run starts from")
    ap.add_argument("--out", default="tvm_budget.json")
    args = ap.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    source = require_cost_model(args.source)
    torch_and_tvm_threads(args.threads)
    rows = []
    for text in args.layers.split(","):
        with tempfile.TemporaryDirectory(prefix="prunepass-budget-") as tmp:
            rows.append(run_layer(text, args, source, Path(tmp)))
        write_json(args.out, {"machine": platform.machine(), "threads": args.threads,
                              "budgets": args.budgets, "source": args.source, "rows": rows})


if __name__ == "__main__":
    main()
