"""Per-channel statistics of chosen activations on calibration inputs, for the scores that
read activations (Wanda, FLAP, mean |activation|).

The graph module is run once with a recording call after each wanted value, and the calls
are taken out again: the model's own calling convention (keyword inputs, pytrees) is used
as is, and only sums per channel are held, never the activations themselves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx


@dataclass
class ChannelStats:
    """Sums over every element of a channel: count, sum, sum of |x|, sum of x^2."""
    count: float
    total: np.ndarray
    total_abs: np.ndarray
    total_sq: np.ndarray

    @property
    def mean_abs(self) -> np.ndarray:
        return self.total_abs / self.count

    @property
    def norm(self) -> np.ndarray:
        return np.sqrt(self.total_sq)

    @property
    def variance(self) -> np.ndarray:
        mean = self.total / self.count
        return np.maximum(self.total_sq / self.count - mean * mean, 0.0)


_SINK: dict[str, tuple[int, list[ChannelStats]]] = {}


def _record(x: Any, key: str, index: int) -> None:  # noqa: ANN401
    """Called from inside the instrumented graph."""
    t = x[index] if index >= 0 else x
    axis, out = _SINK[key]
    t = t.detach().float().movedim(axis, -1)
    t = t.reshape(-1, t.shape[-1])
    s = ChannelStats(float(t.shape[0]), t.sum(0).double().numpy(),
                     t.abs().sum(0).double().numpy(), (t * t).sum(0).double().numpy())
    if out:
        a = out[0]
        a.count += s.count
        a.total += s.total
        a.total_abs += s.total_abs
        a.total_sq += s.total_sq
    else:
        out.append(s)


def channel_stats(gm: fx.GraphModule, call: Callable[[], Any], wanted: dict[str, int]
                  ) -> dict[str, ChannelStats]:
    """Statistics along ``wanted[value]`` (an axis) of each named value (an fx node name,
    or ``name.i`` for output i of a node with several), from running ``call()``."""
    graph = gm.graph
    added: list[fx.Node] = []
    results: dict[str, list[ChannelStats]] = {}
    try:
        for node in list(graph.nodes):
            for name, index in ((node.name, -1), *((f"{node.name}.{i}", i) for i in range(8))):
                if name not in wanted:
                    continue
                results[name] = []
                _SINK[f"{id(gm)}:{name}"] = (wanted[name], results[name])
                with graph.inserting_after(node):
                    added.append(graph.call_function(
                        _record, (node, f"{id(gm)}:{name}", index)))
        gm.recompile()
        with torch.no_grad():
            call()
    finally:
        for n in added:
            graph.erase_node(n)
        gm.recompile()
        for name in wanted:
            _SINK.pop(f"{id(gm)}:{name}", None)
    return {name: r[0] for name, r in results.items() if r}
