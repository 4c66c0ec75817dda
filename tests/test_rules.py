"""Every channel rule, checked numerically: pruning nothing changes nothing (bit-exact);
pruning equals zeroing the same channels in the original (masking every tensor of the
group); zeroing other channels (a shifted negative control) does not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prunepass.testing import randomize
from tests.conftest import Pruned, relative_error
from tests.rule_models import EXACT_CASES, GroupNormNet, LayerNormMLP, Unknown


def build(case: str):
    cls, make_inputs = EXACT_CASES[case]
    torch.manual_seed(0)
    return randomize(cls(), seed=1).eval(), make_inputs()


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_ratio_zero_is_bit_exact(case):
    model, inputs = build(case)
    p = Pruned(model, inputs, ratio=0.0)
    assert p.keep == {}
    out = p.pruned().run()
    for a, b in zip(out, p.original):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_pruning_equals_zeroing(case):
    model, inputs = build(case)
    p = Pruned(model, inputs, ratio=0.5)
    assert p.removed.sum() > 0, "the case must prune something"
    assert all(g["exact"] for g in p.groups if g["kept"] < g["channels"])
    pruned = p.pruned()
    masked = p.masked()
    err = relative_error(pruned.run(), masked)
    assert err <= 1e-5, f"{case}: pruned differs from masked by {err:.2e}"
    # the pruned model really is smaller
    before = sum(v.numel for v in p.adapter.graph.params())
    after = sum(v.numel for v in pruned.graph.params())
    assert after < before


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_shifted_mask_is_a_failing_control(case):
    model, inputs = build(case)
    p = Pruned(model, inputs, ratio=0.5)
    err = relative_error(p.pruned().run(), p.masked(p.shifted_keep()))
    assert err > 1e-3, f"{case}: the negative control passed ({err:.2e}): the test is blind"


def _group_of(p: Pruned, param: str):
    return next(g for g in p.cg.groups if any(pp == param for pp, _ in g.producers))


def test_depthwise_group_count_follows_channels():
    model, inputs = build("depthwise")
    pruned = Pruned(model, inputs, ratio=0.5).pruned()
    dw = pruned.graph.state["dw.weight"].shape
    dw2 = pruned.graph.state["dw2.weight"].shape
    assert dw == (6, 1, 3, 3)
    assert dw2 == (12, 1, 3, 3)  # multiplier 2 kept: 6 groups x 2


def test_grouped_conv_keeps_groups_balanced():
    model, inputs = build("grouped")
    pruned = Pruned(model, inputs, ratio=0.5).pruned()
    assert pruned.graph.state["g.weight"].shape == (12, 2, 3, 3)  # 4 groups of 2 in, 3 out


def test_shuffle_couples_the_two_branches():
    model, inputs = build("channel-shuffle")
    p = Pruned(model, inputs, ratio=0.5)
    # a.weight and b.weight channels are shuffled together: one group, both producers
    g = _group_of(p, "a.weight")
    assert {pp for pp, _ in g.producers} >= {"a.weight", "b.weight"}
    pruned = p.pruned()
    assert pruned.graph.state["a.weight"].shape[0] == pruned.graph.state["b.weight"].shape[0]


def test_flatten_removes_a_block_of_linear_inputs():
    model, inputs = build("flatten-linear")
    pruned = Pruned(model, inputs, ratio=0.5).pruned()
    assert pruned.graph.state["c.weight"].shape[0] == 4
    assert pruned.graph.state["fc.weight"].shape[1] == 4 * 16


def test_attention_prunes_head_dim_in_every_head():
    model, inputs = build("attention-heads")
    p = Pruned(model, inputs, ratio=0.5)
    pruned = p.pruned()
    qkv = pruned.graph.state["qkv.weight"].shape
    assert qkv[0] % (3 * 4) == 0  # 3 projections x 4 heads, equal head dims
    assert pruned.graph.state["proj.weight"].shape[1] == qkv[0] // 3


def test_layer_norm_groups_are_flagged_inexact():
    torch.manual_seed(0)
    model = randomize(LayerNormMLP()).eval()
    p = Pruned(model, (torch.randn(4, 6),), ratio=0.5)
    g = _group_of(p, "fc1.weight")
    assert not g.exact.any()
    assert any("layer norm" in r for r in g.reasons)
    exact_only = Pruned(model, (torch.randn(4, 6),), ratio=0.5, exact_only=True)
    assert exact_only.keep == {}
    out = p.pruned().run()[0]  # still prunable on request, and it runs
    assert out.shape == (4, 3) and np.isfinite(out).all()
    assert p.pruned().graph.state["ln.weight"].shape == (8,)


def test_group_norm_keeps_group_count():
    torch.manual_seed(0)
    model = randomize(GroupNormNet()).eval()
    p = Pruned(model, (torch.randn(*(2, 3, 8, 8)),), ratio=0.5)
    pruned = p.pruned()
    assert pruned.graph.state["gn.weight"].shape == (8,)  # 4 groups of 2
    assert np.isfinite(pruned.run()[0]).all()


def test_unknown_op_is_a_reported_barrier():
    torch.manual_seed(0)
    model = randomize(Unknown()).eval()
    p = Pruned(model, (torch.randn(2, 3, 4, 4),), ratio=0.5)
    assert any(b["op"] == "aten.flip.default" for b in p.cg.barriers)
    pruned = p.pruned()
    assert pruned.graph.state["b.weight"].shape[0] == 8  # through the flip: kept
    assert pruned.graph.state["a.weight"].shape[0] == 4  # elsewhere: pruned
    assert relative_error(pruned.run(), p.masked()) <= 1e-5
