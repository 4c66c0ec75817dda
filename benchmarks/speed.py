"""Speed of pruned models: MACs reduction vs measured latency speedup, per backend.

For each model of the speed set (random init; batch 1, 3x224x224) and each ratio, two
prunings are compared with the dense model:
  uniform   prune-channels<ratio=R>            every group keeps (1-R) of its channels
  hw        prune-channels<ratio=R,hw-round=ort,hw-threads=T>
            each group's count snapped to the latency staircase of its layers, measured
            in onnxruntime on this machine (the channel-latency analysis)
  hw-tvm    the same with the layers compiled and tuned by TVM (--trials-per-task trials
            per kernel; opt in with --variants uniform,hw,hw-tvm)
Backends (all measured here, same inputs):
  torch     eager, torch.set_num_threads(T)
  ort       onnxruntime, T intra-op threads, on the torch-exported pruned model
  ort-onnx  onnxruntime on the dense model's ONNX export pruned *as ONNX* (the ONNX route;
            its MACs and parameters are checked against the torch route)
  tvm       TVM untuned (default schedules: convolutions slow on CPU, for completeness)
  tvm-lib   TVM with matmuls, linear layers and convolutions through --library's kernels
            (oneDNN: its convolution primitive on NHWC, batch norms, activations and
            residual adds fused; openblas: im2col + GEMM), the rest tuned for
            --lib-tune-minutes
  tvm-tuned TVM with MetaSchedule, --trials-per-task trials for every kernel (or
            --tune-minutes for all of a model's variants together); a model's
            variants are tuned together in one call into an empty database (the cost model
            of ~/.cache/prunepass/tvm-tuning carried in, when it has one), so dense and
            pruned get the same budget and search (a database kept between runs gave dense
            resnet18 schedules tuned by an older, blind search: 56 ms against 24 ms tuned
            alike)
All backends' variants of one model are timed in one rotation of alternating rounds in one
process (untuned TVM in a short rotation of its own); every latency is the median over
rounds (IQR beside it), every speedup the median of per-round ratios. Speed
efficiency = speedup / MACs reduction (1.0: latency falls as fast as MACs).

    python benchmarks/speed.py [--models resnet18,...] [--ratios 0.3,0.5]
        [--backends torch,ort,ort-onnx] [--threads 2] [--rounds 7]
    python benchmarks/speed.py --models densenet121 --into speed.json
        (re-measure one model and put it in place of its row in speed.json)
    python benchmarks/speed.py --models resnet18 --ratios 0.5 --variants hw \
        --backends ort,tvm-tuned --trials-per-task 8 --out speed-tvm.json
Writes benchmarks/results/speed.json (rows also carry each variant's cost features, which
benchmarks/energy.py calibrates against) and speed.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, cost_model_file, randomize, seed_cost_model,  # noqa: E402
                    torch_and_tvm_threads, write_json)

import prunepass  # noqa: E402
from prunepass.backends.measure.alternate import Spread, alternate, speedup  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402
from prunepass.backends.measure.torch_export import export_onnx  # noqa: E402
from prunepass.backends.tvm.targets import resolve_target  # noqa: E402
from prunepass.hardware.calibrate import features  # noqa: E402
from prunepass.passes.analysis.cost import compute_cost  # noqa: E402

SPEED_SET = ["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "densenet121",
             "efficientnet_b0", "convnext_tiny", "vit_b_16"]
ROUTES = {"ort": "torch", "ort-onnx": "onnx"}  # onnxruntime on which route's file


def pipelines(ratio: float, threads: int, trials: int) -> dict[str, str]:
    return {"uniform": f"prune-channels<ratio={ratio}>,dce",
            "hw": f"prune-channels<ratio={ratio},hw-round=ort,hw-threads={threads}>,dce",
            "hw-tvm": f"prune-channels<ratio={ratio},hw-round=tvm,hw-threads={threads},"
                      f"hw-trials={trials}>,dce"}


KINDS = list(pipelines(0.5, 1, 1))


def cost_row(adapter) -> dict:  # noqa: ANN001
    g = adapter.graph
    cost = compute_cost(g)
    macs_by_kind, moved, nodes = features(g, cost)
    return {"macs": cost.totals["macs"], "params": cost.totals["params"],
            "macs_by_kind": macs_by_kind, "bytes": moved, "nodes": nodes}


def weight_shapes(adapter) -> dict[str, tuple[int, ...]]:  # noqa: ANN001
    """Parameter shapes by name, '.' written '_' as the ONNX exporter names them. The
    exporter folds batch norms into the convolutions, so parameter totals differ between the
    routes while the convolution and linear weights must not."""
    return {v.name.replace(".", "_"): tuple(v.shape) for v in adapter.graph.state.values()
            if v.kind == "param"}


def routes_agree(torch_adapter, onnx_adapter) -> tuple[bool, int]:  # noqa: ANN001
    """(every weight both routes hold has the same shape, how many were compared)."""
    a, b = weight_shapes(torch_adapter), weight_shapes(onnx_adapter)
    common = set(a) & set(b)
    return all(a[k] == b[k] for k in common), len(common)


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name, weights=None).eval())
    x = torch.randn(1, 3, 224, 224)
    backends = args.backends.split(",")
    dense_onnx = export_onnx(model, (x,), tmp / f"{name}.onnx")
    variants = {"dense": {"module": model, "onnx": dense_onnx, "onnx_route": dense_onnx,
                          **cost_row(prunepass.load(model, (x,)))}}
    for ratio in (float(r) for r in args.ratios.split(",")):
        for kind, pipeline in pipelines(ratio, args.threads, args.trials_per_task).items():
            if kind not in args.variants.split(","):
                continue
            key = f"{kind}@{ratio}"
            t0 = time.perf_counter()
            res = prunepass.prune(model, (x,), pipeline)
            v = {"module": res.model, "pipeline": pipeline, "prune_s": time.perf_counter() - t0,
                 **cost_row(res.adapter)}
            if any(b.startswith("ort") for b in backends):
                v["onnx"] = export_onnx(res.model, (x,), tmp / f"{name}-{key}.onnx")
            if "ort-onnx" in backends:
                onnx_res = prunepass.prune(str(dense_onnx), None, pipeline)
                v["onnx_route"] = onnx_res.adapter.save(tmp / f"{name}-{key}-route.onnx")
                same, compared = routes_agree(res.adapter, onnx_res.adapter)
                v["onnx_route_macs"] = onnx_res.record.cost_after["macs"]
                v["routes_agree"] = same and v["onnx_route_macs"] == v["macs"]
                v["routes_weights_compared"] = compared
            variants[key] = v
    row: dict = {"model": name, "variants": {}}
    for key, v in variants.items():
        row["variants"][key] = {k: (str(val) if isinstance(val, Path) else val)
                                for k, val in v.items() if k != "module"}
        row["variants"][key]["macs_reduction"] = variants["dense"]["macs"] / v["macs"]
    timed: dict[str, dict] = {}  # backend -> variant -> runner
    for backend in backends:
        runners = timed[backend] = {}
        spec = tvm_target(backend, args) if backend.startswith("tvm") else None
        tuned = backend in TUNED and not (backend == "tvm-lib" and args.lib_tune_minutes == 0)
        if tuned:
            minutes = args.tune_minutes if backend == "tvm-tuned" else args.lib_tune_minutes
            report = tune_together([v["module"] for v in variants.values()], x,
                                   tmp / f"{backend}-db", args.trials_per_task, minutes, spec)
            row.setdefault("tvm_tuning", {})[backend] = {
                "minutes_budget": minutes, "seconds": report.seconds,
                "kernels": len(report.tasks), "measured": report.measured,
                "layout": spec.layout, "library": spec.library,
                "library_ops": list(spec.library_ops) if spec.library else [],
                "notes": report.notes}
        for key, v in variants.items():
            if backend == "torch":
                runners[key] = runner("torch", v["module"], (x,), threads=args.threads)
            elif backend in ROUTES:
                runners[key] = runner("ort", v["onnx" if backend == "ort" else "onnx_route"],
                                      (x,), threads=args.threads)
            else:
                # already tuned: the database only applies
                runners[key] = runner(
                    "tvm", v["module"], (x,), out_dir=tmp / f"{backend}-{key}", progress=False,
                    target=spec, database=(tmp / f"{backend}-db") if tuned else None)
    # every backend's variants in one rotation, so that backends compare side by side (a
    # slow spell between two backends' turns would otherwise show as a backend's ratio);
    # untuned TVM, seconds per run, in a short rotation of its own
    rounds: dict[str, list[float]] = {}
    for group in ([b for b in backends if b != "tvm"], [b for b in backends if b == "tvm"]):
        if not group:
            continue
        slow = group == ["tvm"]
        rounds.update(alternate({f"{b}|{k}": r for b in group for k, r in timed[b].items()},
                                rounds=2 if slow else args.rounds,
                                repeats=1 if slow else args.repeats, number=1,
                                warmup=1 if slow else 3))
    for backend in backends:
        for key in variants:
            mine = rounds[f"{backend}|{key}"]
            cell = {"latency_ms": Spread.of(mine).to_dict(), "rounds_ms": mine,
                    "rotation": "own" if backend == "tvm" else "shared"}
            if key != "dense":
                up = speedup(rounds[f"{backend}|dense"], mine)
                cell["speedup"] = up.to_dict()
                cell["efficiency"] = up.median / row["variants"][key]["macs_reduction"]
            row["variants"][key][backend] = cell
    del timed
    return row


TUNED = ("tvm-tuned", "tvm-lib")


def tvm_target(backend: str, args: argparse.Namespace):  # noqa: ANN201
    """tvm-lib: matmuls, linear layers and convolutions through --library (the rest tuned)."""
    if backend == "tvm-lib":
        return resolve_target("x86", library=args.library,
                              library_ops=("dense", "matmul", "conv2d"))
    return resolve_target("x86", layout=args.layout)


def tune_together(modules: list[torch.nn.Module], x: torch.Tensor, database: Path,
                  trials: int, minutes: float | None, spec):  # noqa: ANN001, ANN201
    """Tune every kernel of ``modules`` in one MetaSchedule call into the fresh
    ``database`` (``trials`` per kernel, or ``minutes`` for all of them), carrying in the
    layer-timing database's cost model. Returns the TuneReport."""
    from prunepass.backends.tvm import lower_model, prepare, tune_model
    model = cost_model_file()
    if model is not None:
        seed_cost_model(database, model)
    mods = [prepare(lower_model(m, (x,)).mod, spec) for m in modules]
    t0 = time.perf_counter()
    if minutes:
        _, report = tune_model(mods, spec, database, minutes=minutes)
    else:
        _, report = tune_model(mods, spec, database, trials=0, max_trials_per_task=trials)
    print(f"tuned {report.summary()} in {time.perf_counter() - t0:.0f} s, cost model "
          f"{'carried from ' + str(model) if model else 'fresh'}", flush=True)
    for note in report.notes:
        print(f"  {note}", flush=True)
    return report


