"""channel-groups: which channels are coupled and must be removed together.

Every axis of every value is a range of element ids. Per-op rules (``passes/rules``) link
elements that are the same channel; connected components of those links are *channel
classes* (removed all or nothing). Classes that share a layer's output axis form a *group*
(the unit a pruning ratio applies to). Pinned classes (model inputs/outputs, barriers,
positional indexing) are never removed; inexact classes are those whose removal is not
equal to zeroing them (statistics across channels: layer/group norm, softmax, mean)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunepass.ir import ops
from prunepass.ir.graph import Graph
from prunepass.pm import AnalysisPass, Option, register
from prunepass.passes.rules import RULES, RuleContext


UNITS = ("channels", "heads")


@dataclass
class ChannelGroup:
    id: int
    classes: np.ndarray  # class ids, ascending
    prunable: np.ndarray  # bool per class
    exact: np.ndarray  # bool per class
    producers: list[tuple[str, int]]  # (parameter, axis) whose outputs these are
    reasons: list[str] = field(default_factory=list)  # why some classes are inexact/pinned
    # bool per class: a distribution is over it (a softmax axis): inexact in kind, not
    # only in statistics; plans leave these alone unless asked (limit-channels)
    distribution: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.distribution is None:
            self.distribution = np.zeros(len(self.classes), bool)

    @property
    def approximate(self) -> list[str]:
        """The kinds of approximation in this group: "statistic" (a norm or mean spans its
        channels), "distribution" (a softmax is over them)."""
        kinds = []
        if (~self.exact & ~self.distribution).any():
            kinds.append("statistic")
        if self.distribution.any():
            kinds.append("distribution")
        return kinds

    @property
    def size(self) -> int:
        return len(self.classes)

    @property
    def name(self) -> str:
        p, a = self.producers[0]
        more = f" +{len(self.producers) - 1}" if len(self.producers) > 1 else ""
        return f"{p}[{a}]{more}"

    def summary(self) -> dict:
        return {"id": self.id, "name": self.name, "channels": self.size,
                "prunable": int(self.prunable.sum()), "exact": bool(self.exact.all()),
                "approximate": self.approximate,
                "producers": [f"{p}[{a}]" for p, a in self.producers],
                "reasons": self.reasons}


@dataclass
class ChannelGroups:
    graph: Graph
    spaces: dict[tuple[str, int], tuple[int, int]]  # (value name, axis) -> (first id, size)
    labels: np.ndarray  # element id -> class id
    n_classes: int
    groups: list[ChannelGroup]
    barriers: list[dict]

    def classes_of(self, value: str, axis: int) -> np.ndarray:
        b, n = self.spaces[(value, axis)]
        return self.labels[b:b + n]

    def keep_for(self, removed: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
        """For a boolean mask over classes, the indices each (value, axis) keeps; only axes
        that lose something are listed."""
        keep = {}
        for key, (b, n) in self.spaces.items():
            gone = removed[self.labels[b:b + n]]
            if gone.any():
                keep[key] = np.flatnonzero(~gone)
        return keep

    def by_id(self, gid: int) -> ChannelGroup:
        return self.groups[gid]


def _components(n: int, src: list[np.ndarray], dst: list[np.ndarray]) -> tuple[int, np.ndarray]:
    if src:
        a, b = np.concatenate(src), np.concatenate(dst)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    m = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(m, directed=False)


def build_channel_groups(graph: Graph, unit: str = "channels") -> ChannelGroups:
    ctx = RuleContext(graph, unit=unit)
    for v in [*graph.inputs, *graph.outputs]:
        ctx.pin_all(v, "model input/output")
    for node in graph.nodes:
        fn = RULES.get(node.op)
        if fn is None or node.op == ops.BARRIER:
            ctx.barrier(node, node.attrs.get("why", f"no channel rule for {node.target}"))
        else:
            fn(node, ctx)
    n_classes, labels = _components(ctx.size, ctx.src, ctx.dst)

    pinned = np.zeros(n_classes, bool)
    for ids in ctx.pinned:
        pinned[labels[ids]] = True
    inexact = np.zeros(n_classes, bool)
    inexact_why: dict[int, str] = {}
    distribution = np.zeros(n_classes, bool)
    for ids in ctx.distribution_ids:
        distribution[labels[ids]] = True
    for ids, why in zip(ctx.inexact_ids, ctx.inexact_reasons):
        cls = labels[ids]
        inexact[cls] = True
        for c in np.unique(cls):
            inexact_why.setdefault(int(c), why)

    # Group classes that share a producer axis (union-find over classes).
    spaces = {}
    for v in graph.values():
        for axis in range(v.ndim):
            spaces[(v.name, axis)] = (ctx.base[(id(v), axis)], v.shape[axis])
    prod_src, prod_dst, prod_of_class = [], [], {}
    for v, axis in ctx.producers:
        b, n = spaces[(v.name, axis)]
        cls = np.unique(labels[b:b + n])
        prod_src.append(cls[:1].repeat(len(cls)))
        prod_dst.append(cls)
        for c in cls[:1]:
            prod_of_class.setdefault(int(c), []).append((v.param or v.name, axis))
    _, glabel = _components(n_classes, prod_src, prod_dst)
    in_producer = np.zeros(n_classes, bool)
    for cls in prod_dst:
        in_producer[cls] = True
    group_classes: dict[int, list[int]] = {}
    for c in np.flatnonzero(in_producer):
        group_classes.setdefault(int(glabel[c]), []).append(int(c))
    groups = []
    for cls in group_classes.values():
        cls_arr = np.array(sorted(cls))
        producers = []
        for c in cls_arr:
            for p in prod_of_class.get(int(c), []):
                if p not in producers:
                    producers.append(p)
        reasons = sorted({inexact_why[int(c)] for c in cls_arr if int(c) in inexact_why})
        if pinned[cls_arr].all():
            reasons.append("pinned")
        groups.append(ChannelGroup(len(groups), cls_arr, ~pinned[cls_arr], ~inexact[cls_arr],
                                   producers, reasons, distribution[cls_arr]))
    nodes = {n.name: n for n in graph.nodes}

    def touches_a_group(name: str) -> bool:
        """A barrier matters where it pins channels some layer produces; one on attention
        mask or position arithmetic (cumsum, gather on integer ids) pins nothing."""
        node = nodes.get(name)
        if node is None:
            return True
        for v in [*node.inputs, *node.outputs]:
            for axis in range(v.ndim):
                b, n = spaces[(v.name, axis)]
                if n and in_producer[labels[b:b + n]].any():
                    return True
        return False
    barriers = [{"node": n, "op": t, "why": w} for n, t, w in ctx.barriers
                if touches_a_group(n)]
    return ChannelGroups(graph, spaces, labels, n_classes, groups, barriers)


@register
class ChannelGroupsAnalysis(AnalysisPass):
    """Coupled channel groups: what must be removed together, what cannot be removed."""
    name = "channel-groups"
    options = (
        Option("unit", str, "channels", "what one class of an attention layer is: a channel "
               "of every head (head_dim shrinks) or a whole head (heads go, with their "
               "key/value group under grouped-query attention)", UNITS),
    )

    def run(self, graph: Graph, am) -> ChannelGroups:  # noqa: ANN001
        return build_channel_groups(graph, self["unit"])
