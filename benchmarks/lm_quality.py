"""Quality of pruned language models: held-out perplexity before and after a short recovery
fine-tune, parameters, and latency per token, for each way of pruning.

The model is a LLaMA-style decoder (grouped-query attention, RMSNorm, SwiGLU; built from a
transformers config, about 6 M parameters) trained here, byte by byte, on the source of the
Python standard library of this machine (every 10th file held out). The trained weights
are cached under ~/.cache/prunepass/lm_quality. Each method is pruned to the same share of
all parameters removed (the ratio is bisected to within 1%, depth to the nearest layer),
then scored on the held-out bytes, fine-tuned for the same fixed number of steps and scored
again. Torch-Pruning 1.6.1 runs the settings of its examples/LLMs/prune_llm.py (group
magnitude importance, p=2, heads and hidden size at one ratio, round_to=4, lm_head kept).

    python benchmarks/lm_quality.py                      # about 45 minutes on 2 cores
    python benchmarks/lm_quality.py --quick              # a smoke run: minutes, no claims
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import signal
import statistics
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

import prunepass  # noqa: E402

SEQ = 256
CACHE = Path.home() / ".cache" / "prunepass" / "lm_quality"
KEEP = "ignore=[lm_head*,model.embed*]"


# -- data -----------------------------------------------------------------------------
def corpus(limit: int = 12_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the standard library's .py files, sorted by path; every 10th file is
    held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held, total = [], [], 0
    for i, path in enumerate(sorted(root.rglob("*.py"))):
        if "site-packages" in path.parts or "test" in path.parts[len(root.parts):][:1]:
            continue
        data = path.read_bytes()
        (held if i % 10 == 0 else train).append(data)
        total += len(data)
        if total >= limit:
            break
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)),  # noqa: E731
                                               dtype=torch.uint8).long()
    return as_tensor(train), as_tensor(held)


def windows(data: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(data) - SEQ - 1, n)
    return torch.stack([data[s:s + SEQ + 1] for s in starts])


def lm_loss(model: Any, batch: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
    logits = model(batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: Any, held: torch.Tensor, n: int = 96) -> float:  # noqa: ANN401
    model.eval()
    batch = windows(held, n, np.random.default_rng(1234))
    losses = [float(lm_loss(model, batch[i:i + 16])) for i in range(0, n, 16)]
    return math.exp(sum(losses) / len(losses))


def train(model: Any, data: torch.Tensor, steps: int | None, minutes: float | None,  # noqa: ANN401
          lr: float, seed: int, batch: int = 16) -> int:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    end = time.time() + 60 * minutes if minutes else math.inf
    done = 0
    while (steps is None or done < steps) and time.time() < end:
        loss = lm_loss(model, windows(data, batch, rng))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done += 1
    model.eval()
    return done


# -- the model --------------------------------------------------------------------------
def build(layers: int = 8, hidden: int = 256) -> Any:  # noqa: ANN401
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=688,
                                   num_hidden_layers=layers, num_attention_heads=8,
                                   num_key_value_heads=4, head_dim=32,
                                   max_position_embeddings=SEQ, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def trained(train_data: torch.Tensor, minutes: float, quick: bool) -> tuple[Any, dict]:  # noqa: ANN401
    model = build(layers=2, hidden=128) if quick else build()
    key = hashlib.sha256(f"{model.config.to_json_string()}{len(train_data)}{minutes}"
                         .encode()).hexdigest()[:16]
    path = CACHE / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        return model, saved["meta"]
    t0 = time.time()
    steps = train(model, train_data, None, minutes, lr=2e-3, seed=0)
    meta = {"train_steps": steps, "train_minutes": round((time.time() - t0) / 60, 1)}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "meta": meta}, path)
    return model, meta


def n_params(model: Any) -> int:  # noqa: ANN401
    return sum(p.numel() for p in model.parameters())


# -- methods ------------------------------------------------------------------------------
def bisect(make: Callable[[float], Any], dense: int, target: float, hi: float = 0.95  # noqa: ANN401
           ) -> tuple[Any, float]:
    """The pruned model whose share of parameters removed is closest to ``target``."""
    lo, best = 0.0, None
    for _ in range(12):
        mid = (lo + hi) / 2
        model = make(mid)
        removed = 1 - n_params(model) / dense
        if best is None or abs(removed - target) < abs(best[1] - target):
            best = (model, removed, mid)
        if abs(removed - target) < 0.005:
            break
        lo, hi = (mid, hi) if removed < target else (lo, mid)
    return best[0], best[2]


def prunepass_method(pipeline: str, needs_loss: bool = False) -> Callable:
    def run(adapter: Any, calib: torch.Tensor, ratio: float) -> Any:  # noqa: ANN401
        labels = calib[:, 1:]
        loss_fn = (lambda out: F.cross_entropy(out.logits.reshape(-1, 256),  # noqa: E731
                                               labels.reshape(-1))) if needs_loss else None
        res = prunepass.prune(adapter.clone(), (calib[:1, :-1],),
                              pipeline.format(ratio=ratio), calibration=(calib[:, :-1],),
                              loss_fn=loss_fn)
        return res.model
    return run


def torch_pruning(model: Any, calib: torch.Tensor, ratio: float) -> Any:  # noqa: ANN401
    import torch_pruning as tp
    model = copy.deepcopy(model)
    cfg = model.config
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    pruner = tp.pruner.BasePruner(
        model, example_inputs=calib[:1, :-1],
        importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio,
        ignored_layers=[model.lm_head], num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=ratio, round_to=4)
    for g in pruner.step(interactive=True):
        g.prune()
    # the attribute updates of its prune_llm.py
    cfg.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = (m.q_proj.out_features // m.head_dim) // max(
                    m.k_proj.out_features // m.head_dim, 1)
        elif name.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features
    return model


METHODS: dict[str, tuple[str, Any]] = {
    # name: (what it is, how to make it at a ratio)
    "channels-l2": ("prunepass, channels of every head and MLP neurons, l2",
                    prunepass_method(f"prune-channels<ratio={{ratio}},{KEEP}>,dce")),
    "heads-l2": ("prunepass, whole key/value groups and MLP neurons, l2",
                 prunepass_method(f"prune-channels<ratio={{ratio}},unit=heads,"
                                  f"uniform-layers=true,{KEEP}>,dce")),
    "heads-taylor": ("prunepass, heads + neurons, first-order Taylor",
                     prunepass_method(f"prune-channels<ratio={{ratio}},unit=heads,"
                                      f"importance=taylor,uniform-layers=true,{KEEP}>,dce",
                                      needs_loss=True)),
    "heads-activation": ("prunepass, heads + neurons, mean |activation|",
                         prunepass_method(f"prune-channels<ratio={{ratio}},unit=heads,"
                                          f"importance=activation,uniform-layers=true,"
                                          f"{KEEP}>,dce")),
    "heads-wanda": ("prunepass, heads + neurons, Wanda",
                    prunepass_method(f"prune-channels<ratio={{ratio}},unit=heads,"
                                     f"importance=wanda,uniform-layers=true,{KEEP}>,dce")),
    "heads-flap": ("prunepass, heads + neurons, FLAP fluctuation",
                   prunepass_method(f"prune-channels<ratio={{ratio}},unit=heads,"
                                    f"importance=flap,uniform-layers=true,{KEEP}>,dce")),
    "depth": ("prunepass remove-blocks, block influence (ShortGPT)", None),
    "torch-pruning": ("Torch-Pruning 1.6.1 examples/LLMs recipe", None),
}


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """TimeoutError after ``seconds`` of wall time (a pure-Python loop is interrupted)."""
    def fire(*_: Any) -> None:  # noqa: ANN401
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def latency_per_token(models: dict[str, Any], rounds: int) -> dict[str, dict]:  # noqa: ANN401
    """Forward of 128 tokens, divided by 128; variants alternate within each round."""
    ids = torch.randint(0, 256, (1, 128), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(ids)
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                for _ in range(3):
                    m(ids)
                times[k].append((time.perf_counter() - t0) / 3 / 128 * 1e3)
    return {k: {"median_ms": round(statistics.median(v), 4),
                "spread_ms": round(max(v) - min(v), 4)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-minutes", type=float, default=15.0)
    ap.add_argument("--recovery-steps", type=int, default=40)
    ap.add_argument("--targets", default="0.2,0.5", help="shares of parameters removed")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=7, help="latency rounds")
    ap.add_argument("--tp-seconds", type=int, default=300,
                    help="Torch-Pruning's time to build its groups before it is stopped")
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 minute of training")
    args = ap.parse_args()
    torch.set_num_threads(2)
    train_data, held = corpus(2_000_000 if args.quick else 12_000_000)
    model, meta = trained(train_data, 1.0 if args.quick else args.train_minutes, args.quick)
    dense = n_params(model)
    calib = windows(train_data, 32, np.random.default_rng(7))
    adapter = prunepass.load(model, (calib[:1, :-1],))
    rows = [{"method": "dense", "what": "the trained model", "target": 0.0,
             "params": dense, "removed": 0.0, "ppl": perplexity(model, held)}]
    recovered = copy.deepcopy(model)
    train(recovered, train_data, args.recovery_steps, None, lr=5e-4, seed=1, batch=8)
    rows[0]["ppl_recovered"] = perplexity(recovered, held)
    print(f"dense: {dense} parameters, {meta}, ppl {rows[0]['ppl']:.3f} "
          f"(after the recovery steps too: {rows[0]['ppl_recovered']:.3f})", flush=True)
    models = {"dense": model}
    layers = model.config.num_hidden_layers
    per_layer = n_params(model.model.layers[0])
    for target in (float(t) for t in args.targets.split(",")):
        for name in args.methods.split(","):
            what, make = METHODS[name]
            t0 = time.time()
            if name == "depth":
                k = min(layers - 1, max(1, round(target * dense / per_layer)))
                pruned = prunepass.prune(adapter.clone(), (calib[:1, :-1],),
                                         f"remove-blocks<count={k}>,dce",
                                         calibration=(calib[:, :-1],)).model
                setting = f"count={k}"
            elif name == "torch-pruning":
                try:
                    with deadline(args.tp_seconds):
                        pruned, r = bisect(lambda r: torch_pruning(model, calib, r), dense,
                                           target)
                except TimeoutError:
                    rows.append({"method": name, "what": what, "target": target,
                                 "failed": f"building its dependency graph did not finish in "
                                           f"{args.tp_seconds} s"})
                    print(f"{target:.0%} {name}: {rows[-1]['failed']}", flush=True)
                    continue
                setting = f"ratio={r:.3f}"
            else:
                pruned, r = bisect(lambda r: make(adapter, calib, r), dense, target)
                setting = f"ratio={r:.3f}"
            row = {"method": name, "what": what, "target": target, "setting": setting,
                   "params": n_params(pruned), "removed": 1 - n_params(pruned) / dense,
                   "ppl": perplexity(pruned, held)}
            train(pruned, train_data, args.recovery_steps, None, lr=5e-4, seed=1, batch=8)
            row["ppl_recovered"] = perplexity(pruned, held)
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            models[f"{name}@{target}"] = pruned
            print(f"{target:.0%} {name:18s} {setting:12s} removed {row['removed']:.3f} "
                  f"ppl {row['ppl']:8.3f} -> {row['ppl_recovered']:7.3f}  "
                  f"({row['seconds']} s)", flush=True)
    lat = latency_per_token(models, args.rounds)
    for r in rows:
        key = "dense" if r["method"] == "dense" else f"{r['method']}@{r['target']}"
        r["latency_per_token"] = lat.get(key)
    rows_ok = [r for r in rows if "failed" not in r]
    out = {"command": "python benchmarks/lm_quality.py" + (" --quick" if args.quick else ""),
           "model": {"config": "LlamaConfig(vocab 256, hidden 256, intermediate 688, 8 "
                               "layers, 8 heads, 4 key/value heads, head_dim 32)",
                     "params": dense, **meta},
           "data": {"train_bytes": len(train_data), "held_out_bytes": len(held),
                    "source": "Python standard library .py files, every 10th held out"},
           "recovery": {"steps": args.recovery_steps, "batch": 8, "seq": SEQ, "lr": 5e-4},
           "latency": "torch, 2 threads, forward of 128 tokens / 128, measured; "
                      f"{args.rounds} alternating rounds, median and max-min spread",
           "rows": rows}
    if not args.quick:
        print(f"written {write_json('lm_quality', out)}")
    for r in rows_ok:
        lt = r["latency_per_token"] or {}
        print(f"{r['method']:16s} {r['target']:4.0%} params {r['params']:9d} "
              f"({r['removed']:.1%} removed) ppl {r['ppl']:8.3f} recovered "
              f"{r['ppl_recovered']:7.3f} latency/token {lt.get('median_ms', float('nan')):.4f}"
              f" ms")


if __name__ == "__main__":
    main()
