"""Energy of the speed set, dense vs pruned at 0.3 and 0.5.

For each model and variant: modelled energy per inference and its breakdown (compute /
memory / static) from a hardware profile, and latency measured on this machine (torch
eager and onnxruntime, batch 1, median of repeated samples). This machine has no energy
meter (no RAPL under /sys/class/powercap), so energy stays modelled; the latency part of
the model is calibrated against the measured latencies (non-negative least squares over
MACs by kind, bytes moved and node count; each MAC kind split into layers whose channel
counts fill a channel block and the rest, plus a cost per unaligned layer, the block
chosen among 1/4/8/16 by the fit), and
its error is reported both in-sample and leave-one-model-out (fitted without the model it
predicts). The fit without the alignment split is reported beside it. A second latency model replaces
the MACs by the layer table: every conv / linear layer of the variant timed alone on the
backend (LayerLatency, cached), summed and scaled, plus bytes and nodes; its errors are
reported the same way.

    python benchmarks/energy.py [--models resnet18,...] [--backends ort,torch]
    python benchmarks/energy.py --from-speed benchmarks/results/speed.json
        (latencies measured by benchmarks/speed.py, every variant it timed: uniform and
        hardware-rounded pruning; nothing is measured again)
Writes benchmarks/results/energy.json, the calibrated profile
benchmarks/results/x86-epyc-calibrated-<backend>.yaml and energy-calibration.png (measured
vs calibrated latency per variant).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, randomize, write_json  # noqa: E402

import prunepass  # noqa: E402
from prunepass.backends.measure.energy import measure_energy  # noqa: E402
from prunepass.backends.measure.measure import measure  # noqa: E402
from prunepass.backends.measure.torch_export import export_onnx  # noqa: E402
from prunepass.hardware import load_profile, save_profile  # noqa: E402
from prunepass.backends.measure.layer_latency import LayerLatency  # noqa: E402
from prunepass.hardware.calibrate import (CHANNEL_BLOCKS, Run, calibrate,  # noqa: E402
                                          fit_aligned_latency, fit_latency,
                                          features, fit_layer_latency,
                                          loose_bytes, predict_latency,
                                          unaligned_layers)
from prunepass.passes.analysis.layer_blocks import layer_spec  # noqa: E402
from prunepass.passes.analysis.cost import compute_cost  # noqa: E402

SPEED_SET = ["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "densenet121",
             "efficientnet_b0", "convnext_tiny", "vit_b_16"]


def run_of(row: dict, backend: str, block: int) -> Run:
    """A benchmark row as a calibration run on ``backend``, MACs split by ``block``; its
    layer_s is the layer table's sum."""
    return Run(f"{row['model']}/{row['variant']}", row["macs_by_block"][str(block)],
               row["bytes"], row["nodes"], row[f"{backend}_ms"] / 1e3,
               layer_s=row[f"{backend}_layers_ms"] / 1e3,
               unaligned_layers=row["unaligned_by_block"][str(block)],
               loose_bytes=row["loose_bytes"])


def runs_for(rows: list[dict], backend: str, block: int) -> list[Run]:
    return [run_of(r, backend, block) for r in rows]


def predict(model: dict, row: dict, backend: str) -> float:
    """A calibrated latency model's prediction (s) for a benchmark row."""
    return predict_latency(model, run_of(row, backend, model["channel_block"]))


def fit_report(rows: list[dict], backend: str, in_sample: list, refit, predict_s) -> dict:  # noqa: ANN001
    """A latency fit's relative errors in sample (``in_sample``: its FitRows) and leave one
    model out (``refit(rows)`` -> a model fitted without the model predicted by
    ``predict_s(model, row)``), the worst error per model, and the mean errors in %."""
    errors = {"in_sample": {r.name: r.rel_error for r in in_sample}, "leave_one_model_out": {}}
    for name in {r["model"] for r in rows}:
        fitted = refit([r for r in rows if r["model"] != name])
        for r in rows:
            if r["model"] == name:
                measured = r[f"{backend}_ms"] / 1e3
                errors["leave_one_model_out"][f"{name}/{r['variant']}"] = \
                    (predict_s(fitted, r) - measured) / measured
    return {**errors, "worst_per_model_pct": worst_per_model(errors),
            "mape_in_sample": mape(errors["in_sample"]),
            "mape_loo": mape(errors["leave_one_model_out"])}


def mape(errors: dict[str, float]) -> float:
    return float(np.mean([abs(v) for v in errors.values()]) * 100)


