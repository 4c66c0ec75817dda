"""Helpers for checking pruned models numerically (used by the tests and benchmarks)."""
from __future__ import annotations

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-randomise weights and batch-norm statistics in place so that no layer is an
    identity and no output is constant: torchvision's init zeroes ViT's head and makes BN
    the identity, which would hide channel-rule errors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            for name, p in m.named_parameters(recurse=False):
                if p.dim() == 1 and name == "weight":
                    p.uniform_(0.5, 1.5, generator=g)
                elif p.dim() >= 2:
                    p.normal_(0.0, (1.0 / max(p[0].numel(), 1)) ** 0.5, generator=g)
                else:
                    p.uniform_(-0.2, 0.2, generator=g)
    return model
