"""Whole models through the public API: ratio 0 is bit-exact, pruning equals masking, and
the output is a real module (same inputs, original parameter names, trainable, saveable,
re-exportable, any batch size). The input model is never changed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

import prunepass
from prunepass.testing import randomize

X = torch.randn(2, 3, 64, 64)


def small_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                num_heads=4, hidden_dim=64, mlp_dim=128)


def small_swin():
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                              num_heads=[2, 4], window_size=[4, 4])


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), X),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), X),
    "shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(), X),
    "vit": (small_vit, torch.randn(2, 3, 32, 32)),
    "swin": (small_swin, torch.randn(2, 3, 32, 32)),
}


def make(name):
    factory, x = MODELS[name]
    torch.manual_seed(0)
    return randomize(factory().eval(), seed=2), x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ratio_zero_is_bit_exact(name):
    model, x = make(name)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0>,dce")
    # with autograd on: under no_grad nn.MultiheadAttention switches to a fused fast path
    # whose float rounding differs from the same model's own slow path (1e-6)
    assert torch.equal(res.model(x).detach(), model(x).detach())
    assert res.record.cost_after["macs"] == res.record.cost_before["macs"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prune_half_equals_masked_and_runs(name):
    model, x = make(name)
    before = copy.deepcopy(model.state_dict())
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    changes = res.record.step("remove-channels")
    exact = all(g["exact"] for g in changes["groups"])
    if exact:
        assert changes["max_rel_error_vs_masked"] <= 1e-5
    else:  # transformers: layer-norm groups are approximate by nature; exact ones are checked
        res_exact = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,exact-only=true>",
                                    check_numerics=True)
        assert res_exact.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    with torch.no_grad():
        dense, out = model(x), res.model(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert res.record.cost_after["macs"] < 0.6 * res.record.cost_before["macs"]
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k


def test_pruned_module_is_a_real_module(tmp_path):
    model, x = make("resnet18")
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce")
    pruned = res.model
    names = dict(pruned.named_parameters())
    assert set(names) <= set(dict(model.named_parameters()))  # original names survive
    assert names["layer1.0.conv1.weight"].shape == (32, 32, 3, 3)
    # another batch size than the example
    with torch.no_grad():
        assert pruned(torch.randn(5, 3, 64, 64)).shape == (5, 1000)
    # train mode: batch norm updates its statistics, gradients reach every parameter
    pruned.train()
    bn = pruned.get_submodule("bn1")
    assert isinstance(bn, torch.nn.BatchNorm2d)
    stats = bn.running_mean.clone()
    loss = pruned(torch.randn(4, 3, 64, 64)).square().mean()
    loss.backward()
    assert not torch.equal(stats, bn.running_mean)
    assert all(p.grad is not None for p in pruned.parameters())
    pruned.eval()
    # state_dict round trip into a fresh pruned copy
    torch.save(pruned.state_dict(), tmp_path / "sd.pt")
    again = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce").model
    again.load_state_dict(torch.load(tmp_path / "sd.pt"))
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    # the whole module pickles and loads back
    torch.save(pruned, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))
    # re-export with torch.export and run the exported program
    ep = torch.export.export(pruned, (x,))
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), pruned(x).numpy(), rtol=1e-5, atol=1e-6)


def test_vit_hidden_dim_constant_is_rewritten():
    model, x = make("vit")
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce")
    assert res.model.get_parameter("conv_proj.weight").shape[0] == 32  # hidden 64 -> 32
    with torch.no_grad():
        assert res.model(x).shape == (2, 1000)
