"""hw-round: move each pruned group's kept count onto the measured latency staircase of
its layers (see the channel-latency analysis), within the plan's limits."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.errors import PipelineError
from prunepass.plan import PrunePlan, RefinePass
from prunepass.pm import Option, register
from prunepass.pm.options import at_least, in_range
from prunepass.passes.plan.selection import remove_best


@register
class HwRound(RefinePass):
    """Snap each pruned group's kept count to a step of its layers' measured latency."""
    name = "hw-round"
    options = (
        Option("backend", str, "ort", "where the layers are timed on this machine",
               ("ort", "torch", "tvm")),
        Option("window", float, 0.15, "candidates lie within keep * (1 +- this)",
               check=in_range(0.0, 1.0)),
        Option("tolerance", float, 0.03, "a smaller count must be this much faster (a "
               "fraction) to count as a step", check=in_range(0.0, 1.0)),
        Option("trials", int, 8, "backend=tvm: MetaSchedule trials per kernel of each layer "
               "timed (0: TVM's default schedules); the records go to a database a later "
               "compile can reuse", check=at_least(0)),
        Option("threads", int, 0, "intra-op threads while timing layers (0: the backend's "
               "default)", check=at_least(0)),
    )

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am, selected=True)
        if "hw-round" in plan.cache:
            raise PipelineError(f"{self.name}: the plan is already snapped by hw-round; "
                                "give it once")
        trials = {"trials": self["trials"]} if self["backend"] == "tvm" else {}
        self._table = am.get("channel-latency", backend=self["backend"],
                             threads=self["threads"], **trials)
        plan.cache["hw-round"] = {"backend": self["backend"], "threads": self["threads"],
                                  "trials": self["trials"]}
        return super().update(am)

    def refine(self, plan: PrunePlan, removed: np.ndarray) -> np.ndarray:
        pruned = [(g, cand) for g in plan.groups if len(cand := plan.candidates(g))
                  and plan.kept(g, removed) < g.size]
        snapped = self._table.snap_many(
            [(g, plan.kept(g, removed)) for g, _ in pruned], window=self["window"],
            tolerance=self["tolerance"], round_to=plan.limits.round_to,
            min_keep=plan.limits.min_channels)
        for (g, cand), keep in zip(pruned, snapped):
            if keep != plan.kept(g, removed):
                remove_best(plan, g, cand, g.size - keep, removed)
        return removed

