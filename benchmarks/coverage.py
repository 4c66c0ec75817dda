"""Prune every torchvision model at ratio 0.5 with the default pipeline: classifiers,
segmentation, video and optical-flow models whole, detectors by their backbone and neck
(their post-processing is data-dependent; docs/python.md has the recipe).

For each model (random init, re-randomised so no layer is an identity): trace time,
analysis + prune time, forward of the pruned model (shape unchanged, finite), MACs and
params before/after, peak RSS, whether it came back as its own torchvision class (outputs
equal to the pruned graph's; else the reason), and the dead-channel equivalence: the same
models pruned with exact-only groups must equal the original with those channels zeroed
(masked).

    python benchmarks/coverage.py                 # all models, one subprocess each
    python benchmarks/coverage.py --models resnet18,vit_b_16,segmentation:fcn_resnet50
    python benchmarks/coverage.py --families classification,video

Writes benchmarks/results/coverage.json and prints a table and N/total.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (peak_rss_mb, print_row, randomize, row_notes, rss_mb,  # noqa: E402
                    run_isolated, write_json)

EQUIV_TOL = 1e-4


FAMILIES = ("classification", "segmentation", "detection", "video", "optical_flow")
_MODULES = {"classification": "", "segmentation": ".segmentation", "detection": ".detection",
            "video": ".video", "optical_flow": ".optical_flow"}


def model_names(families: list[str]) -> list[str]:
    """FAMILY:NAME for every model of the families (classifiers by their bare name)."""
    import importlib
    import torchvision
    out = []
    for fam in families:
        module = importlib.import_module("torchvision.models" + _MODULES[fam])
        names = torchvision.models.list_models(module=module)
        out += names if fam == "classification" else [f"{fam}:{n}" for n in names]
    return out


def build(spec: str):  # noqa: ANN201
    """(the module to prune, its example inputs) for FAMILY:NAME, random weights."""
    import torch
    import torchvision
    fam, _, name = spec.rpartition(":")
    fam = fam or "classification"
    kw = {"weights": None} | ({"weights_backbone": None} if fam in ("detection", "segmentation")
                              else {})
    model = randomize(torchvision.models.get_model(name, **kw).eval())
    if fam == "detection":  # the traceable part: backbone and neck, as the detector feeds it
        image = torch.rand(3, 320, 320)
        return model.backbone, (model.transform([image])[0].tensors,)
    if fam == "video":
        frames, side = (16, 224) if name.startswith(("mvit", "swin3d", "s3d")) else (16, 112)
        return model, (torch.randn(1, 3, frames, side, side),)
    if fam == "optical_flow":
        return model, (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
    return model, (torch.randn(1, 3, 224, 224),)


def _tensors(out) -> list:  # noqa: ANN001
    import torch
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def run_one(name: str) -> dict:
    import torch

    import prunepass
    from prunepass.frontends.torch import TorchModel
    from prunepass.pm import AnalysisManager, PassManager

    torch.set_num_threads(2)
    torch.manual_seed(0)
    row: dict = {"model": name}
    base_rss = rss_mb()
    model, inputs = build(name)
    dense_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    row["dense_mb"] = round(dense_mb, 1)
    with torch.no_grad():
        dense_out = _tensors(model(*inputs))
    after_model_rss = rss_mb()
    t0 = time.perf_counter()
    adapter = TorchModel.from_module(model, inputs, name)
    t1 = time.perf_counter()
    rec = PassManager(prunepass.DEFAULT_PIPELINE).run(adapter, AnalysisManager(adapter))
    t2 = time.perf_counter()
    prune_peak = peak_rss_mb()
    row["trace_s"] = round(t1 - t0, 2)
    row["prune_s"] = round(t2 - t1, 2)
    row["peak_rss_mb"] = round(prune_peak, 1)
    row["extra_mb"] = round(prune_peak - after_model_rss, 1)
    row["mem_x_dense"] = round((prune_peak - base_rss) / max(dense_mb, 1e-9), 2)
    changes = rec.step("remove-channels")
    row["groups"] = changes["groups_total"]
    row["groups_pruned"] = changes["groups_pruned"]
    row["approx_groups"] = sum(not g["exact"] for g in changes["groups"])
    row["barriers"] = sorted({b["op"] for b in changes["barriers"]})
    for k in ("macs", "params"):
        row[f"{k}_before"] = rec.cost_before[k]
        row[f"{k}_after"] = rec.cost_after[k]
    pruned = adapter.materialize()
    with torch.no_grad():
        out = _tensors(pruned(*inputs))
    row["shape_ok"] = [tuple(o.shape) for o in out] == [tuple(o.shape) for o in dense_out]
    row["finite"] = all(bool(torch.isfinite(o).all()) for o in out if o.is_floating_point())
    own, info = adapter.user_module()  # what prunepass.prune hands back
    row["own_class"] = info["returned"] == "own-class"
    row["own_class_err"] = info.get("max_rel_error_vs_graph")
    if not row["own_class"]:
        row["own_class_reason"] = info.get("reason", "")[:300]
    # equivalence on the exact groups: pruned == masked original
    exact = TorchModel.from_module(model, inputs, name)
    am = AnalysisManager(exact, check_numerics=True)
    try:
        r2 = PassManager("prune-channels<ratio=0.5,exact-only=true>").run(exact, am)
        ch = r2.step("remove-channels")
        row["equiv_err"] = ch.get("max_rel_error_vs_masked", 0.0)
        row["exact_groups_pruned"] = ch["groups_pruned"]
    except prunepass.VerificationError as e:
        row["equiv_err"] = float(str(e).split("by ")[1].split(" ")[0])
        row["exact_groups_pruned"] = -1
    row["equiv_ok"] = row["equiv_err"] <= EQUIV_TOL
    row["ok"] = row["shape_ok"] and row["finite"] and row["equiv_ok"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names, FAMILY:NAME outside the "
                    "classifiers (default: every model of --families)")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma list of {', '.join(FAMILIES)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--merge", metavar="JSON", help="an earlier coverage.json: its rows for "
                    "models not run now are kept (re-run a few models of a full table)")
    args = ap.parse_args()
    if args.one:
        print_row(lambda: run_one(args.one), args.one)
        return
    names = args.models.split(",") if args.models else \
        model_names(args.families.split(","))
    from tqdm import tqdm
    rows = []
    for name in tqdm(names, desc="models", unit="model"):
        row = run_isolated(__file__, name, [], args.timeout)
        rows.append(row)
        tqdm.write(_fmt(row))
    if args.merge:
        done = {r["model"] for r in rows}
        saved = json.loads(Path(args.merge).read_text())
        saved = saved["rows"] if isinstance(saved, dict) else saved
        old = [r for r in saved if r["model"] not in done]
        rows = sorted(old + rows, key=lambda r: r["model"])
    path = write_json("coverage.json", {"rows": rows})
    print()
    print(HEADER)
    for r in rows:
        print(_fmt(r))
    ok = sum(r.get("ok", False) for r in rows)
    done = [r for r in rows if "prune_s" in r]
    if done:
        print(f"\nmax analysis+prune {max(r['prune_s'] for r in done):.2f}s, "
              f"max trace {max(r['trace_s'] for r in done):.2f}s, "
              f"max peak memory {max(r['mem_x_dense'] for r in done):.2f}x dense (measured)")
    print(f"{ok}/{len(rows)} models pruned, run and equivalent  ({path})")
    own = sum(r.get("own_class", False) for r in rows)
    print(f"{own}/{len(rows)} returned as their own class (outputs equal to the pruned graph)")


HEADER = (f"{'model':24} {'ok':3} {'groups':>9} {'approx':>6} {'GMACs':>15} {'Mparams':>15} "
          f"{'trace s':>7} {'prune s':>7} {'equiv err':>9} {'peak MB':>8} {'x dense':>7}  note")


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:24} {'NO':3} {r['error']}"
    note = row_notes(r)
    if not r["equiv_ok"]:
        note.append("NOT equivalent")
    if not r.get("own_class", True):
        note.append("graph module: " + r.get("own_class_reason", "")[:80])
    return (f"{r['model']:24} {'yes' if r['ok'] else 'NO':3} "
            f"{r['groups_pruned']:>4}/{r['groups']:<4} {r['approx_groups']:>6} "
            f"{r['macs_before'] / 1e9:>6.2f}->{r['macs_after'] / 1e9:<6.2f} "
            f"{r['params_before'] / 1e6:>6.1f}->{r['params_after'] / 1e6:<6.1f} "
            f"{r['trace_s']:>7.2f} {r['prune_s']:>7.2f} {r['equiv_err']:>9.1e} "
            f"{r['peak_rss_mb']:>8.0f} {r['mem_x_dense']:>7.2f}  {'; '.join(note)}")


if __name__ == "__main__":
    main()
