"""Groups whose kept counts one Python number sets.

An attention module reshapes q, k and v with the same ``self.head_dim``; the head dims of
q/k (coupled by rotary embeddings) and of v (coupled only to the output projection) are
separate channel groups, and pruned alone they can keep 44 and 45 channels: a valid graph,
but no value of ``head_dim`` runs the module's own code. Such groups are recognised as
reshape outputs of one module that have the same size on a pruned axis, and are given the
same kept count (the smallest of theirs, on a common multiple of their channels per class),
each keeping its most important channels."""
from __future__ import annotations

import math

import numpy as np

from prunepass.ir import ops


def tie_sets(cg) -> list[list[tuple[int, str, int]]]:  # noqa: ANN001
    """[(group id, value, axis), ...] per set of groups tied by one module's reshapes; an
    axis counts only where its classes are exactly one group's."""
    group_of = np.full(cg.n_classes, -1)
    for g in cg.groups:
        group_of[g.classes] = g.id
    by_key: dict[tuple[str, int], dict[int, tuple[int, str, int]]] = {}
    for node in cg.graph.nodes:
        if node.op != ops.RESHAPE:
            continue
        out = node.outputs[0]
        symbolic = set(node.attrs.get("symbolic_axes", ()))
        for axis in range(1, out.ndim):
            if axis in symbolic:
                continue
            cls = np.unique(cg.classes_of(out.name, axis))
            gid = int(group_of[cls[0]]) if len(cls) else -1
            if gid < 0 or not np.array_equal(cls, cg.by_id(gid).classes):
                continue
            by_key.setdefault((node.scope, out.shape[axis]), {}).setdefault(
                gid, (gid, out.name, axis))
    return [list(v.values()) for v in by_key.values() if len(v) > 1]


def equalize(cg, scores: np.ndarray, removed: np.ndarray,  # noqa: ANN001
             candidates: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """Give every tied group the same kept channel count along its tied axis, choosing
    again by score within ``candidates`` (the classes each group may lose). Changes
    ``removed`` in place; returns {group id: the groups it was tied to}."""
    tied: dict[int, list[int]] = {}
    for members in tie_sets(cg):
        members = [m for m in members if m[0] in candidates]
        if len(members) < 2:
            continue
        per, kept, lo, hi = {}, {}, 0, math.inf
        for gid, value, axis in members:
            g = cg.by_id(gid)
            n = len(cg.classes_of(value, axis))  # channels along the axis
            if n % g.size:
                break  # classes of unequal widths: no common count to give
            per[gid] = n // g.size
            kept[gid] = int((~removed[g.classes]).sum()) * per[gid]
            fixed = g.size - len(candidates[gid])
            lo, hi = max(lo, max(fixed, 1) * per[gid]), min(hi, n)
        if len(per) < len(members):
            continue
        step = math.lcm(*per.values())
        target = min(kept.values()) // step * step
        target = max(target, -(-lo // step) * step)
        if target > hi or all(k == target for k in kept.values()):
            continue
        for gid, _, _ in members:
            g = cg.by_id(gid)
            cand = candidates[gid]
            keep_classes = target // per[gid]
            lose = g.size - keep_classes
            removed[g.classes] = False
            order = np.argsort(scores[cand], kind="stable")
            removed[cand[order[:lose]]] = True
            tied[gid] = [m[0] for m in members if m[0] != gid]
    return tied

