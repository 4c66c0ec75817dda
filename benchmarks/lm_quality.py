"""Quality of pruned transformers: held-out quality before and after a short recovery
fine-tune, parameters, and latency per token, for each way of pruning.

--task lm (default): a LLaMA-style decoder (grouped-query attention, RMSNorm, SwiGLU; built
from a transformers config, about 6 M parameters) trained here, byte by byte, on the source
of the Python standard library of this machine (every 10th file held out); quality is the
held-out perplexity (lower is better).
--task encoder: a BERT-style encoder (4 layers) trained here for 2 minutes (short on
purpose: trained longer it is right on every held-out sequence, and so is every pruned
model) to tell whether token 1 or token 2 occurs more often in 48 random tokens; quality is
the accuracy in % on 4096 held-out sequences (higher is better).

Trained weights are cached under ~/.cache/prunepass/lm_quality. Each method is pruned to
the same share of all parameters removed (the ratio is bisected to within 1%, depth to the
nearest layer), scored, fine-tuned for the same fixed number of steps and scored again.
Torch-Pruning 1.6.1 runs the settings of its examples/LLMs/prune_llm.py (group magnitude
importance, p=2, heads and hidden size at one ratio, round_to=4, the output layer kept).

    python benchmarks/lm_quality.py                      # about 45 minutes on 2 cores
    python benchmarks/lm_quality.py --task encoder       # about 10 minutes
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

import prunepass  # noqa: E402

CACHE = Path.home() / ".cache" / "prunepass" / "lm_quality"


@dataclass
class Task:
    """What the comparison needs to know of a model and its data."""
    name: str
    quality_name: str  # "ppl" or "accuracy"
    higher_is_better: bool
    model: Any
    meta: dict
    calib: Any  # a calibration batch (model inputs)
    example: Any  # one sample of it
    keep: str  # the ignore option: what no method prunes
    sample: Callable[[np.random.Generator, int], tuple[Any, Any]]  # (inputs, labels)
    loss: Callable[[Any, Any], torch.Tensor]  # (model outputs, labels) -> loss
    quality: Callable[[Any], float]
    calib_labels: Any
    layers: Any  # the ModuleList of blocks
    config: str
    recovery_lr: float = 5e-4
    recovery_batch: int = 8


def train(model: Any, task: Task, steps: int | None, minutes: float | None, lr: float,  # noqa: ANN401
          seed: int, batch: int) -> int:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    end = time.time() + 60 * minutes if minutes else math.inf
    done = 0
    while (steps is None or done < steps) and time.time() < end:
        x, y = task.sample(rng, batch)
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done += 1
    model.eval()
    return done


def cached_training(model: Any, key: str, fit: Callable[[], dict]) -> dict:  # noqa: ANN401
    path = CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        return saved["meta"]
    meta = fit()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "meta": meta}, path)
    return meta


# -- the language model -----------------------------------------------------------------
SEQ = 256


def corpus(limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the standard library's .py files, sorted by path; every 10th file is
    held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train_parts, held_parts, total = [], [], 0
    for i, path in enumerate(sorted(root.rglob("*.py"))):
        if "site-packages" in path.parts or "test" in path.parts[len(root.parts):][:1]:
            continue
        data = path.read_bytes()
        (held_parts if i % 10 == 0 else train_parts).append(data)
        total += len(data)
        if total >= limit:
            break
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"".join(parts)),  # noqa: E731
                                               dtype=torch.uint8).long()
    return as_tensor(train_parts), as_tensor(held_parts)


def windows(data: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(data) - SEQ - 1, n)
    return torch.stack([data[s:s + SEQ + 1] for s in starts])


def lm_task(minutes: float, quick: bool) -> Task:
    import transformers
    train_data, held = corpus(2_000_000 if quick else 12_000_000)
    hidden, layers = (128, 2) if quick else (256, 8)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=hidden,
                                   intermediate_size=hidden * 43 // 16,
                                   num_hidden_layers=layers, num_attention_heads=8,
                                   num_key_value_heads=4, head_dim=hidden // 8,
                                   max_position_embeddings=SEQ, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()

    def sample(rng: np.random.Generator, n: int) -> tuple[Any, Any]:
        w = windows(train_data, n, rng)
        return w[:, :-1], w[:, 1:]

    def loss(out: Any, y: Any) -> torch.Tensor:  # noqa: ANN401
        return F.cross_entropy(out.logits.reshape(-1, 256), y.reshape(-1))

    @torch.no_grad()
    def quality(m: Any) -> float:  # noqa: ANN401
        m.eval()
        w = windows(held, 96, np.random.default_rng(1234))
        losses = [float(loss(m(w[i:i + 16, :-1]), w[i:i + 16, 1:])) for i in range(0, 96, 16)]
        return math.exp(sum(losses) / len(losses))
    task = Task("lm", "ppl", False, model, {}, None, None, "ignore=[lm_head*,model.embed*]",
                sample, loss, quality, None, model.model.layers,
                f"LlamaConfig(vocab 256, hidden {hidden}, intermediate {cfg.intermediate_size}"
                f", {layers} layers, 8 heads, 4 key/value heads, head_dim {hidden // 8})")
    task.meta = cached_training(model, f"{cfg.to_json_string()}{len(train_data)}{minutes}",
                                lambda: _fit(task, minutes, lr=2e-3, batch=16))
    task.meta.update(train_bytes=len(train_data), held_out_bytes=len(held),
                     data="Python standard library .py files, every 10th held out")
    calib = windows(train_data, 32, np.random.default_rng(7))
    task.calib, task.calib_labels, task.example = calib[:, :-1], calib[:, 1:], calib[:1, :-1]
    return task


def _fit(task: Task, minutes: float, lr: float, batch: int) -> dict:
    t0 = time.time()
    steps = train(task.model, task, None, minutes, lr=lr, seed=0, batch=batch)
    return {"train_steps": steps, "train_minutes": round((time.time() - t0) / 60, 1)}


# -- the encoder --------------------------------------------------------------------------
def counting(rng: np.random.Generator, n: int, length: int = 48) -> tuple[Any, Any]:
    """Random tokens 3..63 with token 1 and token 2 sprinkled in unequal numbers; the label
    says which is more frequent."""
    x = rng.integers(3, 64, (n, length))
    a = rng.integers(1, 9, n)
    b = np.where(rng.random(n) < 0.5, a + rng.integers(1, 4, n), a - rng.integers(1, 4, n))
    b = np.clip(b, 0, None)
    b = np.where(b == a, a + 1, b)
    for i in range(n):
        pos = rng.permutation(length - 1)[:a[i] + b[i]] + 1
        x[i, pos[:a[i]]] = 1
        x[i, pos[a[i]:]] = 2
    x[:, 0] = 0  # the class token
    return torch.from_numpy(x), torch.from_numpy((a > b).astype(np.int64))


def encoder_task(minutes: float, quick: bool) -> Task:
    import transformers
    layers = 2 if quick else 4
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=128, num_hidden_layers=layers,
                                  num_attention_heads=8, intermediate_size=512,
                                  max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    held_x, held_y = counting(np.random.default_rng(99), 4096)

    def loss(out: Any, y: Any) -> torch.Tensor:  # noqa: ANN401
        return F.cross_entropy(out.logits, y)

    @torch.no_grad()
    def quality(m: Any) -> float:  # noqa: ANN401
        m.eval()
        hits = sum(int((m(held_x[i:i + 512]).logits.argmax(-1) == held_y[i:i + 512]).sum())
                   for i in range(0, 4096, 512))
        return 100.0 * hits / 4096
    task = Task("encoder", "accuracy", True, model, {}, None, None,
                "ignore=[classifier*,bert.embeddings*,bert.pooler*]", counting, loss, quality,
                None, model.bert.encoder.layer,
                f"BertConfig(vocab 64, hidden 128, intermediate 512, {layers} layers, 8 heads)",
                recovery_lr=1e-4, recovery_batch=32)
    task.meta = cached_training(model, f"enc{cfg.to_json_string()}{minutes}",
                                lambda: _fit(task, minutes, lr=5e-4, batch=64))
    task.meta.update(data="generated: is token 1 or token 2 more frequent in 48 random "
                          "tokens; 4096 held out")
    x, y = counting(np.random.default_rng(7), 64)
    task.calib, task.calib_labels, task.example = x, y, x[:1]
    return task


# -- methods ------------------------------------------------------------------------------
def n_params(model: Any) -> int:  # noqa: ANN401
    return sum(p.numel() for p in model.parameters())


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


def prunepass_method(opts: str, needs_loss: bool = False) -> Callable:
    def run(task: Task, adapter: Any, ratio: float) -> Any:  # noqa: ANN401
        labels = task.calib_labels
        loss_fn = (lambda out: task.loss(out, labels)) if needs_loss else None  # noqa: E731
        res = prunepass.prune(adapter.clone(), (task.example,),
                              f"prune-channels<ratio={ratio},{opts},{task.keep}>,dce",
                              calibration=(task.calib,), loss_fn=loss_fn)
        return res.model
    return run


def torch_pruning(task: Task, ratio: float) -> Any:  # noqa: ANN401
    """Torch-Pruning 1.6.1, as its examples/LLMs/prune_llm.py sets it up."""
    import torch_pruning as tp
    model = copy.deepcopy(task.model)
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):  # LLaMA
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
        elif name.endswith("attention.self"):  # BERT
            for p in (m.query, m.key, m.value):
                num_heads[p] = model.config.num_attention_heads
    out_layer = model.lm_head if task.name == "lm" else model.classifier
    pruner = tp.pruner.BasePruner(
        model, example_inputs=task.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio,
        ignored_layers=[out_layer], num_heads=num_heads, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=ratio, round_to=4)
    for g in pruner.step(interactive=True):
        g.prune()
    for name, m in model.named_modules():  # the attribute updates of its prune_llm.py
        if name.endswith("self_attn") and hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = (m.q_proj.out_features // m.head_dim) // max(
                m.k_proj.out_features // m.head_dim, 1)
    return model


METHODS: dict[str, tuple[str, Any]] = {
    # name: (what it is, how to make it at a ratio)
    "channels-l2": ("prunepass, channels of every head and MLP neurons, l2",
                    prunepass_method("importance=l2")),
    "heads-l2": ("prunepass, whole heads (key/value groups) and MLP neurons, l2",
                 prunepass_method("unit=heads,uniform-layers=true")),
    "heads-taylor": ("prunepass, heads + neurons, first-order Taylor",
                     prunepass_method("unit=heads,importance=taylor,uniform-layers=true",
                                      needs_loss=True)),
    "heads-activation": ("prunepass, heads + neurons, mean |activation|",
                         prunepass_method("unit=heads,importance=activation,"
                                          "uniform-layers=true")),
    "heads-wanda": ("prunepass, heads + neurons, Wanda",
                    prunepass_method("unit=heads,importance=wanda,uniform-layers=true")),
    "heads-flap": ("prunepass, heads + neurons, FLAP fluctuation",
                   prunepass_method("unit=heads,importance=flap,uniform-layers=true")),
    "depth": ("prunepass remove-blocks, block influence (ShortGPT)", None),
    "torch-pruning": ("Torch-Pruning 1.6.1, its examples/LLMs recipe", None),
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


def latency_per_token(models: dict[str, Any], example: Any, rounds: int) -> dict[str, dict]:  # noqa: ANN401
    """A forward of ``example`` (one sequence) divided by its length; the variants
    alternate within each round."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(example)
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                for _ in range(3):
                    m(example)
                times[k].append((time.perf_counter() - t0) / 3 / example.shape[1] * 1e3)
    return {k: {"median_ms": round(statistics.median(v), 4),
                "spread_ms": round(max(v) - min(v), 4)} for k, v in times.items()}


