"""prune-channels: remove the least important channels of each group."""
from __future__ import annotations

import numpy as np

from prunepass.errors import PipelineError, VerificationError
from prunepass.numerics import relative_error
from prunepass.passes.transform.budget import metric_fn, parse_target, search_ratio
from prunepass.pm import PreservedAnalyses, TransformPass, TransformResult, register
from prunepass.passes.transform.channel_plan import PLAN_OPTIONS, choose_removed
from prunepass.passes.transform.hw_check import compare


def class_energy(graph, cg, energy) -> np.ndarray:  # noqa: ANN001
    """Modelled energy each channel class is responsible for: every node's energy shared
    out over the channels of the parameters it reads."""
    cost = np.zeros(cg.n_classes)
    by_node = {n.node: n.total for n in energy.nodes}
    for node in graph.nodes:
        e = by_node.get(node.name, 0.0)
        if e <= 0:
            continue
        for v in node.inputs:
            if v.kind != "param":
                continue
            for axis in range(v.ndim):
                cls = cg.classes_of(v.name, axis)
                np.add.at(cost, cls, e / len(cls))
    return cost


def latency_label(opts) -> str:  # noqa: ANN001
    if opts["latency-source"] == "profile":
        return f"latency (ms, predicted by {opts['profile']})"
    source = opts["latency-source"]
    if source == "tvm-model":
        return (f"latency (ms, each planned model compiled by tvm for this CPU, "
                f"{opts['hw-trials']} trials per kernel, and measured here)")
    if source == "tvm":
        source = f"tvm ({opts['hw-trials']} trials per kernel)"
    return (f"latency (ms, layers measured alone on {source} here, the rest "
            f"predicted by {opts['profile']})")


def tvm_trials(backend: str, opts) -> dict:  # noqa: ANN001
    """The tuning budget of layers timed on tvm (other backends have none)."""
    return {"trials": opts["hw-trials"]} if backend == "tvm" else {}


def hardware_snap(am, opts):  # noqa: ANN001, ANN201
    """hw-round: a function moving the groups' kept counts onto their measured latency
    staircases, or None."""
    if opts["hw-round"] == "off":
        return None
    table = am.get("channel-latency", backend=opts["hw-round"], threads=opts["hw-threads"],
                   **tvm_trials(opts["hw-round"], opts))
    return lambda requests: table.snap_many(
        requests, window=opts["hw-window"], tolerance=opts["hw-tolerance"],
        round_to=opts["round-to"], min_keep=opts["min-channels"])


def plan_keep(graph, am, opts):  # noqa: ANN001, ANN201
    """(channel groups, removed-class mask, group summaries, keep per value axis)."""
    return plan_with_budget(graph, am, opts)[:4]


def plan_with_budget(graph, am, opts):  # noqa: ANN001, ANN201
    """plan_keep, plus what the record says of how the plan was reached: the budget
    search (a target given) and hw-check's timings, as a dict of changes."""
    cg = am.get("channel-groups")
    scores = am.get("importance", criterion=opts["importance"], seed=opts["seed"])
    if opts["energy-aware"]:
        cost = class_energy(graph, cg, am.get("energy", profile=opts["profile"]))
        scores = scores / (cost + cost[cost > 0].mean() * 1e-3 if (cost > 0).any() else 1.0)
    notes = {}
    snap = hardware_snap(am, opts)
    targets = [k for k in ("macs", "energy", "latency-ms") if opts[f"target-{k}"]]
    if opts["group-ratios"] and (targets or opts["scope"] == "global"):
        other = f"target-{targets[0]}" if targets else "scope=global"
        raise PipelineError(f"prune-channels: group-ratios sets each group's ratio and {other} "
                            "ranks channels across groups; give one or the other")
    if targets:
        if len(targets) > 1:
            raise PipelineError("prune-channels: give one of target-macs, target-energy, "
                                f"target-latency-ms, not {' and '.join(targets)}")
        kind = targets[0]
        target, relative = parse_target(opts[f"target-{kind}"], f"target-{kind}")
        global_opts = {**opts, "scope": "global"}
        removed, budget = search_ratio(
            graph, cg, lambda r: choose_removed(cg, scores, {**global_opts, "ratio": r},
                                                snap)[0],
            metric_fn(kind.split("-")[0], opts["profile"], opts["latency-source"],
                      opts["hw-threads"], opts["hw-trials"], am.model),
            target, relative, opts["max-ratio"],
            {"macs": "MACs", "energy": "energy (mJ, modelled)",
             "latency-ms": latency_label(opts)}[kind])
        _, groups = choose_removed(cg, scores, {**global_opts, "ratio": budget["ratio"]},
                                   snap)
        notes["budget"] = budget
    else:
        removed, groups = choose_removed(cg, scores, opts, snap)
        if snap is not None and opts["hw-check"]:
            asked, asked_groups = choose_removed(cg, scores, opts)
            if (asked != removed).any():
                check = compare(am.model, cg.keep_for(removed), cg.keep_for(asked),
                                opts["hw-round"], opts["hw-threads"], opts["hw-trials"])
                notes["hw_check"] = check
                if check["kept"] == "asked":
                    removed, groups = asked, asked_groups
    return cg, removed, groups, cg.keep_for(removed), notes


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

    def __init__(self, **opts) -> None:  # noqa: ANN003
        super().__init__(**opts)
        given = {k.replace("_", "-") for k in opts}
        targets = sorted(k for k in given if k.startswith("target-") and self[k])
        if "ratio" in given and targets:
            raise PipelineError(f"{self.name}: ratio and {targets[0]} both say how much to "
                                "remove; give one")
        if len(targets) > 1:
            raise PipelineError(f"{self.name}: give one of target-macs, target-energy, "
                                f"target-latency-ms, not {' and '.join(targets)}")

    def run(self, graph, am) -> TransformResult:  # noqa: ANN001
        cg, removed, groups, keep, notes = plan_with_budget(graph, am, self.opts)
        changes = {"removed_classes": int(removed.sum()), **notes,
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
