"""prune-channels options: ratio, round-to, min-channels, ignore, global scope."""
from __future__ import annotations

import numpy as np
import torch
import torchvision

from prunepass.testing import randomize
from tests.conftest import Pruned

X = (torch.randn(1, 3, 64, 64),)


def resnet():
    torch.manual_seed(0)
    return randomize(torchvision.models.resnet18().eval())


def kept(p: Pruned) -> dict[str, int]:
    return {g["name"]: g["kept"] for g in p.groups}


def test_local_ratio_and_round_to():
    p = Pruned(resnet(), X, ratio=0.3)
    sizes = {g["name"]: g["channels"] for g in p.groups}
    for name, k in kept(p).items():
        if name.startswith("fc."):
            continue  # the classifier's outputs are the model's outputs: pinned
        assert k == sizes[name] - round(0.3 * sizes[name])
    r = Pruned(resnet(), X, ratio=0.3, round_to=16)
    assert all(k % 16 == 0 for n, k in kept(r).items() if not n.startswith("fc."))


def test_min_channels_and_ignore():
    p = Pruned(resnet(), X, ratio=0.9, min_channels=20)
    assert min(kept(p).values()) >= 20
    q = Pruned(resnet(), X, ratio=0.5, ignore=["layer4*"])
    for g in q.groups:
        if any(pp.startswith("layer4") for pp in g["producers"]):
            assert g["kept"] == g["channels"], g["name"]
    assert any(g["kept"] < g["channels"] for g in q.groups)


def test_global_scope_removes_the_total_and_respects_max_ratio():
    p = Pruned(resnet(), X, ratio=0.4, scope="global", max_ratio=0.7)
    eligible = [g for g in p.groups if g["prunable"]]
    total = sum(g["channels"] for g in eligible)
    removed = sum(g["channels"] - g["kept"] for g in eligible)
    assert abs(removed - round(0.4 * total)) <= 1
    assert all(g["kept"] >= g["channels"] - int(0.7 * g["channels"]) for g in eligible)
    local = Pruned(resnet(), X, ratio=0.4)
    # global ranking spreads the cut unevenly across groups, local does not
    fracs = [1 - g["kept"] / g["channels"] for g in eligible]
    assert np.std(fracs) > 0.02
    assert np.std([1 - g["kept"] / g["channels"] for g in local.groups if g["prunable"]
                   and g["kept"] < g["channels"]]) < 0.01
