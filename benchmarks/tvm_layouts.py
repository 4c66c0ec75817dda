"""Which data layout TVM's x86 kernels are fastest in, against onnxruntime on the same model.

For each model (random init, batch 1, 3x224x224) and each layout (nchw: as written, nhwc:
channels last, nchwc: channel blocks of the vector width), the model is compiled for this
CPU and tuned with a wall-clock budget (--minutes per model and layout, each layout into its
own fresh database: no layout inherits another's measurements). The builds and
onnxruntime are then timed in alternating rounds in one process (2 threads each); every
latency is the median over rounds. ratio = TVM / onnxruntime (below 1: TVM is faster).

    python benchmarks/tvm_layouts.py [--models resnet18,mobilenet_v2] [--minutes 5]
        [--layouts nchw,nhwc,nchwc] [--threads 2] [--rounds 7]
Writes benchmarks/results/tvm_layouts.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import randomize, torch_and_tvm_threads, write_json  # noqa: E402

from prunepass.backends.measure.alternate import Spread, alternate  # noqa: E402
from prunepass.backends.measure.measure import runner  # noqa: E402
from prunepass.backends.measure.torch_export import export_onnx  # noqa: E402


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    from prunepass.backends.tvm import compile_model, resolve_target
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name, weights=None).eval())
    x = torch.randn(1, 3, 224, 224)
    reference = model(x).detach().numpy()
    runners = {"ort": runner("ort", export_onnx(model, (x,), tmp / f"{name}.onnx"), (x,),
                             threads=args.threads)}
    row: dict = {"model": name, "layouts": {}}
    for layout in args.layouts.split(","):
        t0 = time.perf_counter()
        compiled = compile_model(model, (x,), resolve_target("x86", layout=layout),
                                 tmp / f"{name}-{layout}", minutes=args.minutes,
                                 database=tmp / f"db-{name}-{layout}", progress=True)
        loaded = compiled.load()
        error = float(np.abs(loaded(x.numpy())[0] - reference).max() / np.abs(reference).max())
        row["layouts"][layout] = {
            "compile_s": round(time.perf_counter() - t0, 1),
            "tuning": compiled.tuning.summary(), "tuning_s": compiled.tuning.seconds,
            "measured": compiled.tuning.measured, "kernels": len(compiled.tuning.tasks),
            "layout": compiled.layout.summary(), "kept_nchw": compiled.layout.kept,
            "max_rel_error": error}
        print(f"{name} {layout}: {compiled.layout.summary()}; {compiled.tuning.summary()}; "
              f"error {error:.1e}", flush=True)
        runners[layout] = runner("tvm", loaded, (x,))
    rounds = alternate(runners, rounds=args.rounds, repeats=args.repeats, number=1, warmup=3)
    ort = Spread.of(rounds["ort"])
    row["ort_ms"] = ort.to_dict()
    for layout, cell in row["layouts"].items():
        spread = Spread.of(rounds[layout])
        ratios = [t / o for t, o in zip(rounds[layout], rounds["ort"])]
        cell.update(latency_ms=spread.to_dict(), ratio_to_ort=Spread.of(ratios).to_dict())
        print(f"{name} {layout}: {spread.median:.2f} ms, onnxruntime {ort.median:.2f} ms, "
              f"ratio {cell['ratio_to_ort']['median']:.2f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--layouts", default="nchw,nhwc,nchwc")
    ap.add_argument("--minutes", type=float, default=5.0, help="tuning budget per model and "
                    "layout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="tvm_layouts.json")
    args = ap.parse_args()
    torch_and_tvm_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunepass-layouts-") as tmp:
        for name in args.models.split(","):
            rows.append(run_model(name, args, Path(tmp)))
            write_json(args.out, {"minutes_per_layout": args.minutes,
                                  "threads": args.threads, "rows": rows})
    print(f"\n{'model':14} " + " ".join(f"{lay:>14}" for lay in args.layouts.split(",")))
    for r in rows:
        print(f"{r['model']:14} " + " ".join(
            f"{r['layouts'][lay]['ratio_to_ort']['median']:>13.2f}x"
            for lay in args.layouts.split(",")))


if __name__ == "__main__":
    main()
