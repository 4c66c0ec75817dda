"""Fine-grained sparsity on the digits CNN: accuracy vs parameters for channel pruning,
unstructured masks and 2:4, at equal (effective) parameter counts, with fine-tuning; then
what the zeros buy on disk and in onnxruntime on this CPU.

1. Train the digits CNN (scikit-learn digits). For each channel ratio, prune-channels
   (Taylor) gives a smaller dense model with P parameters; an unstructured global
   magnitude mask is then chosen to leave exactly P non-zero parameters. 2:4 on every
   eligible layer gives its own count P24, and channel pruning is matched to it (the ratio
   found by bisection). Every model is fine-tuned for the same epochs, masks kept. A
   gradual (polynomial schedule) unstructured run is added at one level.
2. Files: state_dict (.pt), ONNX with the zeros, the same zipped, ONNX with sparse
   initializers; and the sparsity report's computed sizes (dense / deflate / bitmask).
3. Latency, onnxruntime CPU, one thread, median of repeated runs: dense vs the same
   architecture with zeros vs sparse initializers; on the CNN and on a wide MLP.
   (GPU 2:4 kernels: no GPU here; torch's semi-structured tensors need CUDA.)

    python benchmarks/sparsity.py            # ~4 min on 2 idle cores, 15 when shared
    python benchmarks/sparsity.py --quick    # fewer epochs and levels
    python benchmarks/sparsity.py --plot-only  # redraw the PNG from the JSON

Writes benchmarks/results/sparsity.json and sparsity.png and prints the tables."""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402


def effective_params(module) -> int:  # noqa: ANN001
    from prunepass.frontends.torch import weight_masks
    return int(sum(int((p != 0).sum()) for p in weight_masks.bake(module).parameters()))


