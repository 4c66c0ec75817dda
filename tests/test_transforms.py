"""fold-bn, dce and mask, each checked numerically against the input model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torchvision

import prunepass
from prunepass.frontends.torch import TorchModel
from prunepass.ir import ops
from prunepass.testing import randomize
from tests.rule_models import ConvBnRelu


def test_fold_bn_keeps_outputs_and_removes_batch_norms():
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18().eval())
    x = torch.randn(2, 3, 64, 64)
    res = prunepass.prune(model, (x,), "fold-bn")
    assert not any(n.op == ops.BATCHNORM for n in res.adapter.graph.nodes)
    assert len(res.record.passes[0]["changes"]["folded"]) == 20
    with torch.no_grad():
        np.testing.assert_allclose(res.model(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert "conv1.bias" in dict(res.model.named_parameters())  # a bias was created


def test_fold_then_prune_equals_masked():
    torch.manual_seed(0)
    model = randomize(ConvBnRelu().eval())
    res = prunepass.prune(model, (torch.randn(2, 3, 8, 8),), "fold-bn,prune-channels<ratio=0.5>",
                          check_numerics=True)
    assert res.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5


def test_dce_removes_an_unused_branch_and_its_weights():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            self.unused(x)  # computed, never used
            return self.used(x)

    x = torch.randn(2, 4)
    model = Dead().eval()
    res = prunepass.prune(model, (x,), "dce")
    assert res.record.passes[0]["changes"]["removed_nodes"] >= 1
    graph = res.adapter.materialize()
    assert "unused.weight" not in dict(graph.named_parameters())
    # the user's own class still runs its forward, which computes the dead branch: said
    assert "unused.weight" in dict(res.model.named_parameters())
    assert any("unused.weight" in n for n in res.record.output["notes"])
    with torch.no_grad():
        assert torch.equal(graph(x), model(x)) and torch.equal(res.model(x), model(x))


def test_mask_keeps_shapes_and_zeroes_channels():
    torch.manual_seed(0)
    model = randomize(ConvBnRelu().eval())
    x = torch.randn(2, 3, 8, 8)
    masked = prunepass.prune(model, (x,), "mask<ratio=0.5>")
    pruned = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>")
    assert masked.record.cost_after["params"] == masked.record.cost_before["params"]
    with torch.no_grad():
        m, p = masked.model(x), pruned.model(x)
    assert m.shape == (2, 8, 8, 8) and p.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(m.numpy(), p.numpy(), rtol=1e-5, atol=1e-6)
    a = TorchModel.from_module(model, (x,))
    before = len(a.graph.nodes)
    assert len(masked.adapter.graph.nodes) > before  # the masks are real multiplies


def test_two_mask_passes_compose():
    torch.manual_seed(0)
    model = randomize(ConvBnRelu().eval())
    x = torch.randn(2, 3, 8, 8)
    twice = prunepass.prune(model, (x,), "mask<ratio=0.25>,mask<ratio=0.25,importance=random>")
    once = prunepass.prune(model, (x,), "mask<ratio=0.25>")
    with torch.no_grad():
        a, b = twice.model(x), once.model(x)
    assert not torch.allclose(a, b)  # the second mask zeroes more channels
    mask_op = "aten.where.ScalarOther"  # the torch adapter masks with where(mask, x, 0)
    n_masks = sum(1 for n in twice.adapter.graph.nodes if n.target == mask_op)
    assert n_masks > sum(1 for n in once.adapter.graph.nodes if n.target == mask_op)
