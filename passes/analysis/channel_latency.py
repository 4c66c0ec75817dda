"""channel-latency: measured latency of each channel group's layers as a function of the
number of channels it keeps, and the count worth keeping near a requested one.

Latency is a staircase in channels, not a line: onnxruntime's x86 kernels work on blocks of
channels (a depthwise 3x3 on 56x56 with 92 channels runs in a third of the time of 91 or 93
here), so a ratio that lands between steps buys no time and can even cost some. For a group,
every convolution and linear layer whose output or input channels belong to it is rebuilt
at each candidate count (its other sizes as in the model), and they are timed together on
the backend as one block (see BlockSpec: producers summed, depthwise chain, consumers), so
layout conversions between neighbours count. ``snap`` keeps the counts on the staircase
(none larger is as fast) and picks the one nearest the request; ``snap_many`` moves groups
that one layer reads together (a concatenation) as one."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from prunepass.ir.graph import Graph
from prunepass.pm import AnalysisPass, Option, register
from prunepass.pm.options import at_least
from prunepass.passes.analysis.layer_blocks import _spec, _touches, _Touch

MAX_CANDIDATES = 24  # counts timed per request; wider windows are sampled (see candidates)


class ChannelLatency:
    def __init__(self, graph: Graph, cg: Any, timer: Any) -> None:  # noqa: ANN401
        self.graph, self.cg, self.timer = graph, cg, timer
        group_of = np.full(cg.n_classes, -1)
        for g in cg.groups:
            group_of[g.classes] = g.id
        self.touches: dict[int, list[_Touch]] = {}
        # groups one layer reads together: its input concatenates them (densenet)
        self.read_together: list[set[int]] = []
        for node in graph.nodes:
            read = set()
            for gid, touch in _touches(node, cg, group_of):
                self.touches.setdefault(gid, []).append(touch)
                if touch.in_share and not touch.depthwise:
                    read.add(gid)
            if len(read) > 1:
                self.read_together.append(read)

    def block(self, group: Any, count: int):  # noqa: ANN401, ANN201
        """The group's layers as one BlockSpec with ``count`` channels: producers (their
        outputs are the group), a chain (depthwise layers), consumers (their inputs are)."""
        from prunepass.backends.measure.layer_latency import BlockSpec
        parts: dict[str, list] = {"producers": [], "chain": [], "consumers": []}
        for t in self.touches.get(group.id, []):
            role = ("chain" if t.depthwise or (t.out_share and t.in_share) else
                    "producers" if t.out_share else "consumers")
            parts[role].append(_spec(t, group.size, count))
        return BlockSpec(**{k: tuple(v) for k, v in parts.items()})

    def latency_ms(self, group: Any, count: int) -> float:  # noqa: ANN401
        """Measured latency of the group's layers, run together, when it keeps ``count``."""
        if not self.touches.get(group.id):
            return 0.0
        return float(self.timer.many([self.block(group, count)])[0])

    def snap(self, group: Any, keep: int, *, window: float, tolerance: float,  # noqa: ANN401
             round_to: int = 1, min_keep: int = 1) -> int:
        """The count to keep instead of ``keep``: on the measured staircase within
        keep * (1 +- window), nearest to ``keep`` (the larger on a tie)."""
        return self.snap_many([(group, keep)], window=window, tolerance=tolerance,
                              round_to=round_to, min_keep=min_keep)[0]

    def snap_many(self, requests: list[tuple[Any, int]], *, window: float, tolerance: float,
                  round_to: int = 1, min_keep: int = 1) -> list[int]:
        """snap for many (group, keep) requests, every block timed in one batch (what is
        missing is measured, and the cache file written, once). Groups that one layer reads
        together (a concatenation) and that are asked for the same fraction of their
        channels move together, to one fraction: their blocks time that layer with all its
        input scaled alike (see _spec), and snapped one by one they would leave its input
        at a count none of them was timed with (densenet121 at 0.5: 17 of its 58 growth
        groups went to 15 or 17 of 32 channels, and the model ran slower than pruned
        uniformly). A unit's staircase is that of its members' summed latencies."""
        out = [keep for _, keep in requests]
        units = []
        for unit in self._units(requests):
            # the smallest member's candidates set the fraction; the others follow it
            ref_group, ref_keep = requests[min(unit, key=lambda i: requests[i][0].size)]
            cands = candidates(ref_keep, ref_group.size, window, round_to, min_keep)
            counts = {i: [_follow(c, ref_group.size, requests[i][0].size, round_to, min_keep)
                          for c in cands] for i in unit}
            units.append((unit, ref_keep, cands, counts))
        blocks = [self.block(requests[i][0], n)
                  for unit, _, _, counts in units for i in unit for n in counts[i]]
        times = iter(float(t) for t in self.timer.many(blocks))
        for unit, ref_keep, cands, counts in units:
            summed = np.zeros(len(cands))
            for _ in unit:
                summed += [next(times) for _ in cands]
            stair = staircase(dict(zip(cands, summed)), tolerance)
            best = cands.index(min(stair, key=lambda c: (abs(c - ref_keep), -c)))
            for i in unit:
                out[i] = counts[i][best]
        return out

    def _units(self, requests: list[tuple[Any, int]]) -> list[list[int]]:
        """The requests (indices) to snap, in units that move together: the groups a layer
        reads together, when each keeps the same fraction as the unit's smallest group to
        within one of its channels; every other request alone. Unpruned or untimed groups
        are left out (they stay as asked)."""
        todo = {g.id: i for i, (g, keep) in enumerate(requests)
                if self.touches.get(g.id) and keep < g.size}
        parent = {gid: gid for gid in todo}

        def root(gid: int) -> int:
            while parent[gid] != gid:
                parent[gid] = parent[parent[gid]]
                gid = parent[gid]
            return gid

        for read in self.read_together:
            members = sorted(gid for gid in read if gid in todo)
            for gid in members[1:]:
                parent[root(gid)] = root(members[0])
        clusters: dict[int, list[int]] = {}
        for gid, i in todo.items():
            clusters.setdefault(root(gid), []).append(i)
        units = []
        for members in clusters.values():
            smallest = min(requests[i][0].size for i in members)
            fractions = [requests[i][1] / requests[i][0].size for i in members]
            if max(fractions) - min(fractions) <= 1.0 / smallest:
                units.append(sorted(members))
            else:
                units += [[i] for i in sorted(members)]
        return sorted(units)


