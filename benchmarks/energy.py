"""Energy of the speed set, dense vs pruned at 0.3 and 0.5.

For each model and variant: modelled energy per inference and its breakdown (compute /
memory / static) from a hardware profile, and latency measured on this machine (torch
eager and onnxruntime, batch 1, median of repeated samples). This machine has no energy
meter (no RAPL under /sys/class/powercap), so energy stays modelled; the latency part of
the model is calibrated against the measured latencies (non-negative least squares over
MACs by kind, bytes moved and node count), and its error is reported both in-sample and
leave-one-model-out (fitted without the model it predicts).

    python benchmarks/energy.py [--models resnet18,...] [--backends ort,torch]
Writes benchmarks/results/energy.json and the calibrated profile
benchmarks/results/x86-epyc-calibrated-<backend>.yaml.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, randomize, write_json  # noqa: E402

import prunepass  # noqa: E402
from prunepass.backends.measure.energy import measure_energy  # noqa: E402
from prunepass.backends.measure.measure import measure  # noqa: E402
from prunepass.backends.measure.torch_export import export_onnx  # noqa: E402
from prunepass.hardware import load_profile, save_profile  # noqa: E402
from prunepass.hardware.calibrate import Run, calibrate, fit_latency, latency_of  # noqa: E402,F401
from prunepass.hardware.calibrate import features  # noqa: E402
from prunepass.passes.analysis.cost import compute_cost  # noqa: E402

SPEED_SET = ["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "densenet121",
             "efficientnet_b0", "convnext_tiny", "vit_b_16"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SPEED_SET))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--backends", default="ort,torch")
    ap.add_argument("--profile", default="x86-epyc")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    profile = load_profile(args.profile)
    backends = args.backends.split(",")
    ratios = [0.0] + [float(r) for r in args.ratios.split(",")]
    rows = []
    from tqdm import tqdm
    jobs = [(m, r) for m in args.models.split(",") for r in ratios]
    for name, ratio in tqdm(jobs, desc="variants", unit="variant"):
        torch.manual_seed(0)
        model = randomize(torchvision.models.get_model(name, weights=None).eval())
        x = torch.randn(1, 3, 224, 224)
        res = prunepass.prune(model, (x,), f"prune-channels<ratio={ratio}>,dce",
                              energy_profile=args.profile)
        g = res.adapter.graph
        macs, moved, nodes = features(g, compute_cost(g))
        e = res.record.energy_after
        row = {"model": name, "ratio": ratio, "macs": sum(macs.values()), "macs_by_kind": macs,
               "bytes": moved, "nodes": nodes,
               "energy_mj_modelled": e["total"] / 1e9,
               "compute_mj": e["compute"] / 1e9, "memory_mj": e["memory"] / 1e9,
               "static_mj": e["static"] / 1e9, "latency_roofline_ms": e["latency_s"] * 1e3}
        for b in backends:
            with tempfile.TemporaryDirectory() as tmp:
                target = res.model if b == "torch" else export_onnx(
                    res.model, (x,), Path(tmp) / "m.onnx")
                st = measure(b, target, (x,), repeats=args.repeats, number=3, warmup=3)
            row[f"{b}_ms"], row[f"{b}_iqr_ms"] = st.median_ms, st.iqr_ms
        reading = measure_energy(lambda: res.model(x), device="cpu", calls=3)
        row["energy_measured_j"] = reading.joules
        row["meter"] = reading.source
        rows.append(row)
        tqdm.write(f"{name:16} r={ratio:.1f} modelled {row['energy_mj_modelled']:8.2f} mJ  "
                   + "  ".join(f"{b} {row[f'{b}_ms']:8.2f} ms" for b in backends))

    out = {"profile": args.profile, "machine": platform.processor() or platform.machine(),
           "rows": rows, "calibration": {}}
    for b in backends:
        runs = [Run(f"{r['model']}@{r['ratio']}", r["macs_by_kind"], r["bytes"], r["nodes"],
                    r[f"{b}_ms"] / 1e3) for r in rows]
        cal = calibrate(profile, runs, f"{platform.machine()} {b} (2 threads)")
        path = RESULTS / f"{args.profile}-calibrated-{b}.yaml"
        RESULTS.mkdir(parents=True, exist_ok=True)
        save_profile(cal.profile, path)
        # leave one model out: fit without the model, predict its variants
        loo = {}
        for name in {r["model"] for r in rows}:
            train = [r for r, row in zip(runs, rows) if row["model"] != name]
            model_, _ = fit_latency(train)
            for r, row in zip(runs, rows):
                if row["model"] == name:
                    pred = sum(latency_of(model_, k, m, 0.0, False)
                               for k, m in row["macs_by_kind"].items())
                    pred += model_["s_per_byte"] * row["bytes"] + model_["s_per_node"] * row["nodes"]
                    loo[r.name] = (pred - r.latency_s) / r.latency_s
        out["calibration"][b] = {
            "profile": str(path), "in_sample": {r.name: r.rel_error for r in cal.latency},
            "leave_one_model_out": loo,
            "mape_in_sample": cal.mean_abs_pct_error(),
            "mape_loo": float(np.mean([abs(v) for v in loo.values()]) * 100)}
    write_json("energy.json", out)

    print(f"\nenergy per inference, MODELLED with profile {args.profile} (no meter here: "
          f"{rows[0]['meter']})")
    head = (f"{'model':16} {'ratio':>5} {'GMACs':>7} {'total mJ':>9} {'compute':>8} {'memory':>8} "
            f"{'static':>8} " + " ".join(f"{b + ' ms':>9} {'cal err':>8} {'LOO err':>8}"
                                        for b in backends))
    print(head)
    for r in rows:
        key = f"{r['model']}@{r['ratio']}"
        cells = " ".join(
            f"{r[f'{b}_ms']:>9.2f} {out['calibration'][b]['in_sample'][key] * 100:>+7.1f}% "
            f"{out['calibration'][b]['leave_one_model_out'][key] * 100:>+7.1f}%" for b in backends)
        print(f"{r['model']:16} {r['ratio']:>5.1f} {r['macs'] / 1e9:>7.2f} "
              f"{r['energy_mj_modelled']:>9.2f} {r['compute_mj']:>8.2f} {r['memory_mj']:>8.2f} "
              f"{r['static_mj']:>8.2f} {cells}")
    for b in backends:
        c = out["calibration"][b]
        worst = max(abs(v) for v in c["in_sample"].values()) * 100
        print(f"{b}: calibrated latency model, mean abs error {c['mape_in_sample']:.1f}% in "
              f"sample (worst {worst:.1f}%), {c['mape_loo']:.1f}% leave-one-model-out; "
              f"profile written to {c['profile']}")


if __name__ == "__main__":
    main()
