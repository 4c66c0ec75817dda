"""select-budget: the plan's selection by a MACs, energy or latency budget.

Channels are ranked across groups and the least pruning whose plan meets the budget is
searched (passes/plan/budget.py). Refinements added later (hw-round, your own) make the
search run again with them inside, so the refined plan meets the budget too."""
from __future__ import annotations

from typing import Any

from prunepass.errors import PipelineError
from prunepass.plan import PlanPass
from prunepass.pm import Option, register
from prunepass.pm.options import at_least
from prunepass.passes.plan.budget import metric_fn, parse_target, search_ratio
from prunepass.passes.plan.select_channels import selection_changes
from prunepass.passes.plan.selection import choose_removed

TARGETS = ("target-macs", "target-energy", "target-latency-ms")


def latency_label(source: str, profile: str, trials: int) -> str:
    if source == "profile":
        return f"latency (ms, predicted by {profile})"
    if source == "tvm-model":
        return (f"latency (ms, each planned model compiled by tvm for this CPU, "
                f"{trials} trials per kernel, and measured here)")
    if source == "tvm":
        source = f"tvm ({trials} trials per kernel)"
    return f"latency (ms, layers measured alone on {source} here, the rest predicted by {profile})"


@register
class SelectBudget(PlanPass):
    """Select the least pruning (channels ranked across groups) that meets a budget."""
    name = "select-budget"
    options = (
        Option("target-macs", str, "", "MACs budget: absolute (2e9) or relative (0.5x)"),
        Option("target-energy", str, "", "modelled energy budget in mJ per inference (3.5) "
               "or relative (0.5x), with `profile`"),
        Option("target-latency-ms", str, "", "latency budget in ms (12.5) or relative "
               "(0.5x), predicted as `latency-source` says"),
        Option("latency-source", str, "profile", "target-latency-ms: profile = `profile`'s "
               "latency model (roofline, or calibrated: see prunepass.hardware.calibrate); "
               "ort / torch / tvm = every conv and linear layer timed alone on that backend "
               "here (cached; see the channel-latency analysis), the profile for the other "
               "nodes; tvm-model = every planned model built, compiled by TVM for this CPU "
               "and measured: slow, but what a TVM deployment gets",
               ("profile", "ort", "torch", "tvm", "tvm-model")),
        Option("profile", str, "x86-epyc", "hardware profile of target-energy and of "
               "predicted latency"),
        Option("trials", int, 8, "latency-source=tvm / tvm-model: MetaSchedule trials per "
               "kernel (0: TVM's default schedules)", check=at_least(0)),
        Option("threads", int, 0, "latency-source ort / torch / tvm: intra-op threads while "
               "timing (0: the backend's default)", check=at_least(0)),
    )

    def __init__(self, **opts: Any) -> None:  # noqa: ANN401
        super().__init__(**opts)
        given = [k for k in TARGETS if self[k]]
        if len(given) != 1:
            raise PipelineError(f"{self.name}: give one of {', '.join(TARGETS)}"
                                + (f", not {' and '.join(given)}" if given else ""))
        self.kind_of = given[0][len("target-"):]
        self.target = parse_target(self[given[0]], given[0], self.name)

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am)  # plan.select refuses a second selection
        kind = self.kind_of
        metric = metric_fn(kind.split("-")[0], self["profile"], self["latency-source"],
                           self["threads"], self["trials"], am.model)
        what = {"macs": "MACs", "energy": "energy (mJ, modelled)",
                "latency-ms": latency_label(self["latency-source"], self["profile"],
                                            self["trials"])}[kind]

        def search(finish):  # noqa: ANN001, ANN202
            def choose(r: float):  # noqa: ANN202
                return finish(choose_removed(plan, r, "global")[0])
            _, budget = search_ratio(am.graph, plan.cg, choose, metric, *self.target,
                                     plan.limits.max_ratio, what)
            removed, plan.tied = choose_removed(plan, budget["ratio"], "global")
            return removed, {"budget": budget}
        plan.select(self.text(), search)
        return {**selection_changes(plan), "budget": plan.notes["budget"]}
