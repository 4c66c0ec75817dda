"""Pruning a LLaMA-shaped model at LLM scale: time and peak memory.

Each shape runs in a fresh process: a random-initialised ``LlamaForCausalLM`` built in
place (no weights downloaded), traced and pruned in place at ``--ratio`` (exact groups
only: heads and MLP neurons; the hidden size, hence the embeddings and lm_head, is kept),
then one forward pass. Printed and written to JSON: wall time of each step, the model's
bytes before and after, and the process's peak resident memory (ru_maxrss, which counts
everything the process ever held: Python, torch, the model, the pruning).

    python benchmarks/llm_scale.py                       # 1.1b fp32 and 7b bf16
    python benchmarks/llm_scale.py --shapes 1.1b --ratio 0.3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, peak_rss_mb  # noqa: E402

SHAPES = {  # hidden, layers, query heads, key/value heads, intermediate, dtype
    "tiny": (256, 2, 8, 2, 688, "float32"),
    "1.1b": (2048, 22, 32, 4, 5632, "float32"),
    "7b": (4096, 32, 32, 8, 11008, "bfloat16"),
}


def run_one(shape: str, ratio: float, tokens: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import prunepass
    hidden, layers, heads, kv, inter, dtype = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv,
                      intermediate_size=inter, torch_dtype=dtype)
    rss_imports = peak_rss_mb()  # python, torch, transformers, prunepass: before any weight
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # random weights, filled in place
            p.normal_(0.0, 0.02, generator=gen)
        for name, b in model.named_buffers():
            if name.endswith("inv_freq"):  # rotary frequencies, as the model computes them
                b.copy_(1.0 / (cfg.rope_parameters["rope_theta"] ** (
                    torch.arange(0, b.numel() * 2, 2, dtype=torch.float32) / (b.numel() * 2))))
    model.eval()
    bytes_before = sum(p.numel() * p.element_size() for p in model.parameters())
    params_before = sum(p.numel() for p in model.parameters())
    t_build = time.perf_counter() - t0
    rss_built = peak_rss_mb()
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=gen)
    t0 = time.perf_counter()
    adapter = prunepass.load(model, {"input_ids": ids}, in_place=True)
    t_trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = prunepass.prune(adapter, pipeline=f"prune-channels<ratio={ratio},exact-only=true>,dce")
    t_prune = time.perf_counter() - t0
    pruned = res.model
    bytes_after = sum(p.numel() * p.element_size() for p in pruned.parameters())
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = pruned(input_ids=ids).logits
    t_forward = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {
        "shape": shape, "dtype": dtype, "ratio": ratio, "tokens": tokens,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "model_mb_before": bytes_before / 2**20, "model_mb_after": bytes_after / 2**20,
        "returned": res.record.output.get("returned"), "class": type(pruned).__name__,
        "reason": res.record.output.get("reason", ""),
        "peak_rss_mb": peak, "peak_rss_after_build_mb": rss_built,
        "peak_over_model": peak / (bytes_before / 2**20),
        "rss_after_imports_mb": rss_imports,
        "peak_less_imports_over_model": (peak - rss_imports) / (bytes_before / 2**20),
        "seconds": {"build": t_build, "trace": t_trace, "prune": t_prune,
                    "forward": t_forward},
        "logits_finite": bool(torch.isfinite(logits).all()),
        "macs_before": res.record.cost_before["macs"], "macs_after": res.record.cost_after["macs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1.1b,7b")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one shape, print JSON
    ap.add_argument("--out", default="llm_scale.json")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.ratio, a.tokens)))
        return
    rows = []
    for shape in a.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")
        proc = subprocess.run([sys.executable, __file__, "--one", shape, "--ratio",
                               str(a.ratio), "--tokens", str(a.tokens)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{shape}: failed")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        s = row["seconds"]
        print(f"{shape:5s} {row['dtype']:9s} model {row['model_mb_before']:8.0f} MB -> "
              f"{row['model_mb_after']:8.0f} MB  peak RSS {row['peak_rss_mb']:8.0f} MB "
              f"({row['peak_over_model']:.2f}x the model; "
              f"{row['peak_less_imports_over_model']:.2f}x less the imports)  build {s['build']:.0f} s, trace "
              f"{s['trace']:.0f} s, prune {s['prune']:.0f} s, forward {s['forward']:.1f} s  "
              f"[{row['returned']}: {row['class']}]", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / a.out
    out.write_text(json.dumps({
        "command": "python benchmarks/llm_scale.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": date.today().isoformat(), "measured": "wall time and ru_maxrss, here",
        "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