def sparse_initializers(path: Path, out: Path, min_sparsity: float = 0.5) -> Path:
    """The ONNX file with every initializer that is at least ``min_sparsity`` zeros stored
    as an ONNX SparseTensorProto (values + int64 linear indices, as the spec requires)."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load(str(path))
    keep, sparse = [], []
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim >= 2 and (a == 0).mean() >= min_sparsity:
            flat = a.ravel()
            idx = np.flatnonzero(flat)
            sparse.append(helper.make_sparse_tensor(
                numpy_helper.from_array(flat[idx], init.name),
                numpy_helper.from_array(idx.astype(np.int64), init.name + "_indices"),
                list(a.shape)))
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    m.graph.sparse_initializer.extend(sparse)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out


def zipped(path: Path) -> int:
    z = path.with_suffix(path.suffix + ".zip")
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.write(path, path.name)
    return z.stat().st_size


def latency_ms(backend: str, model, x, repeat: int) -> dict[str, float]:  # noqa: ANN001
    """Median and minimum ms on one thread (the machine is shared: compared like for like)."""
    from prunepass.backends.measure.measure import measure
    st = measure(backend, model, (x,), repeats=repeat, number=1,
                 warmup=max(repeat // 10, 3), threads=1)
    return {"median": round(st.median_ms, 4), "min": round(st.min_ms, 4)}


def accuracy_study(args, data, dense, calib) -> tuple[list[dict], dict]:  # noqa: ANN001
    import torch.nn.functional as F

    import prunepass
    from prunepass.demo import accuracy, train
    from prunepass.schedules import Schedule, sparsify
    xtr, ytr, xte, yte = data
    x = (xte[:8],)
    loss = lambda out: F.cross_entropy(out, ytr[:256])  # noqa: E731
    total = sum(p.numel() for p in dense.parameters())
    weights = sum(p.numel() for n, p in dense.named_parameters() if n.endswith("weight")
                  and p.dim() >= 2)
    rows: list[dict] = []

    def finish(row: dict, module) -> dict:  # noqa: ANN001
        row["effective_params"] = effective_params(module)
        row["acc_before_ft"] = accuracy(module, xte, yte)
        train(module, xtr, ytr, args.ft, lr=1e-3, desc=row["method"], seed=1)
        row["acc_after_ft"] = accuracy(module, xte, yte)
        row["params_fraction"] = row["effective_params"] / total
        rows.append(row)
        print(f"  {row['method']:13} {row['setting']:34} params {row['effective_params']:>7} "
              f"({row['params_fraction'] * 100:5.1f}%)  acc {row['acc_before_ft']:6.2f}% -> "
              f"{row['acc_after_ft']:6.2f}% after {args.ft} epochs", flush=True)
        return row

    def channel(ratio: float) -> tuple[int, object]:
        res = prunepass.prune(dense, x, f"prune-channels<ratio={ratio},importance=taylor>,dce",
                              calibration=calib, loss_fn=loss)
        return res.record.cost_after["params"], res.model

    def unstructured(params: int, setting: str) -> None:
        s = (total - params) / weights  # the zeros needed, over the maskable weights
        if not 0 < s < 0.99:
            return
        res = prunepass.prune(
            dense, x, f"mask<granularity=weight,sparsity={s:.6f},scope=global,max-ratio=0.995>")
        finish({"method": "unstructured", "setting": setting + f" (sparsity {s:.3f})"},
               res.model)

    for ratio in args.ratios:
        p, module = channel(ratio)
        finish({"method": "channel", "setting": f"prune-channels ratio={ratio}"}, module)
        unstructured(p, f"matched to channel {ratio}")
    # 2:4, then channel pruning and unstructured matched to its count
    res = prunepass.prune(dense, x, "nm-sparsity<n=2,m=4>")
    skipped = [s["param"] for s in res.record.passes[0]["changes"]["skipped"]]
    nm = finish({"method": "2:4", "setting": f"nm-sparsity (skipped {','.join(skipped)})"},
                res.model)
    lo, hi = 0.0, 0.95
    for _ in range(7):  # bisection on the ratio: params fall as the ratio grows
        mid = (lo + hi) / 2
        if channel(mid)[0] > nm["effective_params"]:
            lo = mid
        else:
            hi = mid
    r = round(hi if abs(channel(hi)[0] - nm["effective_params"]) <
              abs(channel(lo)[0] - nm["effective_params"]) else lo, 4)
    finish({"method": "channel", "setting": f"prune-channels ratio={r} (matched to 2:4)"},
           channel(r)[1])
    unstructured(nm["effective_params"], "matched to 2:4")
    # gradual: polynomial schedule over the fine-tuning epochs, same epoch budget
    level = next((r for r in rows if r["method"] == "unstructured"
                  and str(args.ratios[len(args.ratios) // 2]) in r["setting"]), None)
    if level is not None and args.ft >= 3:
        s = (total - level["effective_params"]) / weights
        sched = Schedule("polynomial", final=round(s, 6), steps=args.ft - 1, every=1)
        before = {}

        def step(module, epoch: int) -> None:  # noqa: ANN001
            if epoch == 0:
                before["acc"] = accuracy(module, xte, yte)
            train(module, xtr, ytr, 1, lr=1e-3, desc="gradual", seed=1 + epoch)

        t0 = time.perf_counter()
        sp = sparsify(dense, x, step, sched, total_steps=args.ft, scope="global",
                      max_ratio=0.995)
        row = {"method": "gradual", "setting": f"polynomial to {s:.3f} over "
               f"{args.ft - 1} epochs", "effective_params": effective_params(sp.module),
               "acc_before_ft": float("nan"), "acc_after_ft": accuracy(sp.module, xte, yte),
               "params_fraction": effective_params(sp.module) / total,
               "history": sp.history, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"  {'gradual':13} {row['setting']:34} params {row['effective_params']:>7} "
              f"({row['params_fraction'] * 100:5.1f}%)  acc           -> "
              f"{row['acc_after_ft']:6.2f}% after {args.ft} epochs (pruned while training)")
    return rows, {"total_params": total, "maskable_weights": weights}


def size_and_latency(args, dense, xte) -> list[dict]:  # noqa: ANN001
    import torch
    import torch.nn as nn

    import prunepass
    from prunepass.frontends.torch import weight_masks
    from prunepass.pm import AnalysisManager
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                        nn.Linear(2048, 10)).eval()
    cases = [("digits CNN", dense, xte[:args.batch]),
             ("MLP 64-2048-2048-10", mlp, torch.randn(args.batch, 64))]
    variants = [("dense", None), ("unstructured 90%",
                                  "mask<granularity=weight,sparsity=0.9,scope=global,"
                                  "max-ratio=0.995>"),
                ("2:4", "nm-sparsity<n=2,m=4>")]
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="prunepass-sparsity-"))
    for label, model, x in cases:
        for name, pipeline in variants:
            if pipeline is None:
                adapter = prunepass.load(model, (x,))
                module = adapter.materialize()
            else:
                res = prunepass.prune(model, (x,), pipeline)
                adapter, module = res.adapter, res.model
            rep = AnalysisManager(adapter).get("sparsity")
            stem = tmp / f"{label.split()[0]}-{name.split()[0].replace(':', 'of')}"
            pt = stem.with_suffix(".pt")
            torch.save(weight_masks.bake(module).state_dict(), pt)
            onnx_path = weight_masks.export_onnx(module, (x,), stem.with_suffix(".onnx"))
            sparse_path = sparse_initializers(onnx_path, Path(f"{stem}-sparse.onnx"), 0.5)
            xn = x.numpy()
            row = {"model": label, "variant": name, "batch": int(x.shape[0]),
                   "params": rep.totals["params"], "effective_params": rep.totals[
                       "effective_params"], "computed_bytes": rep.sizes,
                   "file_bytes": {"state_dict_pt": pt.stat().st_size,
                                  "onnx": onnx_path.stat().st_size,
                                  "onnx_zip": zipped(onnx_path),
                                  "onnx_sparse_initializers": sparse_path.stat().st_size},
                   "latency_ms": {
                       "onnxruntime": latency_ms("ort", onnx_path, xn, args.repeat),
                       "onnxruntime_sparse_initializers": latency_ms("ort", sparse_path, xn,
                                                                         args.repeat),
                       "torch_masked": latency_ms("torch", module, x, args.repeat),
                       "torch_baked": latency_ms("torch", weight_masks.bake(module), x,
                                                       args.repeat)}}
            out.append(row)
            f = row["file_bytes"]
            lat = {k: v["median"] for k, v in row["latency_ms"].items()}
            print(f"  {label:20} {name:17} onnx {f['onnx'] / 1024:8.1f} KiB  zip "
                  f"{f['onnx_zip'] / 1024:8.1f} KiB  sparse-init "
                  f"{f['onnx_sparse_initializers'] / 1024:8.1f} KiB | ORT "
                  f"{lat['onnxruntime']:7.3f} ms  ORT sparse-init "
                  f"{lat['onnxruntime_sparse_initializers']:7.3f} ms  torch masked "
                  f"{lat['torch_masked']:7.3f} ms  baked {lat['torch_baked']:7.3f} ms "
                  f"(medians; load average {os.getloadavg()[0]:.1f})", flush=True)
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return out


def plot(rows: list[dict], path: Path, dense_acc: float, total: int) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"channel": ("tab:blue", "o"), "unstructured": ("tab:orange", "s"),
             "2:4": ("tab:green", "D"), "gradual": ("tab:red", "*")}
    for method, (color, marker) in style.items():
        pts = sorted((r["params_fraction"] * 100, r["acc_after_ft"], r["acc_before_ft"])
                     for r in rows if r["method"] == method)
        if not pts:
            continue
        xs, after, before = zip(*pts)
        ax.plot(xs, after, marker=marker, color=color, label=f"{method}, fine-tuned",
                ms=9 if marker == "*" else 6)
        if method != "gradual":
            ax.plot(xs, before, marker=marker, color=color, ls=":", alpha=0.5,
                    label=f"{method}, before fine-tuning")
    ax.axhline(dense_acc, color="gray", ls="--", lw=1, label=f"dense ({total} params)")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("non-zero parameters, % of dense (log)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("digits CNN: accuracy vs effective parameters")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and levels")
    ap.add_argument("--width", type=int, default=32, help="digits CNN width")
    ap.add_argument("--repeat", type=int, default=200, help="latency repetitions")
    ap.add_argument("--batch", type=int, default=64, help="latency batch size")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw the PNG from benchmarks/results/sparsity.json")
    args = ap.parse_args()
    if args.plot_only:
        import json
        saved = json.loads((RESULTS / "sparsity.json").read_text())
        plot(saved["accuracy"], RESULTS / "sparsity.png", saved["dense_acc"],
             saved["total_params"])
        return 0
    args.epochs, args.ft = (5, 3) if args.quick else (15, 5)
    args.ratios = [0.5, 0.8] if args.quick else [0.3, 0.5, 0.7, 0.85]
    if args.quick:
        args.repeat = min(args.repeat, 50)

    import torch

    from prunepass.demo import DigitsCNN, accuracy, digits_data, train
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = digits_data()
    xtr, ytr, xte, yte = data
    dense = DigitsCNN(args.width)
    train(dense, xtr, ytr, args.epochs, desc="train dense")
    dense_acc = accuracy(dense, xte, yte)
    print(f"== digits CNN width {args.width}: dense accuracy {dense_acc:.2f}% "
          f"({args.epochs} epochs); fine-tuning {args.ft} epochs each, lr 1e-3")
    rows, meta = accuracy_study(args, data, copy.deepcopy(dense), (xtr[:256],))
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "sparsity.png"
    plot(rows, png, dense_acc, meta["total_params"])
    print(f"\n== files and latency (CPU, 1 thread each, batch {args.batch}, median of "
          f"{args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    perf = size_and_latency(args, dense, xte)
    print("\nGPU 2:4 kernels (torch semi-structured sparse tensors, cuSPARSELt/CUTLASS) need "
          "a CUDA GPU: none on this machine, not measured.")
    data_out = {"dense_acc": dense_acc, "epochs": args.epochs, "finetune_epochs": args.ft,
                **meta, "accuracy": rows, "files_and_latency": perf,
                "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "seconds": round(time.perf_counter() - t0, 1)}
    path = write_json("sparsity.json", data_out)
    print(f"\nwrote {path} and {png} in {data_out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
