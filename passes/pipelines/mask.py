"""mask: zero channels or single weights, shapes unchanged (a named pipeline).

granularity=channel (default) is prune-channels with mask-channels in place of
remove-channels: its amount is ``ratio`` (``sparsity`` is accepted as an alias and stored
as ``ratio``, so ``mask<ratio=0.5>`` and ``mask<sparsity=0.5>`` are the same pipeline);
``threshold`` > 0 selects channels scoring below it (select-threshold).
granularity=weight is mask-weights: see passes/transform/mask_weights.py."""
from __future__ import annotations

from typing import Any

from prunepass.errors import PipelineError
from prunepass.pm import Option, Pass, PipelinePass, register
from prunepass.pm.options import in_range
from prunepass.passes.analysis.importance import CRITERIA
from prunepass.passes.pipelines.prune_channels import (PLAN_OPTIONS, _from, check_amount,
                                                       plan_passes)
from prunepass.passes.plan.limit_channels import LimitChannels
from prunepass.passes.plan.score_channels import ScoreChannels
from prunepass.passes.plan.select_threshold import SelectThreshold
from prunepass.passes.transform.mask_weights import WEIGHT_CRITERIA, MaskWeights, _non_negative
from prunepass.passes.transform.remove_channels import MaskChannels

# what the weight granularity reads; every other option is for channels only
WEIGHT_OPTIONS = {o.name for o in MaskWeights.options} | {"granularity"}

MASK_OPTIONS: tuple[Option, ...] = tuple(
    Option("importance", str, "l2", "channel or weight score (magnitude = l2); per weight "
           "l1/l2/magnitude are |w|, taylor |w*dL/dw|", (*CRITERIA, "magnitude"))
    if o.name == "importance" else o for o in PLAN_OPTIONS) + (
    Option("granularity", str, "channel", "channel: zero whole channels (activations); "
           "weight: zero single weights with a mask kept through fine-tuning",
           ("channel", "weight")),
    Option("sparsity", float, 0.5, "granularity=weight: fraction of the weights zeroed; "
           "with granularity=channel an alias of ratio", check=in_range(0.0, 1.0)),
    Option("threshold", float, 0.0, "if > 0: zero what scores below this absolute value "
           "instead of a fraction", check=_non_negative),
)


@register
class Mask(PipelinePass):
    """Zero channels (granularity=channel) or single weights (granularity=weight), shapes kept."""
    name = "mask"
    options = MASK_OPTIONS

    def __init__(self, **opts: Any) -> None:  # noqa: ANN401
        super().__init__(**opts)
        given = {k.replace("_", "-") for k in opts}
        where = f"pass 'mask' (granularity={self['granularity']})"
        amount = {"ratio", "sparsity"} & given
        if self["threshold"] > 0 and amount:
            raise PipelineError(f"{where}: give either threshold (absolute) or "
                                f"{'/'.join(sorted(amount))} (a fraction), not both")
        if self["importance"] == "magnitude":
            self.opts["importance"] = "l2"
        if self["granularity"] == "channel":
            self.targets = check_amount(self.name, given, self.opts)
            if "sparsity" in given:
                if "ratio" in given and self["ratio"] != self["sparsity"]:
                    raise PipelineError(f"{where}: sparsity is an alias of ratio; they differ "
                                        f"({self['sparsity']} vs {self['ratio']})")
                self.opts["ratio"] = self["sparsity"]
                self.opts["sparsity"] = 0.5
            return
        bad = sorted(given - WEIGHT_OPTIONS)
        if bad:
            raise PipelineError(f"{where}: option {bad[0]!r} is for granularity=channel; the "
                                "amount of weights is 'sparsity'")
        if self["importance"] not in WEIGHT_CRITERIA:
            raise PipelineError(f"{where}: importance {self['importance']!r} scores channels; "
                                f"per weight use one of {', '.join(WEIGHT_CRITERIA)}")
        self.weights = _from(MaskWeights, self.opts)

    def expand(self) -> list[Pass]:
        if self["granularity"] == "weight":
            return [self.weights]
        if self["threshold"] > 0:
            return [_from(ScoreChannels, self.opts), _from(LimitChannels, self.opts),
                    SelectThreshold(threshold=self["threshold"]), MaskChannels()]
        return [*plan_passes(self.opts, self.targets), MaskChannels()]
