"""prune-channels: the named pipeline that scores, limits, selects, snaps, checks and
removes channels, with every option of those steps in one place.

    prune-channels<ratio=0.5,hw-round=ort>
      = score-channels,limit-channels,select-channels<ratio=0.5>,
        hw-round<backend=ort>,hw-check,remove-channels

It has more options than any small pass (22): it stands for up to seven of them, and
keeps the options pipelines and records written before the small passes existed."""
from __future__ import annotations

from typing import Any

from prunepass.errors import PipelineError
from prunepass.pm import Option, Pass, PipelinePass, register
from prunepass.pm.options import at_least, in_range
from prunepass.passes.plan.hw_check import HwCheck
from prunepass.passes.plan.hw_round import HwRound
from prunepass.passes.plan.limit_channels import LimitChannels
from prunepass.passes.plan.score_channels import ScoreChannels
from prunepass.passes.plan.select_budget import TARGETS, SelectBudget
from prunepass.passes.plan.select_channels import SelectChannels
from prunepass.passes.transform.remove_channels import RemoveChannels


def _from(cls: type[Pass], opts: dict[str, Any], rename: dict[str, str] | None = None,
          **fixed: Any) -> Pass:  # noqa: ANN401
    """``cls`` with the options of ``opts`` it has (``rename``: its name -> ours)."""
    rename = rename or {}
    return cls(**{o.name: opts[rename.get(o.name, o.name)] for o in cls.options
                  if rename.get(o.name, o.name) in opts and o.name not in fixed}, **fixed)


def _options_of(*classes: type[Pass]) -> tuple[Option, ...]:
    return tuple(o for cls in classes for o in cls.options)


_HW = {o.name: o for o in HwRound.options}

PLAN_OPTIONS = (
    *(o for o in _options_of(SelectChannels, ScoreChannels, LimitChannels)
      if o.name != "profile"),
    Option("profile", str, "x86-epyc", "hardware profile of energy-aware importance, "
           "target-energy and predicted latency"),
    *(o for o in SelectBudget.options if o.name not in ("profile", "trials", "threads")),
    Option("hw-round", str, "off", "snap each group's kept count to the measured latency "
           "staircase of its layers on this backend (see the channel-latency analysis); "
           "round-to then restricts the candidates", ("off", *_HW["backend"].choices)),
    Option("hw-window", float, 0.15, _HW["window"].doc, check=in_range(0.0, 1.0)),
    Option("hw-tolerance", float, 0.03, _HW["tolerance"].doc, check=in_range(0.0, 1.0)),
    Option("hw-trials", int, 8, "hw-round=tvm and latency-source=tvm / tvm-model: "
           "MetaSchedule trials per kernel of each layer (or model) timed (0: TVM's default "
           "schedules); the records go to a database a later compile can reuse",
           check=at_least(0)),
    Option("hw-threads", int, 0, "hw-round and latency-source: intra-op threads while "
           "timing (0: the backend's default)", check=at_least(0)),
    Option("hw-check", bool, True, "hw-round with a ratio: build the model with the snapped "
           "counts and with the counts as selected, time both on the backend, keep the "
           "faster (layers timed in blocks miss what lies between them)"),
)


def check_amount(name: str, given: set[str], opts: dict[str, Any]) -> list[str]:
    """The budget options given (at most one, and not with a ratio)."""
    targets = sorted(k for k in TARGETS if k in given and opts[k])
    if "ratio" in given and targets:
        raise PipelineError(f"{name}: ratio and {targets[0]} both say how much to remove; "
                            "give one")
    if len(targets) > 1:
        raise PipelineError(f"{name}: give one of {', '.join(TARGETS)}, not "
                            f"{' and '.join(targets)}")
    if opts["group-ratios"] and targets:
        raise PipelineError(f"{name}: group-ratios sets each group's ratio and {targets[0]} "
                            "ranks channels across groups; give one or the other")
    return targets


def plan_passes(opts: dict[str, Any], targets: list[str]) -> list[Pass]:
    """The plan passes prune-channels' (or mask's) options stand for, without the step
    that applies the plan."""
    hw = {"trials": opts["hw-trials"], "threads": opts["hw-threads"]}
    out = [_from(ScoreChannels, opts), _from(LimitChannels, opts)]
    if targets:
        out.append(_from(SelectBudget, opts, **hw, profile=opts["profile"]))
    else:
        out.append(_from(SelectChannels, opts))
    if opts["hw-round"] != "off":
        out.append(_from(HwRound, opts, {"window": "hw-window", "tolerance": "hw-tolerance"},
                         backend=opts["hw-round"], **hw))
        if opts["hw-check"] and not targets:
            out.append(HwCheck())
    return out


@register
class PruneChannels(PipelinePass):
    """Remove the least important channels of every coupled group (a named pipeline)."""
    name = "prune-channels"
    options = PLAN_OPTIONS

    def __init__(self, **opts: Any) -> None:  # noqa: ANN401
        super().__init__(**opts)
        self.targets = check_amount(self.name, {k.replace("_", "-") for k in opts}, self.opts)

    def expand(self) -> list[Pass]:
        return [*plan_passes(self.opts, self.targets), RemoveChannels()]


def plan_for(am: Any, select: bool = True, **opts: Any) -> Any:  # noqa: ANN401
    """The PrunePlan that prune-channels<opts> would apply, made on ``am`` and not applied
    (``select=False``: scored and limited, nothing selected yet). ``am`` is left as it
    was, with no plan open."""
    pipeline = PruneChannels(**opts)
    passes = plan_passes(pipeline.opts, pipeline.targets)
    saved, am.plan = getattr(am, "plan", None), None
    try:
        for p in passes[:None if select else 2]:
            p.run(am.graph, am)
        return am.plan
    finally:
        am.plan = saved
