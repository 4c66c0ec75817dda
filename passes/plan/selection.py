"""Choosing which channel classes go: a ratio per group (local) or one ranking across
groups (global), within a plan's limits. The selection passes and the search use it."""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from prunepass.plan import Limits, PrunePlan
from prunepass.passes.plan.size_ties import equalize


def kept_count(n: int, remove: int, limits: Limits) -> int:
    keep = max(n - remove, limits.min_channels, 1)
    r = limits.round_to
    if r > 1:
        keep = min(n, int(math.ceil(keep / r) * r))
    return min(keep, n)


def choose_removed(plan: PrunePlan, ratio: float, scope: str = "local",
                   group_ratios: dict[int, float] | None = None) -> tuple[np.ndarray, dict]:
    """A boolean mask over classes (True = remove) by the plan's scores and limits, and
    the ties made ({group id: groups it was tied to})."""
    cg, scores, limits = plan.cg, plan.scores, plan.limits
    removed = np.zeros(cg.n_classes, bool)
    eligible = [(g, c) for g in cg.groups if len(c := plan.candidates(g))]
    if scope == "global" and eligible:
        pool_cls, pool_score, pool_group = [], [], []
        for i, (g, cand) in enumerate(eligible):
            s = scores[cand]
            pool_cls.append(cand)
            pool_score.append(s / (s.mean() + 1e-12))
            pool_group.append(np.full(len(cand), i))
        cls, sc, grp = (np.concatenate(x) for x in (pool_cls, pool_score, pool_group))
        budget = int(round(ratio * sum(g.size for g, _ in eligible)))
        cap = {i: g.size - kept_count(g.size, int(limits.max_ratio * g.size), limits)
               for i, (g, _) in enumerate(eligible)}
        taken = {i: 0 for i in cap}
        per_group: dict[int, list[int]] = {i: [] for i in cap}
        for k in np.argsort(sc, kind="stable"):
            if budget <= 0:
                break
            i = int(grp[k])
            if taken[i] < min(cap[i], len(eligible[i][1])):
                per_group[i].append(int(cls[k]))
                taken[i] += 1
                budget -= 1
        for i, (g, cand) in enumerate(eligible):
            want = g.size - kept_count(g.size, taken[i], limits)
            chosen = per_group[i][:max(want, 0)]
            removed[chosen] = True
    else:
        for g, cand in eligible:
            r = (group_ratios or {}).get(g.id, ratio)
            remove_best(plan, g, cand, g.size - kept_count(g.size, int(round(r * g.size)),
                                                          limits), removed)
    if limits.uniform_layers:
        same_counts(plan, removed, eligible)
    tied = {}
    if limits.tie_sizes:
        tied = equalize(cg, scores, removed, {g.id: c for g, c in eligible})
    return removed, tied


def layer_kind(group: Any) -> tuple:  # noqa: ANN401
    """What makes groups the same layer of a model's repeated blocks: producers that differ
    only in a layer index (layers.3.mlp.up_proj -> layers.*.mlp.up_proj), and the size."""
    return tuple(sorted({(re.sub(r"(^|\.)\d+(?=\.)", r"\1*", p), a)
                         for p, a in group.producers})), group.size


def same_counts(plan: PrunePlan, removed: np.ndarray,
                eligible: list[tuple[Any, np.ndarray]]) -> None:  # noqa: ANN401
    """uniform-layers: each kind of layer keeps the mean of its layers' kept counts (kept to
    the limits), every layer its best-scored channels."""
    kinds: dict[tuple, list[tuple[Any, np.ndarray]]] = {}
    for g, cand in eligible:
        kinds.setdefault(layer_kind(g), []).append((g, cand))
    for members in kinds.values():
        if len(members) < 2:
            continue
        size = members[0][0].size
        mean_lost = float(np.mean([removed[g.classes].sum() for g, _ in members]))
        keep = kept_count(size, int(round(mean_lost)), plan.limits)
        keep = max(keep, max(size - len(cand) for _, cand in members))
        for g, cand in members:
            remove_best(plan, g, cand, size - keep, removed)


def remove_best(plan: PrunePlan, group: Any, cand: np.ndarray, count: int,  # noqa: ANN401
                removed: np.ndarray) -> None:
    """Mark the ``count`` lowest-scoring of ``cand`` removed, spread over the group's
    segments (tensors holding different subsets of its channels)."""
    removed[group.classes] = False
    segment = plan.cache.get("segments")
    if segment is None:
        segment = plan.cache["segments"] = _segments(plan.cg)
    for seg_cand, quota in _split_quota(group, cand, segment, count):
        order = np.argsort(plan.scores[seg_cand], kind="stable")
        removed[seg_cand[order[:quota]]] = True


def _segments(cg) -> np.ndarray:  # noqa: ANN001
    """A label per class such that classes with equal labels live in exactly the same
    tensors. Inside a group, segments differ after a channel split (shufflenet's chunk)."""
    starts = np.array([b for b, _ in cg.spaces.values()])
    sizes = np.array([n for _, n in cg.spaces.values()])
    order = np.argsort(starts)  # spaces tile the element ids in this order
    weight = np.random.default_rng(0).random(len(sizes))
    sig = np.zeros(cg.n_classes)
    np.add.at(sig, cg.labels, np.repeat(weight[order], sizes[order]))
    return np.unique(np.round(sig, 9), return_inverse=True)[1]


def _split_quota(group, cand: np.ndarray, segment: np.ndarray, want: int):  # noqa: ANN001, ANN202
    """Spread ``want`` removals over the group's segments in proportion to their size, so
    that no tensor of the group is pruned much harder than the others."""
    want = min(want, len(cand))
    if want <= 0:
        return []
    seg_of = segment[group.classes]
    ids, counts = np.unique(seg_of, return_counts=True)
    if len(ids) == 1:
        return [(cand, want)]
    exact = want * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - quota))[: want - quota.sum()]:
        quota[k] += 1
    out = []
    cand_seg = segment[cand]
    for sid, q, c in zip(ids, quota, counts):
        mine = cand[cand_seg == sid]
        q = min(q, len(mine), c - 1)  # every segment keeps at least one channel
        if q > 0:
            out.append((mine, q))
    return out


def parse_group_ratios(items: list[str], cg) -> dict[int, float]:  # noqa: ANN001
    """["layer1.0.conv1.weight:0.3", ...] -> {group id: ratio}; a group is named by any
    of its producer parameters."""
    from prunepass.errors import PipelineError
    if not items:
        return {}
    by_param = {p: g.id for g in cg.groups for p, _ in g.producers}
    out = {}
    for item in items:
        name, sep, value = item.rpartition(":")
        if not sep:
            raise PipelineError(f"group-ratios entry {item!r} must be PARAM:RATIO")
        try:
            r = float(value)
        except ValueError:
            raise PipelineError(f"group-ratios entry {item!r}: {value!r} is not a number") \
                from None
        if not 0 <= r < 1:
            raise PipelineError(f"group-ratios entry {item!r}: the ratio must be in [0, 1)")
        if name not in by_param:
            raise PipelineError(f"group-ratios entry {item!r}: no group is produced by "
                                f"{name!r} (`prunepass groups MODEL` lists them)")
        gid = by_param[name]
        if gid in out:
            raise PipelineError(f"group-ratios entry {item!r}: that group already has a "
                                "ratio (an earlier entry names it or another of its producers)")
        if r > 0 and not cg.by_id(gid).prunable.any():
            raise PipelineError(f"group-ratios entry {item!r}: the group cannot be pruned "
                                f"({', '.join(cg.by_id(gid).reasons) or 'pinned'})")
        out[gid] = r
    return out
