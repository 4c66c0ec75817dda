"""Per-group ratios for a budget, protecting the groups the sensitivity analysis found
sensitive.

Greedy on marginal cost: starting from nothing pruned, repeatedly grow by ``step`` the
ratio of the group that saves the most MACs (or predicted latency, or modelled energy)
per point of score lost (the sensitivity curve, interpolated, is the predicted loss),
until the budget is met; the last step is then bisected down to single channels so the
budget is met with as little pruning as possible. Plans are evaluated on the IR's shapes,
without touching the model (as the global-ratio budgets are)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from prunepass.errors import PipelineError, PlanError
from prunepass.passes.analysis.sensitivity import Sensitivity

WHAT = {"macs": "MACs", "latency": "latency (ms, predicted)", "energy": "energy (mJ, modelled)"}


@dataclass
class Allocation:
    ratios: dict[str, float]  # group (producer parameter) -> ratio
    predicted_drop: float  # sum of the groups' single-group drops: a guide, not a promise
    target: float
    achieved: float
    dense: float
    budget: str
    options: dict[str, Any]

    @property
    def pipeline(self) -> str:
        """The prune-channels pipeline that applies this allocation."""
        from prunepass.passes.transform.dce import DeadCodeElimination
        from prunepass.passes.pipelines.prune_channels import PruneChannels
        from prunepass.pm import format_pipeline
        return format_pipeline([PruneChannels(**self.options, ratio=0.0,
                                              group_ratios=group_items(self.ratios)),
                                DeadCodeElimination()])


def group_items(ratios: dict[str, float]) -> list[str]:
    """group-ratios entries; six decimals survive the text form exactly."""
    return [f"{g}:{round(r, 6):g}" for g, r in ratios.items() if r > 0]


def allocate(model: Any, example_inputs: Sequence[Any] | Any, sensitivity: Sensitivity, *,
             target: str, budget: str = "macs", profile: str = "x86-epyc",
             step: float = 0.05, max_ratio: float = 0.8,
             options: dict[str, Any] | None = None) -> Allocation:
    """Ratios per group meeting ``target`` (absolute, or relative like "0.5x") for
    ``budget`` in macs | latency | energy. ``sensitivity`` comes from the sensitivity
    analysis of the same model; ``options`` are fixed prune-channels options
    (importance, round-to, min-channels, ...) used both here and in ``.pipeline``."""
    from prunepass.api import load
    from prunepass.passes.plan.budget import metric_fn, parse_target, planned_shapes
    from prunepass.passes.pipelines.prune_channels import plan_for
    from prunepass.passes.plan.selection import choose_removed, parse_group_ratios
    from prunepass.pm import AnalysisManager
    if budget not in WHAT:
        raise PipelineError(f"allocate: budget {budget!r}: use one of {', '.join(WHAT)}")
    if not 0 < step < max_ratio < 1:
        raise PipelineError(f"allocate: need 0 < step < max_ratio < 1, got step={step}, "
                            f"max_ratio={max_ratio}")
    opts = {k.replace("_", "-"): v for k, v in (options or {}).items()}
    owned = sorted(set(opts) & {"ratio", "group-ratios", "scope", "target-macs",
                                "target-energy", "target-latency-ms"})
    if owned:
        raise PipelineError(f"allocate: {', '.join(owned)} conflict with the allocation; "
                            "remove them from options")
    adapter = load(model, example_inputs)
    am = AnalysisManager(adapter)
    cg = am.get("channel-groups")
    plan = plan_for(am, select=False, **opts)
    by_param = {p for g in cg.groups for p, _ in g.producers}
    unknown = [g.name for g in sensitivity.groups if g.name not in by_param]
    if unknown:
        raise PlanError(f"allocate: the sensitivity names groups this model lacks "
                        f"({', '.join(unknown)}): was it computed on another model?")
    metric = metric_fn(budget, profile)
    graph = adapter.graph
    dense = metric(graph)
    value, relative = parse_target(target, f"target-{budget}")
    goal = value * dense if relative else value

    def measure(ratios: dict[str, float]) -> float:
        per_group = parse_group_ratios(group_items(ratios), cg)
        removed = plan.finish(choose_removed(plan, 0.0, "local", per_group)[0])
        with planned_shapes(graph, cg.keep_for(removed)):
            return metric(graph)

    sens = sensitivity.by_name()
    ratios = {g: 0.0 for g in sens}
    cur = dense
    last = None
    while cur > goal:
        best = None
        for g, r in ratios.items():
            nxt = min(round(r + step, 6), max_ratio)
            if nxt <= r:
                continue
            v = measure({**ratios, g: nxt})
            saved = cur - v
            if saved <= 0:
                continue
            loss = max(sens[g].drop_at(nxt) - sens[g].drop_at(r), 0.0)
            score = saved / (loss + 0.01)  # 0.01 pt: free steps still rank by what they save
            if best is None or score > best[0]:
                best = (score, g, nxt, v)
        if best is None:
            raise PlanError(f"allocate: {WHAT[budget]} budget {goal:.4g} cannot be met: every "
                            f"group at max_ratio={max_ratio} reaches {cur:.4g} "
                            f"(dense {dense:.4g})")
        _, g, nxt, cur = best
        last = (g, ratios[g])
        ratios[g] = nxt
    if last is not None:
        # the last step may overshoot the budget: give channels back, first to the group
        # grown last, then to the others from the most to the least sensitive, each time
        # keeping the least ratio that still meets the budget
        order = [last[0]] + sorted((g for g in ratios if g != last[0]),
                                   key=lambda g: -sens[g].drop_at(ratios[g]))
        for g in order:
            lo, hi = (last[1] if g == last[0] else 0.0), ratios[g]
            for _ in range(12):
                mid = (lo + hi) / 2
                if measure({**ratios, g: mid}) <= goal:
                    hi = mid
                else:
                    lo = mid
            ratios[g] = math.ceil(hi * 1e6) / 1e6  # up: six decimals never prune less
        cur = measure(ratios)
    predicted = sum(sens[g].drop_at(r) for g, r in ratios.items())
    return Allocation(ratios, predicted, goal, cur, dense, budget, opts)
