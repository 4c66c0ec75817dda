"""A ready-made search target for the command line: the demo's digits CNN, trained on first
use (one thread, about ten seconds), with its evaluation and fine-tuning functions::

    prunepass search prunepass.search.digits:model \\
        --evaluate prunepass.search.digits:evaluate \\
        --finetune prunepass.search.digits:finetune --trials 40 --out search-out

``evaluate`` scores held-out validation digits (not the test split), as a search should."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from prunepass.demo import DigitsCNN, accuracy, digits_data, train


@lru_cache(maxsize=1)
def _data() -> tuple[torch.Tensor, ...]:
    xtr, ytr, xte, yte = digits_data()
    n_val = len(xtr) // 5
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))
    return xtr[perm[n_val:]], ytr[perm[n_val:]], xtr[perm[:n_val]], ytr[perm[:n_val]], xte, yte


@lru_cache(maxsize=1)
def _trained(width: int = 32, epochs: int = 15) -> DigitsCNN:
    xtr, ytr = _data()[:2]
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than two on a shared machine
    try:
        m = DigitsCNN(width)
        train(m, xtr, ytr, epochs, desc="train digits CNN")
    finally:
        torch.set_num_threads(threads)
    return m


def model() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    """(trained digits CNN, one example input): a ``package.module:factory`` model spec."""
    return _trained(), (_data()[4][:1],)


def evaluate(module: Any) -> float:
    """Validation accuracy in %."""
    xval, yval = _data()[2:4]
    return accuracy(module, xval, yval)


def held_out_accuracy(module: Any) -> float:
    """Accuracy on the held-out test split, in %: for final numbers only."""
    xte, yte = _data()[4:]
    return accuracy(module, xte, yte)


def finetune(module: Any, epochs: int) -> None:
    """The default classification loop on the training split (Adam, lr 1e-3)."""
    from prunepass.search.recovery import classification_trainer
    xtr, ytr = _data()[:2]
    classification_trainer((xtr, ytr), lr=1e-3, progress=False)(module, epochs)