def compare(task: Task, args: argparse.Namespace) -> list[dict]:
    q = task.quality_name
    dense = n_params(task.model)
    adapter = prunepass.load(task.model, (task.example,))
    rows = [{"method": "dense", "what": "the trained model", "target": 0.0, "params": dense,
             "removed": 0.0, q: task.quality(task.model)}]
    again = copy.deepcopy(task.model)
    lr, batch = args.recovery_lr or task.recovery_lr, task.recovery_batch
    train(again, task, args.recovery_steps, None, lr=lr, seed=1, batch=batch)
    rows[0][f"{q}_recovered"] = task.quality(again)
    print(f"dense: {dense} parameters, {task.meta}, {q} {rows[0][q]:.3f} (after the "
          f"recovery steps too: {rows[0][q + '_recovered']:.3f})", flush=True)
    models = {"dense": task.model}
    per_layer = n_params(task.layers[0])
    for target in (float(t) for t in args.targets.split(",")):
        for name in args.methods.split(","):
            what, make = METHODS[name]
            t0 = time.time()
            try:
                if name == "depth":
                    k = min(len(task.layers) - 1, max(1, round(target * dense / per_layer)))
                    pruned = prunepass.prune(adapter.clone(), (task.example,),
                                             f"remove-blocks<count={k}>,dce",
                                             calibration=(task.calib,)).model
                    setting = f"count={k}"
                elif name == "torch-pruning":
                    with deadline(args.tp_seconds):
                        pruned, r = bisect(lambda r: torch_pruning(task, r), dense, target)
                    setting = f"ratio={r:.3f}"
                else:
                    pruned, r = bisect(lambda r: make(task, adapter, r), dense, target)
                    setting = f"ratio={r:.3f}"
            except TimeoutError:
                rows.append({"method": name, "what": what, "target": target,
                             "failed": f"did not finish in {args.tp_seconds} s (building its "
                                       "dependency graph)"})
                print(f"{target:.0%} {name}: {rows[-1]['failed']}", flush=True)
                continue
            except Exception as e:  # an outside tool failing is a result, not a crash
                rows.append({"method": name, "what": what, "target": target,
                             "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                print(f"{target:.0%} {name}: {rows[-1]['failed']}", flush=True)
                continue
            row = {"method": name, "what": what, "target": target, "setting": setting,
                   "params": n_params(pruned), "removed": 1 - n_params(pruned) / dense,
                   q: task.quality(pruned)}
            train(pruned, task, args.recovery_steps, None, lr=lr, seed=1, batch=batch)
            row[f"{q}_recovered"] = task.quality(pruned)
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            models[f"{name}@{target}"] = pruned
            print(f"{target:.0%} {name:18s} {setting:12s} removed {row['removed']:.3f} "
                  f"{q} {row[q]:8.3f} -> {row[q + '_recovered']:8.3f}  ({row['seconds']} s)",
                  flush=True)
    lat = latency_per_token(models, task.calib[:1, :128], args.rounds)
    for r in rows:
        key = "dense" if r["method"] == "dense" else f"{r['method']}@{r['target']}"
        r["latency_per_token"] = lat.get(key)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=("lm", "encoder"), default="lm")
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="training time of the dense model (default: lm 15, encoder 2)")
    ap.add_argument("--recovery-steps", type=int, default=40)
    ap.add_argument("--recovery-lr", type=float, default=None,
                    help="default: lm 5e-4 (batch 8), encoder 1e-4 (batch 32)")
    ap.add_argument("--targets", default="0.2,0.5", help="shares of parameters removed")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=7, help="latency rounds")
    ap.add_argument("--tp-seconds", type=int, default=300,
                    help="Torch-Pruning's time for one prune before it is stopped")
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 minute of training")
    args = ap.parse_args()
    torch.set_num_threads(2)
    minutes = 1.0 if args.quick else args.train_minutes or (15.0 if args.task == "lm" else 2.0)
    task = (lm_task if args.task == "lm" else encoder_task)(minutes, args.quick)
    rows = compare(task, args)
    q = task.quality_name
    command = f"python benchmarks/lm_quality.py --task {args.task}" + \
        (" --quick" if args.quick else "")
    out = {"command": command, "task": args.task, "quality": q,
           "higher_is_better": task.higher_is_better,
           "model": {"config": task.config, "params": rows[0]["params"], **task.meta},
           "recovery": {"steps": args.recovery_steps, "batch": task.recovery_batch,
                        "lr": args.recovery_lr or task.recovery_lr},
           "latency": "torch, 2 threads, forward of one 128-token sequence (encoder: 48) / "
                      f"its length, measured; {args.rounds} alternating rounds, median and "
                      "max-min spread", "rows": rows}
    if not args.quick:
        print(f"written {write_json(f'{args.task}_quality.json', out)}")
    for r in rows:
        if "failed" in r:
            print(f"{r['method']:16s} {r['target']:4.0%} failed: {r['failed']}")
            continue
        lt = r["latency_per_token"] or {}
        print(f"{r['method']:16s} {r['target']:4.0%} params {r['params']:9d} "
              f"({r['removed']:.1%} removed) {q} {r[q]:8.3f} recovered {r[q + '_recovered']:8.3f}"
              f" latency/token {lt.get('median_ms', float('nan')):.4f} ms")


if __name__ == "__main__":
    main()