def _follow(count: int, ref_size: int, size: int, round_to: int, min_keep: int) -> int:
    """A unit member's count when its smallest member keeps ``count`` of ``ref_size``: the
    same fraction of ``size``, so that multiples stay multiples (32 -> 24 takes 128 -> 96)."""
    n = count * size / ref_size
    if round_to > 1:
        n = round(n / round_to) * round_to
    return int(min(size, max(min_keep, round_to if round_to > 1 else 1, round(n))))


def candidates(keep: int, size: int, window: float, round_to: int, min_keep: int) -> list[int]:
    eps = 1e-9  # 50 * 1.1 is 55.000000000000007 in floating point
    lo = max(min_keep, 1, int(math.floor(keep * (1 - window) + eps)))
    hi = min(size, max(int(math.ceil(keep * (1 + window) - eps)), lo))
    counts = [c for c in range(lo, hi + 1) if c % round_to == 0 or c == size] or [keep]
    if len(counts) > MAX_CANDIDATES:
        # too many to time: the requested count and the window's ends, then the most
        # aligned counts first (multiples of 64, 32, 16, ...), where kernels' blocks end
        chosen = {keep if lo <= keep <= hi else counts[0], counts[0], counts[-1]}
        for c in sorted(counts, key=lambda c: (-(c & -c), abs(c - keep))):
            if len(chosen) >= MAX_CANDIDATES:
                break
            chosen.add(c)
        counts = sorted(chosen)
    return counts


def staircase(table: dict[int, float], tolerance: float = 0.0) -> list[int]:
    """The counts faster than every larger count by more than ``tolerance`` (a fraction):
    pruning to a count off the staircase gives away channels a larger count runs as fast."""
    kept, best = [], float("inf")
    for count in sorted(table, reverse=True):
        if table[count] < best * (1.0 - tolerance):
            kept.append(count)
            best = table[count]
    return sorted(kept)


@register
class ChannelLatencyAnalysis(AnalysisPass):
    """Measured latency of each group's layers by kept channel count (for hw-round)."""
    name = "channel-latency"
    options = (
        Option("backend", str, "ort", "where layers are timed on this machine (tvm: "
               "compiled for this CPU)", ("ort", "torch", "tvm")),
        Option("trials", int, 0, "tvm: MetaSchedule trials per kernel before timing",
               check=at_least(0)),
        Option("threads", int, 0, "intra-op threads while timing (0: the backend's "
               "default); match the deployment", check=at_least(0)),
    )

    def run(self, graph: Graph, am) -> ChannelLatency:  # noqa: ANN001
        from prunepass.backends.measure.layer_latency import LayerLatency
        timer = LayerLatency(self.opts["backend"], self.opts["threads"],
                             trials=self.opts["trials"] if self.opts["backend"] == "tvm" else 0)
        return ChannelLatency(graph, am.get("channel-groups"), timer)
