"""select-threshold: the plan's selection by an absolute score threshold."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.plan import PlanPass
from prunepass.pm import Option, register
from prunepass.passes.plan.select_channels import selection_changes


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


@register
class SelectThreshold(PlanPass):
    """Select every channel scoring below `threshold`, keeping min-channels per group."""
    name = "select-threshold"
    options = (Option("threshold", float, 1.0, "channels whose score is below this go",
                      check=_positive),)

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am)  # plan.select refuses a second selection

        def search(finish):  # noqa: ANN001, ANN202
            removed = np.zeros(plan.cg.n_classes, bool)
            for g in plan.groups:
                cand = plan.candidates(g)
                low = cand[plan.scores[cand] < self["threshold"]]
                room = g.size - max(plan.limits.min_channels, 1)
                order = np.argsort(plan.scores[low], kind="stable")
                removed[low[order[:max(room, 0)]]] = True
            return removed, {}
        plan.select(self.text(), search)
        return selection_changes(plan)
