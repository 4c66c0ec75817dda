"""limit-channels: what the open plan may remove, and in what steps."""
from __future__ import annotations

from typing import Any

from prunepass.plan import Limits, PlanPass
from prunepass.pm import Option, register
from prunepass.pm.options import at_least, in_range

_DEFAULT = Limits()


@register
class LimitChannels(PlanPass):
    """Set the limits every selection of the open plan keeps to (before the selection)."""
    name = "limit-channels"
    options = (
        Option("ignore", list, list(_DEFAULT.ignore), "parameter name patterns (fnmatch or "
               "prefix) whose groups are left alone, e.g. [classifier*,fc]"),
        Option("exact-only", bool, _DEFAULT.exact_only, "only prune groups whose removal "
               "equals zeroing (skips channels normalised by layer/group norm)"),
        Option("round-to", int, _DEFAULT.round_to, "kept channels per group are a multiple "
               "of this", check=at_least(1)),
        Option("min-channels", int, _DEFAULT.min_channels, "never keep fewer channels than "
               "this in a group", check=at_least(1)),
        Option("max-ratio", float, _DEFAULT.max_ratio, "channels ranked across groups "
               "(scope=global, budgets): no group loses more than this fraction",
               check=in_range(0.0, 1.0)),
        Option("tie-sizes", bool, _DEFAULT.tie_sizes, "groups one module reshapes with the "
               "same number (the q, k and v head dims of an attention module) keep the same "
               "count, so the module's own class runs the pruned model"),
        Option("distributions", bool, _DEFAULT.distributions, "also prune channels a "
               "softmax is over (the bins of a distribution, as in a detector's box head): "
               "that changes what the model computes, not only its statistics"),
        Option("uniform-layers", bool, _DEFAULT.uniform_layers, "every layer of a kind (the "
               "groups whose producers differ only in a layer index, as layers.*.mlp) keeps "
               "the same count, so one config value (intermediate_size, heads) describes "
               "the model"),
    )

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am, selected=False)
        plan.limits = Limits(ignore=list(self["ignore"]), exact_only=self["exact-only"],
                             round_to=self["round-to"], min_channels=self["min-channels"],
                             max_ratio=self["max-ratio"], tie_sizes=self["tie-sizes"],
                             distributions=self["distributions"],
                             uniform_layers=self["uniform-layers"])
        return {}
