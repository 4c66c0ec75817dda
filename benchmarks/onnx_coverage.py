"""Prune every torchvision classifier AS ONNX at ratio 0.5 with the default pipeline.

For each model (random init, re-randomised so no layer is an identity): export it to
ONNX (dynamo or legacy exporter), load the file with the ONNX frontend (load s: read,
check, shape analysis, IR), prune it with the default pipeline (prune s: analyses, plan,
edits, rebuilds), save the pruned file and check it: onnx.checker with the full shape
check, and a run in a fresh onnxruntime session (output shape unchanged, finite).
Equivalence: the file pruned with exact-only groups must equal the original ONNX model
with those channels zeroed (masked), both run in onnxruntime, while zeroing other
channels (indices shifted by one) must not (negative control). Times, file sizes, peak
memory and barriers are reported.

    python benchmarks/onnx_coverage.py                        # all models, dynamo exporter
    python benchmarks/onnx_coverage.py --exporter legacy --models resnet18,vit_b_16
    python benchmarks/onnx_coverage.py --size 64              # smaller inputs, quicker

One subprocess per model, so a crash is a row of the table, never hidden. Writes
benchmarks/results/onnx_coverage_<exporter>.json and prints a table and N/total.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (peak_rss_mb, print_row, randomize, row_notes,  # noqa: E402
                    run_isolated, write_json)

EQUIV_TOL = 1e-4  # relative to the largest output, as benchmarks/coverage.py
CONTROL_MIN = 1e-3  # the negative control must differ by more than this


def export(model, x, path: Path, exporter: str) -> None:  # noqa: ANN001
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False)


def run_one(name: str, exporter: str, size: int) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import torchvision

    import prunepass
    from prunepass.numerics import relative_error
    from prunepass.frontends.onnx import OnnxModel
    from prunepass.frontends.onnx.runtime import Session
    from prunepass.pm import AnalysisManager, PassManager
    from prunepass.passes.pipelines.prune_channels import plan_for

    torch.set_num_threads(2)
    torch.manual_seed(0)
    row: dict = {"model": name, "exporter": exporter}
    model = randomize(torchvision.models.get_model(name, weights=None).eval())
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory(prefix="onnx-coverage-") as tmp:
        src = Path(tmp) / f"{name}.onnx"
        t0 = time.perf_counter()
        export(model, x, src, exporter)
        row["export_s"] = round(time.perf_counter() - t0, 2)
        del model
        row["mb_before"] = round(sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20, 2)
        xs = [x.numpy()]
        t1 = time.perf_counter()
        adapter = OnnxModel.load(src, xs, name)
        row["load_s"] = round(time.perf_counter() - t1, 2)
        dense_out = adapter.run()[0]
        t2 = time.perf_counter()
        rec = PassManager(prunepass.DEFAULT_PIPELINE).run(adapter, AnalysisManager(adapter))
        row["prune_s"] = round(time.perf_counter() - t2, 2)
        changes = rec.step("remove-channels")
        row["groups"] = changes["groups_total"]
        row["groups_pruned"] = changes["groups_pruned"]
        row["approx_groups"] = sum(not g["exact"] for g in changes["groups"])
        row["barriers"] = sorted({b["op"] for b in changes["barriers"]})
        for k in ("macs", "params"):
            row[f"{k}_before"] = rec.cost_before[k]
            row[f"{k}_after"] = rec.cost_after[k]
        out_path = adapter.save(Path(tmp) / "pruned" / f"{name}.onnx")
        row["mb_after"] = round(sum(f.stat().st_size for f in out_path.parent.iterdir())
                                / 2**20, 2)
        onnx.checker.check_model(str(out_path), full_check=True)
        row["checker_ok"] = True
        sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: xs[0]})[0]
        row["shape_ok"] = tuple(out.shape) == tuple(dense_out.shape)
        row["finite"] = bool(np.isfinite(out).all())
        del adapter, sess
        # equivalence on the exact groups: pruned == masked original, both in onnxruntime;
        # negative control: masking other channels (indices shifted by one) differs
        exact = OnnxModel.load(src, xs, name)
        plan = plan_for(AnalysisManager(exact), ratio=0.5, exact_only=True)
        groups, keep = plan.summary(), plan.keep()
        row["exact_groups_pruned"] = sum(g["kept"] < g["channels"] for g in groups)
        sizes = {v.name: v.shape for v in exact.graph.values()}
        masked = exact.clone()
        masked.apply_keep(keep, "mask")
        reference = masked.run()
        del masked
        shifted = exact.clone()
        shifted.apply_keep({k: (i + 1) % sizes[k[0]][k[1]] for k, i in keep.items()}, "mask")
        wrong = shifted.run()
        del shifted
        exact.apply_keep(keep, "remove")
        pruned_out = exact.run()
        del exact
        row["equiv_err"] = relative_error(pruned_out, reference)
        row["control_err"] = relative_error(pruned_out, wrong)
        # the untouched input file still gives the dense outputs
        row["input_unchanged"] = relative_error(
            Session(onnx.load(str(src))).run(xs), [dense_out]) == 0.0
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    # a model with no exact group to prune has nothing to compare: not counted as verified
    row["equiv_ok"] = row["equiv_err"] <= EQUIV_TOL and row["exact_groups_pruned"] > 0 and \
        row["control_err"] > CONTROL_MIN
    row["ok"] = (row["checker_ok"] and row["shape_ok"] and row["finite"] and row["equiv_ok"]
                 and row["input_unchanged"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: every classifier)")
    ap.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args()
    if args.one:
        print_row(lambda: run_one(args.one, args.exporter, args.size), args.one,
                  exporter=args.exporter)
        return
    import torchvision
    names = args.models.split(",") if args.models else \
        torchvision.models.list_models(module=torchvision.models)
    from tqdm import tqdm
    rows = []
    for name in tqdm(names, desc="models", unit="model"):
        t = time.perf_counter()
        row = run_isolated(__file__, name, ["--exporter", args.exporter, "--size",
                                            str(args.size)], args.timeout)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        tqdm.write(_fmt(row))
    path = write_json(f"onnx_coverage_{args.exporter}.json", rows)
    print()
    print(HEADER)
    for r in rows:
        print(_fmt(r))
    ok = sum(r.get("ok", False) for r in rows)
    done = [r for r in rows if "prune_s" in r]
    if done:
        print(f"\nmax load {max(r['load_s'] for r in done):.2f}s, max analysis+prune "
              f"{max(r['prune_s'] for r in done):.2f}s, "
              f"max per-model wall {max(r['wall_s'] for r in rows):.0f}s (measured)")
    print(f"{ok}/{len(rows)} models exported ({args.exporter}), pruned as ONNX, valid and "
          f"equivalent  ({path})")


HEADER = (f"{'model':24} {'ok':3} {'groups':>9} {'GMACs':>15} {'Mparams':>15} "
          f"{'file MB':>15} {'export':>6} {'load':>5} {'prune':>6} {'wall':>5} "
          f"{'equiv err':>9} {'control':>8}  note")


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:24} {'NO':3} {r['error']} ({r.get('wall_s', 0):.0f}s)"
    note = row_notes(r)
    if not r["equiv_ok"]:
        note.append("NOT equivalent" if r["exact_groups_pruned"] else "no exact group")
    if not r["input_unchanged"]:
        note.append("input file changed")
    return (f"{r['model']:24} {'yes' if r['ok'] else 'NO':3} "
            f"{r['groups_pruned']:>4}/{r['groups']:<4} "
            f"{r['macs_before'] / 1e9:>6.2f}->{r['macs_after'] / 1e9:<6.2f} "
            f"{r['params_before'] / 1e6:>6.1f}->{r['params_after'] / 1e6:<6.1f} "
            f"{r['mb_before']:>6.1f}->{r['mb_after']:<6.1f} "
            f"{r['export_s']:>6.1f} {r['load_s']:>5.1f} {r['prune_s']:>6.1f} "
            f"{r.get('wall_s', 0):>5.0f} {r['equiv_err']:>9.1e} {r['control_err']:>8.1e}  "
            f"{'; '.join(note)}")


if __name__ == "__main__":
    main()
