"""The end-to-end demo: ``prunepass demo``.

1. A small CNN trained on scikit-learn's digits (8x8 images, 10 classes), pruned at 0.5
   with Taylor importance, fine-tuned a few epochs: accuracy dense / pruned / fine-tuned
   and MACs (counted).
2. torchvision's resnet18 (random weights: nothing is downloaded) pruned at 0.5: the
   report, and a check that the pruned model equals the masked original.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x))) + x  # a residual: couples conv2 and conv3
        x = torch.flatten(x, 1)  # C*H*W: pruning a channel removes 16 fc1 inputs
        return self.fc2(F.relu(self.fc1(x)))


def digits_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    from prunepass.errors import need
    need("sklearn", "demo", "the demo (it trains on scikit-learn's digits)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3,
          desc: str = "train", seed: int = 0) -> None:
    from prunepass.progress import bar
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in bar(range(epochs), desc=desc, unit="epoch", leave=False):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean()) * 100


def digits_demo(quick: bool = False) -> dict:
    import prunepass
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits_data()
    epochs, ft = (4, 2) if quick else (15, 5)
    model = DigitsCNN(16 if quick else 32)
    train(model, xtr, ytr, epochs, desc="train dense")
    dense_acc = accuracy(model, xte, yte)
    result = prunepass.prune(
        model, (xte[:8],), "prune-channels<ratio=0.5,importance=taylor>,dce",
        calibration=(xtr[:256],), loss_fn=lambda out: F.cross_entropy(out, ytr[:256]))
    pruned = result.model
    pruned_acc = accuracy(pruned, xte, yte)
    train(pruned, xtr, ytr, ft, lr=1e-3, desc="fine-tune")
    tuned_acc = accuracy(pruned, xte, yte)
    rec = result.record
    return {"dense_acc": dense_acc, "pruned_acc": pruned_acc, "finetuned_acc": tuned_acc,
            "macs_before": rec.cost_before["macs"], "macs_after": rec.cost_after["macs"],
            "params_before": rec.cost_before["params"], "params_after": rec.cost_after["params"],
            "finetune_epochs": ft, "train_epochs": epochs}


def torchvision_demo(name: str = "resnet18") -> tuple[str, float]:
    import torchvision

    import prunepass
    from prunepass.report import format_record
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    result = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    err = result.record.step("remove-channels").get("max_rel_error_vs_masked", float("nan"))
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    return format_record(result.record, top_layers=5), err


def latency_demo(name: str = "mobilenet_v2", ratio: float = 0.3, threads: int = 2,
                 rounds: int = 5) -> list[dict]:
    """Dense vs uniform vs hardware-rounded pruning of a torchvision model in onnxruntime,
    timed in alternating rounds in this process; MACs counted, energy modelled."""
    import tempfile
    from pathlib import Path

    import torchvision

    import prunepass
    from prunepass.backends.measure.alternate import Spread, alternate, speedup
    from prunepass.backends.measure.measure import runner
    from prunepass.backends.measure.torch_export import export_onnx
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    pipelines = {"uniform": f"prune-channels<ratio={ratio}>,dce",
                 "hw-round": f"prune-channels<ratio={ratio},hw-round=ort,"
                             f"hw-threads={threads}>,dce"}
    variants = {"dense": prunepass.prune(model, (x,), "dce", energy_profile="x86-epyc")}
    for key, pipeline in pipelines.items():
        variants[key] = prunepass.prune(model, (x,), pipeline, energy_profile="x86-epyc")
    with tempfile.TemporaryDirectory(prefix="prunepass-demo-") as tmp:
        runners = {k: runner("ort", export_onnx(r.model, (x,), Path(tmp) / f"{k}.onnx"), (x,),
                             threads=threads) for k, r in variants.items()}
        rounds = alternate(runners, rounds=rounds, repeats=5, number=1)
    rows = []
    for k, r in variants.items():
        rec = r.record
        rows.append({"variant": k, "macs": rec.cost_after["macs"],
                     "energy_mj": rec.energy_after["total"] / 1e9,
                     "latency_ms": Spread.of(rounds[k]).median,
                     "speedup": speedup(rounds["dense"], rounds[k]).median})
    return rows


def main(quick: bool = False) -> int:
    t0 = time.perf_counter()
    print("== 1. digits CNN (scikit-learn digits, 8x8): train, prune 0.5 (Taylor), fine-tune")
    r = digits_demo(quick)
    print(f"  accuracy dense            {r['dense_acc']:6.2f}%   ({r['train_epochs']} epochs)")
    print(f"  accuracy pruned           {r['pruned_acc']:6.2f}%   (no retraining)")
    print(f"  accuracy after fine-tune  {r['finetuned_acc']:6.2f}%   "
          f"({r['finetune_epochs']} epochs)")
    print(f"  MACs   {r['macs_before'] / 1e6:8.2f} M -> {r['macs_after'] / 1e6:8.2f} M "
          f"({r['macs_before'] / r['macs_after']:.2f}x fewer, counted)")
    print(f"  params {r['params_before'] / 1e3:8.1f} k -> {r['params_after'] / 1e3:8.1f} k")
    print("\n== 2. torchvision resnet18 (random weights), prune 0.5")
    table, err = torchvision_demo()
    print(table)
    print(f"  pruned model vs masked original: max relative error {err:.1e} (measured)")
    if not quick:
        print("\n== 3. mobilenet_v2 pruned 0.3 in onnxruntime (2 threads): fewer MACs is not "
              "less time\n  (hw-round times each group's layers here at counts near the "
              "requested one, the first run measures them: half a minute here; then the\n"
              "  model with the snapped counts against the counts as asked, and keeps the "
              "faster)")
        print(f"  {'variant':10} {'MACs':>10} {'latency ms':>11} {'speedup':>8} "
              f"{'energy mJ':>10}")
        for row in latency_demo():
            print(f"  {row['variant']:10} {row['macs'] / 1e6:>8.1f} M {row['latency_ms']:>11.2f} "
                  f"{row['speedup']:>7.2f}x {row['energy_mj']:>10.2f}")
        print("  MACs counted; latency measured here (median of alternating rounds); energy "
              "modelled (x86-epyc profile: no energy meter on this machine)")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    return 0