def print_table(rows: list[dict], backends: list[str]) -> None:
    print(f"\nmeasured on {platform.machine()} ({os.cpu_count()} cores); speedup = dense / "
          "pruned latency, median [IQR] over alternating rounds; eff = speedup / MACs reduction")
    head = f"{'model':16} {'variant':12} {'MACs red':>8} " + " ".join(
        f"{b + ' ms':>12} {'speedup':>13} {'eff':>5}" for b in backends)
    print(head)
    for r in rows:
        for key, v in r["variants"].items():
            cells = []
            for b in backends:
                c = v.get(b)
                if c is None:
                    cells.append(f"{'-':>12} {'-':>13} {'-':>5}")
                    continue
                lat = f"{c['latency_ms']['median']:.2f}"
                up = (f"{c['speedup']['median']:.2f}x [{c['speedup']['iqr']:.2f}]"
                      if "speedup" in c else "")
                eff = f"{c['efficiency']:.2f}" if "efficiency" in c else ""
                cells.append(f"{lat:>12} {up:>13} {eff:>5}")
            agree = "" if v.get("routes_agree", True) else "  (ONNX route differs)"
            print(f"{r['model']:16} {key:12} {v['macs_reduction']:>7.2f}x " + " ".join(cells)
                  + agree)


def summary(rows: list[dict], backends: list[str]) -> dict:
    out = {}
    for b in backends:
        for kind in KINDS:
            cells = [v[b] for r in rows for k, v in r["variants"].items()
                     if k.startswith(kind + "@") and b in v]
            if not cells:
                continue
            effs = [c["efficiency"] for c in cells]
            ups = [c["speedup"]["median"] for c in cells]
            out[f"{b}/{kind}"] = {"median_efficiency": float(np.median(effs)),
                                  "min_speedup": float(min(ups)),
                                  "slower": sum(u < 1.0 for u in ups), "n": len(cells)}
    for tvm in (b for b in backends if b.startswith("tvm") and "ort" in backends):
        ratios = {r["model"]: {k: latency_ratio(v[tvm], v["ort"])
                               for k, v in r["variants"].items() if tvm in v and "ort" in v}
                  for r in rows}
        flat = [x for per in ratios.values() for x in per.values()]
        if flat:
            out[f"{tvm}/ort"] = {"latency_ratio": ratios, "median": float(np.median(flat)),
                                 "max": float(max(flat)), "n": len(flat)}
    return out


