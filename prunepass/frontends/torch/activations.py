"""Per-channel statistics of chosen activations on calibration inputs, for the scores that
read activations (Wanda, FLAP, mean |activation|).

The graph module is run once with a recording call after each wanted value, and the calls
are taken out again: the model's own calling convention (keyword inputs, pytrees) is used
as is, and only sums per channel are held, never the activations themselves."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from prunepass.frontends.stats import ChannelStats


_SINK: dict[str, Callable[[torch.Tensor], None]] = {}


def _record(x: Any, key: str, index: int) -> None:  # noqa: ANN401
    """Called from inside the instrumented graph."""
    _SINK[key]((x[index] if index >= 0 else x).detach())


def record(gm: fx.GraphModule, call: Callable[[], Any],
           wanted: dict[str, Callable[[torch.Tensor], None]]) -> None:
    """Run ``call()`` with ``wanted[name](tensor)`` called on each named value as it is
    computed (an fx node name, or ``name.i`` for output i of a node with several)."""
    graph = gm.graph
    added: list[fx.Node] = []
    try:
        for node in list(graph.nodes):
            for name, index in ((node.name, -1), *((f"{node.name}.{i}", i) for i in range(8))):
                if name not in wanted:
                    continue
                _SINK[f"{id(gm)}:{name}"] = wanted[name]
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


def channel_stats(watch: Callable[[dict[str, Callable[[torch.Tensor], None]]], None],
                  wanted: dict[str, int]) -> dict[str, ChannelStats]:
    """Statistics along ``wanted[value]`` (an axis) of each named value, from one run of
    ``watch`` (the adapter's: it calls each callback on its value)."""
    results: dict[str, ChannelStats] = {}

    def accumulate(name: str, axis: int) -> Callable[[torch.Tensor], None]:
        def add(t: torch.Tensor) -> None:
            t = t.float().movedim(axis, -1)
            t = t.reshape(-1, t.shape[-1])
            s = ChannelStats(float(t.shape[0]), t.sum(0).double().numpy(),
                             t.abs().sum(0).double().numpy(), (t * t).sum(0).double().numpy())
            results[name] = results[name] + s if name in results else s
        return add
    watch({name: accumulate(name, axis) for name, axis in wanted.items()})
    return results
