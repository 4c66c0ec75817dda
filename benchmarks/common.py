"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-randomise weights and batch-norm statistics so that no layer is an identity and no
    head is zero (torchvision's init zeroes ViT's head and makes BN the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            for name, p in m.named_parameters(recurse=False):
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5, generator=g) if name == "weight" else \
                        p.uniform_(-0.2, 0.2, generator=g)
                elif p.dim() >= 2:
                    fan_in = p[0].numel()
                    p.normal_(0.0, (1.0 / max(fan_in, 1)) ** 0.5, generator=g)
                else:
                    p.uniform_(-0.2, 0.2, generator=g)
    return model


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=1))
    return path
