"""select-channels: the plan's selection by a ratio, per group or across groups."""
from __future__ import annotations

from typing import Any

from prunepass.errors import PipelineError
from prunepass.plan import PlanPass, PrunePlan
from prunepass.pm import Option, register
from prunepass.pm.options import in_range
from prunepass.passes.plan.selection import choose_removed, parse_group_ratios


def selection_changes(plan: PrunePlan) -> dict[str, Any]:
    """What a selection pass tells the record."""
    return {"removed_classes": int(plan.removed.sum()),
            "groups_pruned": sum(plan.kept(g) < g.size for g in plan.groups)}


@register
class SelectChannels(PlanPass):
    """Select the lowest-scoring `ratio` of each group's channels (or of all, scope=global)."""
    name = "select-channels"
    options = (
        Option("ratio", float, 0.5, "fraction of each group's channels to remove",
               check=in_range(0.0, 1.0)),
        Option("scope", str, "local", "local: every group loses `ratio`; global: rank "
               "channels across groups (normalised scores), `ratio` of all channels go",
               ("local", "global")),
        Option("group-ratios", list, [], "per-group ratios overriding `ratio`, as "
               "[PARAM:RATIO,...] where PARAM is a group's first producer (see `prunepass "
               "groups`)"),
    )

    def __init__(self, **opts: Any) -> None:  # noqa: ANN401
        super().__init__(**opts)
        if self["group-ratios"] and self["scope"] == "global":
            raise PipelineError(f"{self.name}: group-ratios sets each group's ratio and "
                                "scope=global ranks channels across groups; give one or the "
                                "other")

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am)  # plan.select refuses a second selection
        per_group = parse_group_ratios(self["group-ratios"], plan.cg)

        def search(finish):  # noqa: ANN001, ANN202
            removed, plan.tied = choose_removed(plan, self["ratio"], self["scope"], per_group)
            return removed, {}
        plan.select(self.text(), search)
        return selection_changes(plan)
