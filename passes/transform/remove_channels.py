"""remove-channels and mask-channels: apply the open prune plan to the model, and end it."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.errors import VerificationError
from prunepass.numerics import relative_error
from prunepass.plan import PlanPass, PrunePlan
from prunepass.pm import PreservedAnalyses, TransformResult, register


def state_keep(graph, keep):  # noqa: ANN001, ANN201
    """{parameter or buffer: {axis: indices kept}} of a plan's {(value, axis): indices}."""
    values = {v.name: v for v in graph.values()}
    out: dict[str, dict[int, np.ndarray]] = {}
    for (name, axis), idx in keep.items():
        v = values[name]
        if v.is_state():
            out.setdefault(v.param, {})[axis] = idx
    return out


def apply_plan(name: str, plan: PrunePlan, am: Any, mode: str) -> TransformResult:  # noqa: ANN401
    """Remove (or zero, mode="mask") what ``plan`` selects; with am.check_numerics, a
    removal is compared with the masked model (exact groups: within 1e-4, or an error)."""
    groups = plan.summary()
    pruned = [g for g in groups if g["kept"] < g["channels"]]
    changes = {"removed_classes": int(plan.removed.sum()), **plan.notes,
               "selected_by": plan.selected_by, "groups": pruned,
               "groups_total": len(groups), "groups_pruned": len(pruned),
               "barriers": plan.cg.barriers}
    am.plan = None
    keep = plan.keep()
    if not keep:
        return TransformResult(PreservedAnalyses.all(), changes)
    reference = None
    if am.check_numerics and mode == "remove":
        masked = am.model.clone()
        masked.apply_keep(keep, "mask")
        reference = masked.run()
    if mode == "remove":
        changes["keep"] = state_keep(am.graph, keep)
    am.model.apply_keep(keep, mode)
    if reference is not None:
        err = relative_error(am.model.run(), reference)
        changes["max_rel_error_vs_masked"] = err
        if all(g["exact"] for g in pruned) and err > 1e-4:
            raise VerificationError(
                f"{name}: pruned outputs differ from the masked model by {err:.2e} "
                "(relative); a channel rule is wrong for this model")
    return TransformResult(PreservedAnalyses.none(), changes)


class _ApplyPlan(PlanPass):
    kind = "transform"
    mode = "remove"

    def run(self, graph, am) -> TransformResult:  # noqa: ANN001
        plan = self.open_plan(am, selected=True)
        return apply_plan(self.name, plan, am, self.mode)


@register
class RemoveChannels(_ApplyPlan):
    """Physically remove the channels the plan selects; the plan ends."""
    name = "remove-channels"
    mode = "remove"


@register
class MaskChannels(_ApplyPlan):
    """Zero the channels the plan selects (activations), shapes kept; the plan ends."""
    name = "mask-channels"
    mode = "mask"
