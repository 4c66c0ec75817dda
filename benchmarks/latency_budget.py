"""Latency budgets: requested vs achieved latency, measured in onnxruntime or TVM.

For each model and relative budget B (e.g. 0.5x: half the dense latency), prune with
  prune-channels<target-latency-ms=Bx,latency-source=SRC,hw-threads=T>,dce
where SRC is "ort" / "tvm" (every conv / linear layer timed alone on that backend on this
machine, the profile's model for the other nodes; tvm layers are compiled for this CPU and
tuned with --trials MetaSchedule trials per kernel), "tvm-model" (every plan the search
tries built, compiled by TVM with --trials per kernel and measured), "ort+hw" / "tvm+hw"
(the same as ort / tvm, with hw-round on that backend: every group's count on its measured
latency staircase while the budget is searched), "profile" (the x86-epyc roofline model,
for comparison) or "calibrated" / "calibrated+hw" (the profile fitted by
benchmarks/energy.py to this machine's onnxruntime latencies, with its cost for unaligned
channel counts; --calibrated), then time the dense and pruned models in alternating rounds
(T threads) on --backend (onnxruntime: their ONNX exports) and report the achieved latency
ratio pruned / dense (median over rounds, IQR). With --backend tvm the torch models are
compiled (through torch.export, as tvm-model builds its plans) and tuned with --trials per
kernel into the database the search filled, so a kernel the search tuned is not tuned
again.

    python benchmarks/latency_budget.py [--models resnet18,...] [--budgets 0.5,0.7]
        [--sources ort+hw,ort,profile,calibrated,calibrated+hw,tvm,tvm+hw,tvm-model]
        [--backend ort|tvm] [--trials 8] [--out latency_budget.json]
Writes benchmarks/results/latency_budget.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, randomize, write_json  # noqa: E402

import prunepass  # noqa: E402
from prunepass.backends.measure.alternate import Spread, alternate  # noqa: E402
from prunepass.backends.measure.layer_latency import tvm_database  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--budgets", default="0.5,0.7")
    ap.add_argument("--sources", default="ort+hw,ort,profile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calibrated", default=str(RESULTS / "x86-epyc-calibrated-ort.yaml"),
                    help="the profile the calibrated sources use")
    ap.add_argument("--backend", choices=("ort", "tvm"), default="ort",
                    help="where the dense and pruned models are timed")
    ap.add_argument("--trials", type=int, default=8,
                    help="tvm: MetaSchedule trials per kernel, for layers and models alike")
    ap.add_argument("--out", default="latency_budget.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measured_on = args.backend
    if args.backend == "tvm":
        os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # before TVM starts
        measured_on = f"tvm ({args.trials} trials per kernel)"
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = randomize(torchvision.models.get_model(name, weights=None).eval())
        x = torch.randn(1, 3, 224, 224)
        modules = {"dense": model}
        predicted, pipelines, searched = {}, {}, {}
        for src in args.sources.split(","):
            for b in (float(v) for v in args.budgets.split(",")):
                key = f"{src}@{b}x"
                base = src.removesuffix("+hw")
                timer = "tvm" if base.startswith("tvm") else "ort"  # where layers are timed
                hw = f",hw-round={timer}" if src.endswith("+hw") else ""
                source = ("latency-source=profile,profile=" + args.calibrated
                          if base == "calibrated" else f"latency-source={base}")
                trials = f",hw-trials={args.trials}" if timer == "tvm" else ""
                pipeline = (f"prune-channels<target-latency-ms={b}x,{source}{hw},"
                            f"hw-threads={args.threads}{trials}>,dce")
                try:
                    res = prunepass.prune(model, (x,), pipeline)
                except prunepass.PlanError as e:  # an infeasible budget: say so, go on
                    rows.append({"model": name, "source": src, "requested": b,
                                 "pipeline": pipeline, "infeasible": str(e)})
                    print(f"{name:16} {src:13} requested {b:.2f}x  infeasible: {e}")
                    continue
                budget = res.record.step("remove-channels")["budget"]
                predicted[key] = (b, budget["achieved"] / budget["dense"],
                                  res.record.cost_after["macs"] / res.record.cost_before["macs"])
                searched[key] = {k: budget[k] for k in ("dense", "achieved", "evaluations")}
                pipelines[key] = pipeline
                modules[key] = res.model
        # onnxruntime: each model's ONNX export; tvm: the torch models through torch.export,
        # as tvm-model builds its plans
        options = ({"threads": args.threads} if args.backend == "ort" else
                   {"max_trials_per_task": args.trials or None,
                    "database": tvm_database() if args.trials else None})
        runners = {k: runner(args.backend, m, (x,), **options) for k, m in modules.items()}
        rounds = alternate(runners, rounds=args.rounds, repeats=5, number=1)
        for key, (b, pred, macs) in predicted.items():
            ratio = Spread.of([p / d for p, d in zip(rounds[key], rounds["dense"])])
            row = {"model": name, "source": key.split("@")[0], "requested": b,
                   "pipeline": pipelines[key],
                   "predicted": pred, "macs_fraction": macs, "achieved": ratio.to_dict(),
                   "dense_ms": Spread.of(rounds["dense"]).to_dict(),
                   "pruned_ms": Spread.of(rounds[key]).to_dict(),
                   "search": searched[key]}  # the metric's dense and planned values
            rows.append(row)
            print(f"{name:16} {row['source']:13} requested {b:.2f}x  predicted {pred:.3f}x  "
                  f"achieved {ratio.median:.3f}x [IQR {ratio.iqr:.3f}]  (dense "
                  f"{row['dense_ms']['median']:.2f} ms, MACs {macs:.2f}x; measured, "
                  f"{measured_on} {args.threads} threads)", flush=True)
    path = write_json(args.out, {"threads": args.threads, "backend": measured_on,
                                 "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
