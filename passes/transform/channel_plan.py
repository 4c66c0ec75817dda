"""Choosing which channel classes to remove: ratio, scope, rounding, minimums, ignores.
Shared by prune-channels (remove them) and mask (zero them)."""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable

import numpy as np

from prunepass.pm import Option
from prunepass.pm.options import at_least, in_range
from prunepass.passes.analysis.importance import CRITERIA
from prunepass.passes.transform.size_ties import equalize

PLAN_OPTIONS = (
    Option("ratio", float, 0.5, "fraction of each group's channels to remove",
           check=in_range(0.0, 1.0)),
    Option("importance", str, "l2", "channel score used to pick what goes", tuple(CRITERIA)),
    Option("scope", str, "local", "local: every group loses `ratio`; global: rank channels "
           "across groups (normalised scores), `ratio` of all channels go", ("local", "global")),
    Option("round-to", int, 1, "kept channels per group are a multiple of this",
           check=at_least(1)),
    Option("min-channels", int, 1, "never keep fewer channels than this in a group",
           check=at_least(1)),
    Option("max-ratio", float, 0.9, "global scope: no group loses more than this fraction",
           check=in_range(0.0, 1.0)),
    Option("ignore", list, [], "parameter name patterns (fnmatch or prefix) whose groups "
           "are left alone, e.g. [classifier*,fc]"),
    Option("exact-only", bool, False, "only prune groups whose removal equals zeroing "
           "(skips channels normalised by layer/group norm)"),
    Option("seed", int, 0, "seed of the random importance", check=at_least(0)),
    Option("tie-sizes", bool, True, "groups one module reshapes with the same number (the "
           "q, k and v head dims of an attention module) keep the same count, so the "
           "module's own class runs the pruned model"),
    Option("group-ratios", list, [], "per-group ratios overriding `ratio`, as "
           "[PARAM:RATIO,...] where PARAM is a group's first producer (see `prunepass groups`)"),
    Option("target-macs", str, "", "MACs budget instead of a ratio: absolute (2e9) or "
           "relative (0.5x); channels are ranked globally"),
    Option("target-energy", str, "", "modelled energy budget in mJ per inference (3.5) or "
           "relative (0.5x), with `profile`; channels are ranked globally"),
    Option("target-latency-ms", str, "", "latency budget in ms (12.5) or relative (0.5x), "
           "predicted as `latency-source` says"),
    Option("latency-source", str, "profile", "target-latency-ms: profile = `profile`'s "
           "latency model (roofline, or calibrated: see prunepass.hardware.calibrate); "
           "ort / torch / tvm = every conv and linear layer timed alone on that backend here "
           "(cached; see the channel-latency analysis), the profile for the other nodes; "
           "tvm-model = every planned model built, compiled by TVM for this CPU (tuned with "
           "hw-trials per kernel) and measured: slow, but what a TVM deployment gets",
           ("profile", "ort", "torch", "tvm", "tvm-model")),
    Option("energy-aware", bool, False, "divide each channel's importance by the modelled "
           "energy it costs (with `profile`)"),
    Option("profile", str, "x86-epyc", "hardware profile for energy-aware importance and "
           "target-energy"),
    Option("hw-round", str, "off", "snap each group's kept count to the measured latency "
           "staircase of its layers on this backend (see the channel-latency analysis); "
           "round-to then restricts the candidates", ("off", "ort", "torch", "tvm")),
    Option("hw-window", float, 0.15, "hw-round: candidates lie within keep * (1 +- this)",
           check=in_range(0.0, 1.0)),
    Option("hw-tolerance", float, 0.03, "hw-round: a smaller count must be this much faster "
           "(a fraction) to count as a step", check=in_range(0.0, 1.0)),
    Option("hw-trials", int, 8, "hw-round=tvm and latency-source=tvm / tvm-model: "
           "MetaSchedule trials per kernel of each layer (or model) timed (0: TVM's default "
           "schedules, plain loops on a CPU); the records go to a database a later compile "
           "can reuse", check=at_least(0)),
    Option("hw-threads", int, 0, "hw-round and latency-source: intra-op threads while "
           "timing layers (0: the backend's default)", check=at_least(0)),
    Option("hw-check", bool, True, "hw-round with a ratio: build the model with the snapped "
           "counts and with the counts as asked, time both on the backend, keep the faster "
           "(layers timed in blocks miss what lies between them)"),
)


