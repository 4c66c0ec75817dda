"""The demo's digits part: train, prune, fine-tune (quick settings)."""
from __future__ import annotations

from prunepass.demo import digits_demo


def test_digits_prune_and_finetune_recovers_accuracy():
    r = digits_demo(quick=True)
    assert r["dense_acc"] > 90
    assert r["macs_after"] < 0.35 * r["macs_before"]
    assert r["finetuned_acc"] > 85
    assert r["finetuned_acc"] >= r["pruned_acc"] - 1
