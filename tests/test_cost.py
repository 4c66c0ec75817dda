"""MACs and bytes counted at the op level, against hand-computed values."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from prunepass.frontends.torch import TorchModel
from prunepass.passes.analysis.cost import compute_cost


def cost_of(module, *inputs):
    return compute_cost(TorchModel.from_module(module.eval(), inputs).graph)


def test_conv_linear_matmul_attention_macs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*8*8 outputs x 3*3*3
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 8*8*8 x 9
            self.fc = nn.Linear(8, 16)  # (64 tokens) x 8 -> 16

        def forward(self, x):
            x = self.dw(self.conv(x))
            t = x.flatten(2).transpose(1, 2)  # (1, 64, 8)
            y = self.fc(t)  # 64*16*8
            att = t @ t.transpose(1, 2)  # (1, 64, 64) x 8
            q = y.view(1, 64, 2, 8).transpose(1, 2)  # 2 heads of 8
            z = F.scaled_dot_product_attention(q, q, q)  # 2*64*64*8 * 2
            return att.sum() + z.sum()

    c = cost_of(Net(), torch.randn(1, 3, 8, 8))
    by_op = {}
    for r in c.nodes:
        by_op[r.op] = by_op.get(r.op, 0) + r.macs
    conv = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9
    assert by_op["conv"] == conv
    assert by_op["linear"] == 64 * 16 * 8
    assert by_op["matmul"] == 64 * 64 * 8
    assert by_op["attention"] == 2 * 64 * 64 * 8 * 2
    assert c.totals["macs"] == conv + 64 * 16 * 8 + 64 * 64 * 8 + 2 * 64 * 64 * 8 * 2
    assert c.totals["params"] == (8 * 27 + 8) + (8 * 9 + 8) + (16 * 8 + 16)
    assert c.totals["param_bytes"] == 4 * c.totals["params"]


def test_resnet18_matches_the_published_count():
    c = cost_of(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
    assert c.totals["macs"] == 1_814_073_344  # 1.82 GMACs, as commonly reported
    assert c.totals["params"] == 11_689_512