def worst_per_model(errors: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{model: {which: largest |error| in % over its variants}} for errors[which][run]."""
    worst: dict = {}
    for which, errs in errors.items():
        for key, e in errs.items():
            m = worst.setdefault(key.split("/")[0], {})
            m[which] = max(m.get(which, 0.0), abs(e) * 100)
    return worst


def plot_calibration(rows: list[dict], calibration: dict, path: Path) -> None:
    """Measured vs calibrated latency, one panel per backend, +-15% band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    backends = list(calibration)
    fig, axes = plt.subplots(1, len(backends), figsize=(5.5 * len(backends), 5), squeeze=False)
    models = sorted({r["model"] for r in rows})
    for ax, b in zip(axes[0], backends):
        c = calibration[b]
        for m in models:
            pts = [(r[f"{b}_ms"], r[f"{b}_ms"] * (1 + c["in_sample"][f"{m}/{r['variant']}"]))
                   for r in rows if r["model"] == m]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, label=m)
        lo = min(r[f"{b}_ms"] for r in rows) * 0.7
        hi = max(r[f"{b}_ms"] for r in rows) * 1.4
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        for f in (0.85, 1.15):
            ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)",
               ylabel="calibrated model (ms)",
               title=f"{b}: channel block {c['channel_block']}, "
                     f"{c['mape_in_sample']:.1f}% mean error (dotted: +-15%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def from_speed(path: Path, models: list[str], backends: list[str]) -> list[tuple]:
    """(model, variant, pipeline, {backend: (median ms, IQR ms)}) for every variant that
    benchmarks/speed.py timed on all ``backends``."""
    data = json.loads(path.read_text())
    jobs = []
    for row in data["rows"]:
        if row["model"] not in models:
            continue
        for key, v in row["variants"].items():
            if all(b in v for b in backends):
                jobs.append((row["model"], key, v.get("pipeline", "dce"),
                             {b: (v[b]["latency_ms"]["median"], v[b]["latency_ms"]["iqr"])
                              for b in backends}))
    if not jobs:
        raise SystemExit(f"{path} has no variant measured on {', '.join(backends)}")
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SPEED_SET))
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--backends", default="ort,torch")
    ap.add_argument("--profile", default="x86-epyc")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--from-speed", help="take the variants and their measured latencies "
                    "from benchmarks/speed.py's JSON instead of measuring")
    args = ap.parse_args()
    torch.set_num_threads(2)
    profile = load_profile(args.profile)
    backends = args.backends.split(",")
    if args.from_speed:
        jobs = from_speed(Path(args.from_speed), args.models.split(","), backends)
    else:
        ratios = [0.0] + [float(r) for r in args.ratios.split(",")]
        jobs = [(m, f"uniform@{r}" if r else "dense",
                 f"prune-channels<ratio={r}>,dce", None)
                for m in args.models.split(",") for r in ratios]
    rows = []
    timers = {b: LayerLatency(b, threads=2) for b in backends}
    from tqdm import tqdm
    for name, variant, pipeline, measured in tqdm(jobs, desc="variants", unit="variant"):
        torch.manual_seed(0)
        model = randomize(torchvision.models.get_model(name, weights=None).eval())
        x = torch.randn(1, 3, 224, 224)
        res = prunepass.prune(model, (x,), pipeline, energy_profile=args.profile)
        g = res.adapter.graph
        cost = compute_cost(g)
        macs, moved, nodes = features(g, cost)
        e = res.record.energy_after
        row = {"model": name, "variant": variant, "macs": sum(macs.values()),
               "macs_by_kind": macs, "bytes": moved, "nodes": nodes,
               "loose_bytes": loose_bytes(g, cost),
               "macs_by_block": {str(b): features(g, cost, b)[0] for b in CHANNEL_BLOCKS},
               "unaligned_by_block": {str(b): unaligned_layers(g, cost, b)
                                      for b in CHANNEL_BLOCKS},
               "energy_mj_modelled": e["total"] / 1e9,
               "compute_mj": e["compute"] / 1e9, "memory_mj": e["memory"] / 1e9,
               "static_mj": e["static"] / 1e9, "latency_roofline_ms": e["latency_s"] * 1e3}
        for b in backends:
            if measured is not None:
                row[f"{b}_ms"], row[f"{b}_iqr_ms"] = measured[b]
                continue
            with tempfile.TemporaryDirectory() as tmp:
                target = res.model if b == "torch" else export_onnx(
                    res.model, (x,), Path(tmp) / "m.onnx")
                st = measure(b, target, (x,), repeats=args.repeats, number=3, warmup=3)
            row[f"{b}_ms"], row[f"{b}_iqr_ms"] = st.median_ms, st.iqr_ms
        specs = [sp for n in g.nodes if (sp := layer_spec(n)) is not None]
        for b in backends:  # the layer table: each conv / linear layer timed alone, summed
            row[f"{b}_layers_ms"] = float(sum(timers[b].many(specs)))
        reading = measure_energy(lambda: res.model(x), device="cpu", calls=3)
        row["energy_measured_j"] = reading.joules
        row["meter"] = reading.source
        rows.append(row)
        tqdm.write(f"{name:16} {variant:12} modelled {row['energy_mj_modelled']:8.2f} mJ  "
                   + "  ".join(f"{b} {row[f'{b}_ms']:8.2f} ms" for b in backends))

    out = {"profile": args.profile, "machine": machine(),
           "rows": rows, "calibration": {}, "calibration_no_alignment": {},
           "layer_table_calibration": {}}
    for b in backends:
        runs = runs_for(rows, b, 1)
        cal = calibrate(profile, runs, f"{platform.machine()} {b} (2 threads)",
                        aligned={k: runs_for(rows, b, k) for k in CHANNEL_BLOCKS})
        path = RESULTS / f"{args.profile}-calibrated-{b}.yaml"
        RESULTS.mkdir(parents=True, exist_ok=True)
        save_profile(cal.profile, path)
        out["calibration"][b] = {
            "profile": str(path),
            "channel_block": cal.profile.extra["latency_model"]["channel_block"],
            **fit_report(rows, b, cal.latency, lambda train, b=b: fit_aligned_latency(
                {k: runs_for(train, b, k) for k in CHANNEL_BLOCKS})[0],
                partial(predict, backend=b))}
        out["calibration_no_alignment"][b] = fit_report(
            rows, b, fit_latency(runs)[1],
            lambda train, b=b: fit_latency(runs_for(train, b, 1))[0],
            partial(predict, backend=b))
        table_model, table_fit = fit_layer_latency(runs)
        out["layer_table_calibration"][b] = {"model": table_model, **fit_report(
            rows, b, table_fit, lambda train, b=b: fit_layer_latency(runs_for(train, b, 1))[0],
            lambda m, r, b=b: (m["per_layer"] * r[f"{b}_layers_ms"] / 1e3
                               + m["s_per_byte"] * r["bytes"] + m["s_per_node"] * r["nodes"]))}

    print(f"\nenergy per inference, MODELLED with profile {args.profile} (no meter here: "
          f"{rows[0]['meter']})")
    head = (f"{'model':16} {'variant':12} {'GMACs':>7} {'total mJ':>9} {'compute':>8} {'memory':>8} "
            f"{'static':>8} " + " ".join(f"{b + ' ms':>9} {'cal err':>8} {'LOO err':>8}"
                                        for b in backends))
    print(head)
    for r in rows:
        key = f"{r['model']}/{r['variant']}"
        cells = " ".join(
            f"{r[f'{b}_ms']:>9.2f} {out['calibration'][b]['in_sample'][key] * 100:>+7.1f}% "
            f"{out['calibration'][b]['leave_one_model_out'][key] * 100:>+7.1f}%" for b in backends)
        print(f"{r['model']:16} {r['variant']:12} {r['macs'] / 1e9:>7.2f} "
              f"{r['energy_mj_modelled']:>9.2f} {r['compute_mj']:>8.2f} {r['memory_mj']:>8.2f} "
              f"{r['static_mj']:>8.2f} {cells}")
    for b in backends:
        c, table = out["calibration"][b], out["layer_table_calibration"][b]
        for label, fit in (
                (f"channel block {c['channel_block']}", c),
                ("no alignment split", out["calibration_no_alignment"][b]),
                (f"layer table (conv/linear layers timed alone, summed, x "
                 f"{table['model']['per_layer']:.3f}, + bytes + nodes)", table)):
            worst = fit["worst_per_model_pct"]
            ok = sum(d["in_sample"] <= 15.0 for d in worst.values())
            print(f"{b}, {label}: mean abs error {fit['mape_in_sample']:.1f}% in sample, "
                  f"{fit['mape_loo']:.1f}% leave-one-model-out; worst per model (in sample / "
                  "leave-one-model-out): " + ", ".join(
                      f"{m} {d['in_sample']:.1f}/{d['leave_one_model_out']:.1f}%"
                      for m, d in sorted(worst.items()))
                  + f"; {ok}/{len(worst)} models within 15% in sample")
        print(f"{b}: calibrated profile (channel block {c['channel_block']}) written to "
              f"{c['profile']}")
    png = RESULTS / "energy-calibration.png"
    plot_calibration(rows, out["calibration"], png)
    print(f"plot of measured vs calibrated latency: {png}")
    write_json("energy.json", out)


if __name__ == "__main__":
    main()
