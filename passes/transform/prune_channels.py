"""prune-channels and mask: remove (or zero) the least important channels of each group."""
from __future__ import annotations

import numpy as np

from prunepass.errors import VerificationError
from prunepass.pm import PreservedAnalyses, TransformPass, TransformResult, register
from prunepass.passes.transform.channel_plan import PLAN_OPTIONS, choose_removed


def relative_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    err = 0.0
    for x, y in zip(a, b):
        denom = max(float(np.abs(y).max()), 1e-12) if y.size else 1.0
        err = max(err, float(np.abs(x - y).max()) / denom if x.size else 0.0)
    return err


def plan_keep(graph, am, opts):  # noqa: ANN001, ANN201
    cg = am.get("channel-groups")
    scores = am.get("importance", criterion=opts["importance"], seed=opts["seed"])
    removed, groups = choose_removed(cg, scores, opts)
    return cg, removed, groups, cg.keep_for(removed)


def state_keep(graph, keep):  # noqa: ANN001, ANN201
    values = {v.name: v for v in graph.values()}
    out: dict[str, dict[int, np.ndarray]] = {}
    for (name, axis), idx in keep.items():
        v = values[name]
        if v.is_state():
            out.setdefault(v.param, {})[axis] = idx
    return out


class _ChannelTransform(TransformPass):
    options = PLAN_OPTIONS
    mode = "remove"

    def run(self, graph, am) -> TransformResult:  # noqa: ANN001
        cg, removed, groups, keep = plan_keep(graph, am, self.opts)
        changes = {"removed_classes": int(removed.sum()),
                   "groups": [g for g in groups if g["kept"] < g["channels"]],
                   "groups_total": len(groups),
                   "groups_pruned": sum(g["kept"] < g["channels"] for g in groups),
                   "barriers": cg.barriers}
        if not keep:
            return TransformResult(PreservedAnalyses.all(), changes)
        reference = None
        exact = all(g["exact"] for g in changes["groups"])
        if am.check_numerics and self.mode == "remove":
            masked = am.model.clone()
            masked.apply_keep(keep, "mask")
            reference = masked.run()
        if self.mode == "remove":
            changes["keep"] = state_keep(graph, keep)
        am.model.apply_keep(keep, self.mode)
        if reference is not None:
            err = relative_error(am.model.run(), reference)
            changes["max_rel_error_vs_masked"] = err
            if exact and err > 1e-4:
                raise VerificationError(
                    f"{self.name}: pruned outputs differ from the masked model by {err:.2e} "
                    "(relative); a channel rule is wrong for this model")
        return TransformResult(PreservedAnalyses.none(), changes)


@register
class PruneChannels(_ChannelTransform):
    """Physically remove the least important channels of every coupled group."""
    name = "prune-channels"
    mode = "remove"


@register
class MaskChannels(_ChannelTransform):
    """Zero the channels prune-channels would remove, keeping shapes (quick evaluation)."""
    name = "mask"
    mode = "mask"