# [(group, requested kept count), ...] -> kept counts: all groups at once, as groups
# read together by one layer are snapped together
Snap = Callable[[list[tuple[Any, int]]], list[int]]


def _ignored(group, patterns: list[str]) -> bool:  # noqa: ANN001
    for p, _ in group.producers:
        for pat in patterns:
            if fnmatch.fnmatch(p, pat) or p.startswith(pat + ".") or p == pat:
                return True
    return False


def _kept_count(n: int, remove: int, opts: dict[str, Any]) -> int:
    keep = max(n - remove, opts["min-channels"], 1)
    r = opts["round-to"]
    if r > 1:
        keep = min(n, int(math.ceil(keep / r) * r))
    return min(keep, n)


def choose_removed(cg, scores: np.ndarray, opts: dict[str, Any], snap: Snap | None = None  # noqa: ANN001
                   ) -> tuple[np.ndarray, list[dict]]:
    """A boolean mask over classes (True = remove) and a summary per group. ``snap`` may
    move the pruned groups' kept counts (hardware-aware rounding)."""
    removed = np.zeros(cg.n_classes, bool)
    eligible = []
    for g in cg.groups:
        ok = g.prunable & (g.exact if opts["exact-only"] else True)
        if ok.any() and not _ignored(g, opts["ignore"]):
            eligible.append((g, g.classes[ok]))
    ratio = opts["ratio"]
    if opts["scope"] == "global" and eligible:
        pool_cls, pool_score, pool_group = [], [], []
        for i, (g, cand) in enumerate(eligible):
            s = scores[cand]
            pool_cls.append(cand)
            pool_score.append(s / (s.mean() + 1e-12))
            pool_group.append(np.full(len(cand), i))
        cls, sc, grp = (np.concatenate(x) for x in (pool_cls, pool_score, pool_group))
        budget = int(round(ratio * sum(g.size for g, _ in eligible)))
        cap = {i: g.size - _kept_count(g.size, int(opts["max-ratio"] * g.size), opts)
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
            want = g.size - _kept_count(g.size, taken[i], opts)
            chosen = per_group[i][:max(want, 0)]
            removed[chosen] = True
    else:
        segment = _segments(cg)
        per_group = parse_group_ratios(opts.get("group-ratios") or [], cg)
        for g, cand in eligible:
            r = per_group.get(g.id, ratio)
            want = g.size - _kept_count(g.size, int(round(r * g.size)), opts)
            for seg_cand, quota in _split_quota(g, cand, segment, want):
                order = np.argsort(scores[seg_cand], kind="stable")
                removed[seg_cand[order[:quota]]] = True
    tied = {}
    if opts.get("tie-sizes", True):
        tied = equalize(cg, scores, removed, {g.id: cand for g, cand in eligible})
    requested = {}
    if snap is not None:
        segment = _segments(cg)
        pruned = [(g, cand, int(g.size - removed[g.classes].sum())) for g, cand in eligible]
        pruned = [(g, cand, keep) for g, cand, keep in pruned if keep < g.size]
        for (g, cand, keep), chosen in zip(pruned, snap([(g, k) for g, _, k in pruned])):
            if chosen != keep:
                requested[g.id] = keep
                removed[g.classes] = False
                for seg_cand, quota in _split_quota(g, cand, segment, g.size - chosen):
                    order = np.argsort(scores[seg_cand], kind="stable")
                    removed[seg_cand[order[:quota]]] = True
    _keep_every_tensor_alive(cg, scores, removed)
    summary = []
    for g in cg.groups:
        s = g.summary()
        s["kept"] = int(g.size - removed[g.classes].sum())
        if g.id in requested:
            s["requested"] = requested[g.id]
        if g.id in tied:
            s["tied_to"] = tied[g.id]
        summary.append(s)
    return removed, summary


def _keep_every_tensor_alive(cg, scores: np.ndarray, removed: np.ndarray) -> None:  # noqa: ANN001
    """A group can span several tensors holding different subsets of its channels (a
    channel split after a shuffle). Never empty one: give back its best channel."""
    for b, n in cg.spaces.values():
        if n == 0:
            continue
        lab = cg.labels[b:b + n]
        if removed[lab].all():
            removed[lab[np.argmax(scores[lab])]] = False


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
