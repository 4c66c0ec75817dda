"""Searched Pareto front vs uniform pruning on a digits CNN, and latency budgets.

Part 1 (digits): the demo's CNN (prunepass.demo.DigitsCNN, width 32) is trained on
scikit-learn's digits (train split minus a validation split). Then
  (a) uniform: prune-channels<ratio=r> (l2, every group loses r) for several r;
  (b) search: prunepass.search over per-group ratios with NSGA-II, objectives validation
      accuracy (after a 1-epoch fine-tune proxy) and MACs, warm-started with the uniform
      ratios of (a) as its first trials (so the search starts from what uniform pruning
      finds and looks for better per-group mixes); its Pareto set is re-applied to the
      dense model from each member's record;
  (c) Torch-Pruning's uniform recipe (MagnitudeImportance p=2, same ratios), if installed;
  (d) the sensitivity-guided allocation (prunepass.search.allocate) at MACs budgets.
Every final model gets the same fine-tuning (same epochs, lr, seed) and is scored on the
held-out test split. Hypervolume of each front in (MACs, test accuracy), with the
reference point (dense MACs, 10 % = chance) and a tighter one (dense MACs, 90 %).

Part 2 (latency budgets): torchvision models (random weights) pruned with
prune-channels<target-latency-ms=...>; requested vs achieved latency as predicted by the
profile's latency model: the roofline of x86-epyc, and the model calibrated on this
machine's onnxruntime runs (benchmarks/results/x86-epyc-calibrated-ort.yaml). Measured
torch eager latency (1 thread, shared machine: noisy) is printed beside it for context.

    python benchmarks/search_digits.py [--trials 300] [--epochs 8] [--part digits|latency|all]
Writes benchmarks/results/search_digits.json and search_digits.png (--name changes it)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402

import prunepass  # noqa: E402
from prunepass.demo import DigitsCNN, accuracy, digits_data, train  # noqa: E402
from prunepass.pm import AnalysisManager  # noqa: E402
from prunepass.search import (classification_trainer, hypervolume_2d,  # noqa: E402
                              non_dominated, search)
from prunepass.search.allocate import allocate  # noqa: E402
from prunepass.search.plots import Series, pareto_plot  # noqa: E402

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)  # up to the search's max
ALLOCATE = (0.5, 0.25, 0.1)  # MACs budgets for the sensitivity allocation
REFERENCES = {"chance": 10.0, "tight": 90.0}


def macs_of(module: torch.nn.Module, x: torch.Tensor) -> int:
    am = AnalysisManager(prunepass.load(module, (x,)))
    return int(am.get("cost").totals["macs"])


FT_SEEDS = [0]  # set from --ft-seeds


def finetuned(module: torch.nn.Module, data: tuple, epochs: int, xte, yte) -> float:  # noqa: ANN001
    """Mean test accuracy after fine-tuning copies of ``module`` with each seed (the batch
    order): one test sample is 0.22 points here, so single runs are noisy."""
    import copy
    accs = []
    for seed in FT_SEEDS:
        m = copy.deepcopy(module)
        torch.manual_seed(seed)
        classification_trainer(data, lr=1e-3, seed=seed, progress=False)(m, epochs)
        accs.append(accuracy(m, xte, yte))
    return sum(accs) / len(accs)


def torch_pruning_uniform(dense: torch.nn.Module, x: torch.Tensor, ratio: float):  # noqa: ANN201
    import copy

    import torch_pruning as tp
    model = copy.deepcopy(dense).eval()
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[model.fc2])
    pruner.step()
    return model


def hv(points: list[tuple[float, float]], dense_macs: float) -> dict[str, float]:
    # MACs as a fraction of the dense model, accuracy in %; MACs minimised, accuracy maximised
    pts = [(m / dense_macs, a) for m, a in points]
    return {name: hypervolume_2d(pts, (1.0, acc)) for name, acc in REFERENCES.items()}


def part_digits(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    xtr_all, ytr_all, xte, yte = digits_data()
    n_val = len(xtr_all) // 5  # held out from training: the search scores on it
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(xtr_all), generator=g)
    xval, yval = xtr_all[perm[:n_val]], ytr_all[perm[:n_val]]
    xtr, ytr = xtr_all[perm[n_val:]], ytr_all[perm[n_val:]]
    x1 = xte[:1]
    t0 = time.perf_counter()
    dense = DigitsCNN(32)
    train(dense, xtr, ytr, args.dense_epochs, desc="train dense")
    dense_acc = accuracy(dense, xte, yte)
    dense_macs = macs_of(dense, x1)
    print(f"dense: test accuracy {dense_acc:.2f} %, {dense_macs / 1e6:.3f} M MACs "
          f"({args.dense_epochs} epochs, {time.perf_counter() - t0:.0f} s)")

    rows: dict[str, list[dict]] = {"uniform": [], "search": [], "torch-pruning": [],
                                   "allocate": []}
    t0 = time.perf_counter()
    for r in RATIOS:
        res = prunepass.prune(dense, (x1,), f"prune-channels<ratio={r}>,dce")
        acc0 = accuracy(res.model, xte, yte)
        acc = finetuned(res.model, (xtr, ytr), args.epochs, xte, yte)
        rows["uniform"].append({"ratio": r, "macs": res.record.cost_after["macs"],
                                "acc_pruned": acc0, "acc": acc})
    t_uniform = time.perf_counter() - t0
    print(f"uniform: {len(RATIOS)} ratios fine-tuned in {t_uniform:.0f} s")

    t0 = time.perf_counter()
    try:
        for r in RATIOS:
            m = torch_pruning_uniform(dense, x1, r)
            acc0 = accuracy(m, xte, yte)
            acc = finetuned(m, (xtr, ytr), args.epochs, xte, yte)
            rows["torch-pruning"].append({"ratio": r, "macs": macs_of(m, x1),
                                          "acc_pruned": acc0, "acc": acc})
        print(f"torch-pruning: fine-tuned in {time.perf_counter() - t0:.0f} s")
    except ImportError:
        print("torch-pruning is not installed: column skipped")

    t0 = time.perf_counter()
    adapter = prunepass.load(dense, (x1,))
    sens = AnalysisManager(adapter, evaluate=lambda m: accuracy(m, xval, yval)).get(
        "sensitivity", ratios=[0.2, 0.4, 0.6, 0.8])
    print("sensitivity (validation accuracy drop, points, no fine-tuning):")
    print(sens.table())
    for target in ALLOCATE:
        alloc = allocate(adapter, None, sens, target=f"{target}x", max_ratio=args.max_ratio)
        res = prunepass.prune(adapter.clone(), None, alloc.pipeline)
        acc0 = accuracy(res.model, xte, yte)
        acc = finetuned(res.model, (xtr, ytr), args.epochs, xte, yte)
        rows["allocate"].append({"target": target, "macs": res.record.cost_after["macs"],
                                 "acc_pruned": acc0, "acc": acc, "ratios": alloc.ratios})
    print(f"sensitivity allocation: {len(ALLOCATE)} budgets in "
          f"{time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    proxy = classification_trainer((xtr, ytr), lr=1e-3, seed=0, progress=False)
    result = search(dense, (x1,), lambda m: accuracy(m, xval, yval),
                    objectives=("accuracy", "macs"), n_trials=args.trials,
                    population_size=args.population, max_ratio=args.max_ratio,
                    ratio_step=0.05,
                    finetune=proxy, finetune_epochs=1, seed=args.seed,
                    seed_ratios=RATIOS, storage=args.storage,
                    study_name=f"digits-{args.trials}-{args.seed}", progress=not args.quiet)
    t_search = time.perf_counter() - t0
    print(f"search: {args.trials} trials in {t_search:.0f} s, Pareto set "
          f"{len(result.pareto)} (validation accuracy after 1 epoch)")
    print(result.table())
    t0 = time.perf_counter()
    for p in result.pareto:
        again = prunepass.apply_record(dense, (x1,), p.record)  # from the dense weights
        assert again.record.cost_after["macs"] == p.metrics["macs"]
        acc0 = accuracy(again.model, xte, yte)
        acc = finetuned(again.model, (xtr, ytr), args.epochs, xte, yte)
        rows["search"].append({"trial": p.trial, "macs": p.metrics["macs"],
                               "val_acc_proxy": p.metrics["accuracy"], "acc_pruned": acc0,
                               "acc": acc, "ratios": p.choice["ratios"]})
    print(f"search: Pareto set fine-tuned in {time.perf_counter() - t0:.0f} s")

    print(f"\nfine-tuned {args.epochs} epochs each (Adam, lr 1e-3), test accuracy averaged "
          f"over {len(FT_SEEDS)} fine-tuning seeds; dense {dense_acc:.2f} %")
    print(f"{'method':14} {'plan':34} {'MACs x':>7} {'no FT':>7} {'FT':>7} {'FT drop':>8}")
    for method, rs in rows.items():
        for r in sorted(rs, key=lambda r: -r["macs"]):
            plan = f"ratio {r['ratio']}" if "ratio" in r else " ".join(
                f"{k.removesuffix('.weight')}:{v:.2f}" for k, v in r["ratios"].items())
            print(f"{method:14} {plan:34} {dense_macs / r['macs']:>7.2f} "
                  f"{r['acc_pruned']:>7.2f} {r['acc']:>7.2f} {dense_acc - r['acc']:>8.2f}")
    summary: dict = {"dense": {"acc": dense_acc, "macs": dense_macs},
                     "epochs": args.epochs, "ft_seeds": len(FT_SEEDS),
                     "trials": args.trials, "rows": rows,
                     "seconds": {"uniform": t_uniform, "search": t_search},
                     "hypervolume_reference": {k: f"(1.0 x dense MACs, {v} %)"
                                               for k, v in REFERENCES.items()}}
    print("\nhypervolume of (MACs / dense MACs, test accuracy %) after fine-tuning; "
          "reference points " + ", ".join(f"{k}: (1.0, {v} %)" for k, v in REFERENCES.items()))
    summary["hypervolume"], summary["best_at_2x"] = {}, {}
    for method, rs in rows.items():
        if not rs:
            continue
        pts = [(r["macs"], r["acc"]) for r in rs]
        summary["hypervolume"][method] = hv(pts, dense_macs)
        half = [r["acc"] for r in rs if r["macs"] <= dense_macs / 2]
        best = max(half) if half else None
        summary["best_at_2x"][method] = best
        front = len(non_dominated(pts, (False, True)))
        print(f"  {method:14} " + "  ".join(f"{k} {v:8.3f}" for k, v in
                                            summary["hypervolume"][method].items())
              + f"   front {front}/{len(pts)} points; best at >= 2x fewer MACs: "
              + (f"{best:.2f} % ({best - dense_acc:+.2f} pt)" if best is not None else "none"))
    series = [Series(m, [(r["macs"], r["acc"]) for r in rs]) for m, rs in rows.items() if rs]
    plot = pareto_plot(RESULTS / f"{args.name}.png", series, xlabel="MACs (millions, counted)",
                       ylabel="test accuracy (%) after fine-tuning", xscale=1e6,
                       dense=(dense_macs, dense_acc), logx=True,
                       title=f"digits CNN: {args.trials} NSGA-II trials vs uniform, "
                             f"{args.epochs} fine-tune epochs each")
    print(f"plot: {plot}")
    return summary


def _eager_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 15) -> float:
    from prunepass.backends.measure.measure import measure
    return measure("torch", model, (x,), repeats=repeats, number=1, warmup=3).median_ms


def part_latency(args: argparse.Namespace) -> list[dict]:
    import torchvision
    from prunepass.hardware import load_profile
    calibrated = str(RESULTS / "x86-epyc-calibrated-ort.yaml")
    rows = []
    print("\nlatency budgets: prune-channels<target-latency-ms=T,profile=P> (predicted by P)")
    print(f"{'model':14} {'profile':26} {'dense ms':>9} {'requested':>10} {'achieved':>9} "
          f"{'err %':>6} {'MACs x':>7} {'eager dense':>11} {'eager pruned':>12}")
    for name in args.latency_models.split(","):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        eager_dense = _eager_ms(model, x)
        for profile in ("x86-epyc", calibrated):
            label = load_profile(profile).name
            for req in ("0.5x", "0.7x"):
                res = prunepass.prune(model, (x,),
                                      f"prune-channels<target-latency-ms={req},profile={profile}>"
                                      ",dce", energy_profile=profile)
                b = res.record.step("remove-channels")["budget"]
                dense_ms = b["dense"]
                achieved = res.record.energy_after["latency_s"] * 1e3  # after dce too
                macs_x = res.record.cost_before["macs"] / res.record.cost_after["macs"]
                eager = _eager_ms(res.model, x)
                row = {"model": name, "profile": label, "latency_source":
                       res.record.energy_after["source"], "dense_ms": dense_ms,
                       "requested": req, "requested_ms": b["target"], "achieved_ms": achieved,
                       "error_pct": (achieved - b["target"]) / b["target"] * 100,
                       "macs_x": macs_x, "eager_dense_ms": eager_dense,
                       "eager_pruned_ms": eager}
                rows.append(row)
                print(f"{name:14} {label:26} {dense_ms:>9.3f} {b['target']:>10.3f} "
                      f"{achieved:>9.3f} {row['error_pct']:>6.2f} {macs_x:>7.2f} "
                      f"{eager_dense:>11.2f} {eager:>12.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=("digits", "latency", "all"))
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--population", type=int, default=24)
    ap.add_argument("--max-ratio", type=float, default=0.95,
                    help="largest per-group ratio the search and the allocation may use")
    ap.add_argument("--epochs", type=int, default=8, help="fine-tune epochs per final model")
    ap.add_argument("--dense-epochs", type=int, default=15)
    ap.add_argument("--ft-seeds", type=int, default=3,
                    help="fine-tuning runs (seeds) averaged per final model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default in memory)")
    ap.add_argument("--latency-models", default="resnet18,mobilenet_v2")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--name", default="search_digits",
                    help="results go to benchmarks/results/NAME.json and NAME.png")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    FT_SEEDS[:] = range(args.ft_seeds)
    t0 = time.perf_counter()
    out: dict = {"threads": args.threads}
    if args.part in ("digits", "all"):
        out["digits"] = part_digits(args)
    if args.part in ("latency", "all"):
        out["latency"] = part_latency(args)
    out["seconds"] = time.perf_counter() - t0
    previous = RESULTS / f"{args.name}.json"  # a part run alone keeps the other's numbers
    if args.part != "all" and previous.exists():
        out = {**json.loads(previous.read_text()), **out}
    print(f"\nresults: {write_json(f'{args.name}.json', out)} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
