"""score-channels: open a prune plan, with a score for every channel class."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.plan import PlanPass, PrunePlan
from prunepass.pm import Option, register
from prunepass.pm.options import at_least
from prunepass.ir import ops
from prunepass.ir.graph import Graph
from prunepass.passes.analysis.channel_groups import UNITS
from prunepass.passes.analysis.importance import CRITERIA


def class_energy(graph, cg, energy) -> np.ndarray:  # noqa: ANN001
    """Modelled energy each channel class is responsible for: every node's energy shared
    out over the channels of the parameters it reads."""
    cost = np.zeros(cg.n_classes)
    by_node = {n.node: n.total for n in energy.nodes}
    for node in graph.nodes:
        e = by_node.get(node.name, 0.0)
        if e <= 0:
            continue
        for v in node.inputs:
            if v.kind != "param":
                continue
            for axis in range(v.ndim):
                cls = cg.classes_of(v.name, axis)
                np.add.at(cost, cls, e / len(cls))
    return cost


def count_attention(graph: Graph) -> int:
    return sum(n.op == ops.ATTENTION for n in graph.nodes)


def headless_attention(graph: Graph) -> list[str]:
    """Attention layers whose query has no heads axis: written on (batch, tokens, dim)
    with no reshape to heads, so unit=heads has nothing to remove there."""
    out = []
    for n in graph.nodes:
        q = n.inputs[0] if n.op == ops.ATTENTION else None
        if q is not None and q.ndim < 4:
            out.append(f"attention {n.name} in {n.scope or '(top)'} has no heads axis (its "
                       f"query is {list(q.shape)}, not (batch, heads, tokens, head_dim))")
    return out


@register
class ScoreChannels(PlanPass):
    """Open a prune plan: score every channel class (low scores go first)."""
    name = "score-channels"
    options = (
        Option("importance", str, "l2", "channel score used to pick what goes", tuple(CRITERIA)),
        Option("seed", int, 0, "seed of the random importance", check=at_least(0)),
        Option("energy-aware", bool, False, "divide each channel's importance by the "
               "modelled energy it costs (with `profile`)"),
        Option("profile", str, "x86-epyc", "hardware profile of energy-aware"),
        Option("unit", str, "channels", "what an attention class is: one channel of every "
               "head, or a whole head (with its key/value group)", UNITS),
    )

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        if getattr(am, "plan", None) is not None:
            raise PipelineError(f"{self.name}: a plan is already open (scored by "
                                f"{am.plan.scored_by}); apply it with remove-channels or "
                                "mask-channels before opening another")
        am.defaults.setdefault("channel-groups", {})["unit"] = self["unit"]
        notes = {}
        if self["unit"] == "heads":
            headless = headless_attention(am.graph)
            if headless and len(headless) == count_attention(am.graph):
                raise PlanError(f"{self.name}<unit=heads>: {headless[0]}; no attention layer "
                                "of this model has a heads axis to remove (unit=channels "
                                "prunes it channel by channel)")
            if headless:
                notes["headless_attention"] = headless
        cg = am.get("channel-groups")
        scores = am.get("importance", criterion=self["importance"], seed=self["seed"])
        if self["energy-aware"]:
            cost = class_energy(am.graph, cg, am.get("energy", profile=self["profile"]))
            scores = scores / (cost + cost[cost > 0].mean() * 1e-3 if (cost > 0).any()
                               else 1.0)
        am.plan = PrunePlan(cg, scores, self.text())
        return {"channel_classes": int(cg.n_classes), **notes}
