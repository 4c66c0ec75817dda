"""sensitivity: how much the score drops when one channel group alone is pruned.

For every prunable group and every ratio in ``ratios``, the group's least important
channels are removed (on a copy; the other groups are untouched) and the user's evaluation
function scores the pruned module. The drop is ``dense score - pruned score`` (positive:
worse). The evaluation function reaches the pass through the AnalysisManager:
``AnalysisManager(adapter, evaluate=fn)`` or ``am.evaluate = fn``, where ``fn(module)``
returns a float, higher is better (accuracy in %, say). No retraining happens here: the
numbers say which groups tolerate pruning as they are, which is what budgets and the search
use to protect the sensitive ones (``prunepass.search.allocate``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from prunepass.errors import PipelineError, PrunepassError
from prunepass.ir.graph import Graph
from prunepass.passes.analysis.cost import compute_cost
from prunepass.passes.analysis.importance import CRITERIA
from prunepass.pm import AnalysisPass, Option, register
from prunepass.pm.options import at_least


class EvaluationError(PrunepassError):
    """The user's evaluation function raised or returned something that is not a number."""


def score_of(evaluate: Callable[[Any], Any], module: Any, what: str) -> float:
    """Call ``evaluate(module)`` and return a finite float, or raise EvaluationError saying
    which model was being scored and why it failed."""
    try:
        value = evaluate(module)
    except Exception as e:  # the user's code: any failure is reported, not trusted
        raise EvaluationError(f"evaluate raised {type(e).__name__}: {e} (on {what})") from e
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"evaluate returned {value!r} on {what}; it must return a "
                              "number (higher is better)") from None
    if not math.isfinite(score):
        raise EvaluationError(f"evaluate returned {score} on {what}")
    return score


def parse_ratios(items: list[str], owner: str) -> list[float]:
    out = []
    for item in items:
        try:
            r = float(item)
        except ValueError:
            raise PipelineError(f"option 'ratios' of pass {owner!r}: {item!r} is not a "
                                "number") from None
        if not 0.0 < r < 1.0:
            raise PipelineError(f"option 'ratios' of pass {owner!r}: every ratio must be in "
                                f"(0, 1), got {item!r}")
        out.append(r)
    if not out:
        raise PipelineError(f"option 'ratios' of pass {owner!r} is empty: give e.g. "
                            "[0.25,0.5,0.75]")
    return sorted(set(out))


@dataclass
class GroupSensitivity:
    id: int
    name: str  # the producer parameter that names the group in group-ratios
    channels: int
    drops: dict[float, float] = field(default_factory=dict)  # ratio -> score drop
    macs: dict[float, int] = field(default_factory=dict)  # ratio -> model MACs after

    def drop_at(self, ratio: float) -> float:
        """Drop at any ratio, linear between the measured ratios (0 at ratio 0)."""
        xs = [0.0, *sorted(self.drops)]
        ys = [0.0, *(self.drops[r] for r in sorted(self.drops))]
        return float(np.interp(ratio, xs, ys))


@dataclass
class Sensitivity:
    dense_score: float
    dense_macs: int
    ratios: list[float]
    groups: list[GroupSensitivity]

    def by_name(self) -> dict[str, GroupSensitivity]:
        return {g.name: g for g in self.groups}

    def to_dict(self) -> dict[str, Any]:
        return {"dense_score": self.dense_score, "dense_macs": self.dense_macs,
                "ratios": self.ratios,
                "groups": [{"id": g.id, "name": g.name, "channels": g.channels,
                            "drops": {str(r): d for r, d in g.drops.items()},
                            "macs": {str(r): m for r, m in g.macs.items()}}
                           for g in self.groups]}

    def table(self) -> str:
        head = f"{'group':32} {'ch':>5} " + " ".join(f"{'r=' + format(r, 'g'):>8}"
                                                      for r in self.ratios)
        rows = [head, "-" * len(head)]
        for g in sorted(self.groups, key=lambda g: -max(g.drops.values(), default=0.0)):
            rows.append(f"{g.name[:32]:32} {g.channels:>5} "
                        + " ".join(f"{g.drops[r]:>8.2f}" for r in self.ratios))
        return "\n".join(rows)


def eligible_groups(cg, ignore: list[str]) -> list:  # noqa: ANN001
    from prunepass.plan import Limits
    limits = Limits(ignore=list(ignore))
    return [g for g in cg.groups if g.prunable.any() and not limits.ignores(g)]


@register
class SensitivityAnalysis(AnalysisPass):
    """Score drop per channel group pruned alone at several ratios (needs am.evaluate)."""
    name = "sensitivity"
    options = (
        Option("ratios", list, ["0.25", "0.5", "0.75"], "ratios each group is pruned at"),
        Option("importance", str, "l2", "channel score used to pick what goes", tuple(CRITERIA)),
        Option("round-to", int, 1, "kept channels per group are a multiple of this",
               check=at_least(1)),
        Option("ignore", list, [], "parameter name patterns whose groups are skipped"),
    )

    def run(self, graph: Graph, am) -> Sensitivity:  # noqa: ANN001
        from prunepass.passes.plan.budget import planned_shapes
        from prunepass.passes.pipelines.prune_channels import plan_for
        from prunepass.passes.plan.selection import choose_removed, parse_group_ratios
        evaluate = getattr(am, "evaluate", None)
        if evaluate is None:
            raise PipelineError(
                "pass 'sensitivity' needs an evaluation function: give "
                "AnalysisManager(adapter, evaluate=fn) or set am.evaluate = fn, where "
                "fn(module) returns a score, higher is better (e.g. accuracy in %)")
        ratios = parse_ratios(self["ratios"], self.name)
        cg = am.get("channel-groups")
        plan = plan_for(am, select=False, importance=self["importance"],
                        round_to=self["round-to"])
        dense = score_of(evaluate, am.model.materialize(), "the unpruned model")
        dense_macs = int(am.get("cost").totals["macs"])
        out = []
        for g in eligible_groups(cg, self["ignore"]):
            gs = GroupSensitivity(g.id, g.producers[0][0], g.size)
            for r in ratios:
                ratio = parse_group_ratios([f"{gs.name}:{r}"], cg)
                removed = plan.finish(choose_removed(plan, 0.0, "local", ratio)[0])
                keep = cg.keep_for(removed)
                if not keep:  # rounding kept every channel
                    gs.drops[r], gs.macs[r] = 0.0, dense_macs
                    continue
                with planned_shapes(graph, keep):
                    gs.macs[r] = int(compute_cost(graph).totals["macs"])
                pruned = am.model.clone()
                pruned.apply_keep(keep, "remove")
                gs.drops[r] = dense - score_of(evaluate, pruned.materialize(),
                                               f"group {gs.name} pruned at {r}")
            out.append(gs)
        return Sensitivity(dense, dense_macs, ratios, out)