def latency_ratio(cell: dict, ort: dict) -> float:
    """``cell``'s latency over onnxruntime's: the median of per-round ratios (both were timed
    in the same rounds of one rotation), or of the medians for older results whose backends
    were timed one after another."""
    a, b = cell.get("rounds_ms", []), ort.get("rounds_ms", [])
    if cell.get("rotation") == ort.get("rotation") == "shared" and len(a) == len(b) > 0:
        return float(np.median([x / y for x, y in zip(a, b)]))
    return cell["latency_ms"]["median"] / ort["latency_ms"]["median"]


def plot(rows: list[dict], backends: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4.5), squeeze=False)
    for ax, b in zip(axes[0], backends):
        for kind, marker in zip(KINDS, "o^s"):
            pts = [(v["macs_reduction"], v[b]["speedup"]["median"], r["model"])
                   for r in rows for k, v in r["variants"].items()
                   if k.startswith(kind + "@") and b in v]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind)
        top = max([v["macs_reduction"] for r in rows for v in r["variants"].values()] + [2])
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="speedup = MACs reduction")
        ax.axhline(1.0, color="r", lw=0.8)
        ax.set_title(f"{b} (measured)")
        ax.set_xlabel("MACs reduction (x)")
        ax.set_ylabel("latency speedup (x)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SPEED_SET))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--backends", default="torch,ort,ort-onnx")
    ap.add_argument("--variants", default="uniform,hw", help=f"prunings to compare with dense, "
                    f"of {','.join(KINDS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials-per-task", type=int, default=16, help="tvm-tuned budget")
    ap.add_argument("--tune-minutes", type=float, help="tvm-tuned: a wall-clock budget per "
                    "model (all its variants tuned together) instead of --trials-per-task")
    ap.add_argument("--layout", default="auto", help="tvm: convolution layout (auto, nchw, "
                    "nhwc, nchwc)")
    ap.add_argument("--library", default="onednn", help="tvm-lib: the library kernels "
                    "(onednn, openblas)")
    ap.add_argument("--lib-tune-minutes", type=float, default=3.0, help="tvm-lib: the budget "
                    "for what the library does not take (elementwise ops, pools); 0: untuned, "
                    "those kernels on the default CPU schedules")
    ap.add_argument("--out", default="speed.json")
    ap.add_argument("--into", help="a previous result (under benchmarks/results) whose rows "
                    "for the models measured now are replaced; the rest are kept, each "
                    "model's ratios still come from one process")
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(KINDS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(KINDS)}")
    torch_and_tvm_threads(args.threads)
    backends = args.backends.split(",")
    rows = []  # with --into, the previous rows of the models not measured now
    if args.into:
        rows = [r for r in json.loads((RESULTS / args.into).read_text())["rows"]
                if r["model"] not in args.models.split(",")]
    order = {m: i for i, m in enumerate(SPEED_SET)}
    from tqdm import tqdm
    for name in tqdm(args.models.split(","), desc="models", unit="model"):
        with tempfile.TemporaryDirectory(prefix="prunepass-speed-") as tmp:
            rows = sorted(rows + [run_model(name, args, Path(tmp))],
                          key=lambda r: order.get(r["model"], len(order)))
        write_json(args.out, {"machine": platform.machine(), "threads": args.threads,
                              "backends": backends, "rows": rows,
                              "summary": summary(rows, backends),
                              "trials_per_task": args.trials_per_task,
                              "tune_minutes": args.tune_minutes, "layout": args.layout})
    print_table(rows, backends)
    for k, s in summary(rows, backends).items():
        if k.endswith("/ort"):
            for model, per in s["latency_ratio"].items():
                print(f"{k} latency, {model}: " + ", ".join(
                    f"{variant} {ratio:.2f}" for variant, ratio in per.items()))
            print(f"{k}: median {s['median']:.2f}, max {s['max']:.2f} "
                  f"over {s['n']} models x variants")
            continue
        print(f"{k:18} median efficiency {s['median_efficiency']:.2f}, min speedup "
              f"{s['min_speedup']:.2f}x, {s['slower']}/{s['n']} slower than dense")
    png = RESULTS / Path(args.out).with_suffix(".png").name
    plot(rows, backends, png)
    print(f"results: {RESULTS / args.out}, plot: {png}")


if __name__ == "__main__":
    main()
