from __future__ import annotations

import numpy as np
import pytest
import torch

from prunepass.frontends.torch import TorchModel
from prunepass.numerics import relative_error
from prunepass.passes.pipelines.prune_channels import plan_for
from prunepass.pm import AnalysisManager

# one thread is several times faster than two on a shared two-core machine (OpenMP
# threads contend with the other process for the cores)
torch.set_num_threads(1)


class Pruned:
    """A model pruned with a plan, the same plan applied as a mask, and helpers."""

    def __init__(self, module: torch.nn.Module, inputs: tuple, **opts) -> None:
        self.module, self.inputs = module.eval(), inputs
        self.adapter = TorchModel.from_module(module, inputs)
        self.am = AnalysisManager(self.adapter)
        self.plan = plan_for(self.am, **opts)
        self.cg, self.removed, self.groups, self.keep = (
            self.plan.cg, self.plan.removed, self.plan.summary(), self.plan.keep())
        with torch.no_grad():
            out = module(*inputs)
        self.original = [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    def masked(self, keep=None) -> list[np.ndarray]:
        m = self.adapter.clone()
        m.apply_keep(self.keep if keep is None else keep, "mask")
        return m.run()

    def pruned(self) -> TorchModel:
        m = self.adapter.clone()
        m.apply_keep(self.keep, "remove")
        return m

    def shifted_keep(self) -> dict:
        """The negative control: the same number of channels, at shifted positions."""
        out = {}
        for (name, axis), idx in self.keep.items():
            n = self.adapter.graph and next(v for v in self.adapter.graph.values()
                                            if v.name == name).shape[axis]
            out[(name, axis)] = np.sort((idx + 1) % n)
        return out


@pytest.fixture
def pruned_factory():
    return Pruned


__all__ = ["Pruned", "relative_error"]
