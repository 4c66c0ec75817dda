"""mask: zero channels or single weights, shapes unchanged.

granularity=channel (default) zeroes the channels prune-channels would remove, by
multiplying activations; its amount is ``ratio`` (``sparsity`` is accepted as an alias and
stored as ``ratio``, so ``mask<ratio=0.5>`` and ``mask<sparsity=0.5>`` are the same pass).

granularity=weight zeroes single weights of conv / linear / matmul layers with a mask kept
in the native model (torch: a parametrization), so fine-tuning cannot regrow them. Its
amount is ``sparsity``: the fraction of each layer's weights (scope=local) or of all
weights (scope=global: one ranking across layers, no layer losing more than max-ratio)
whose importance is lowest. ``threshold`` > 0 instead zeroes everything whose importance is
below that absolute value (both granularities). Importance per weight: magnitude |w|
(``l1``, ``l2`` and ``magnitude`` are the same thing per weight), ``taylor`` |w * dL/dw|
on the calibration batch, or ``random``. Weights masked before count as zero and stay so."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir.graph import Graph
from prunepass.pm import Option, PreservedAnalyses, TransformResult, register
from prunepass.pm.options import in_range
from prunepass.passes.analysis.importance import CRITERIA
from prunepass.passes.analysis.sparsity import WeightLayer, ignored, unweighted_layers, weight_layers
from prunepass.passes.transform.channel_plan import PLAN_OPTIONS, _ignored, _keep_every_tensor_alive
from prunepass.passes.transform.prune_channels import _ChannelTransform

WEIGHT_CRITERIA = ("l1", "l2", "magnitude", "taylor", "random")
# what the weight granularity reads; every other channel-plan option is for channels only
WEIGHT_OPTIONS = {"importance", "scope", "max-ratio", "ignore", "seed", "granularity",
                  "sparsity", "threshold"}


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


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


def weight_scores(am: Any, layers: list[WeightLayer], criterion: str,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A score per weight (low goes first); weights already masked score -inf."""
    masks = am.model.weight_masks()
    grads = am.model.state_gradients(am.calibration, am.loss_fn) if criterion == "taylor" \
        else {}
    rng = np.random.default_rng(seed)
    out = {}
    for l in layers:
        w = am.model.state_array(l.param)
        if criterion == "taylor":
            s = np.abs(w * grads.get(l.param, np.zeros_like(w)))
        elif criterion == "random":
            s = rng.random(w.shape)
        else:
            s = np.abs(w)
        s = s.astype(np.float64)
        if l.param in masks:
            s[~masks[l.param]] = -np.inf
        out[l.param] = s
    return out


def _lowest(s: np.ndarray, k: int) -> np.ndarray:
    mask = np.ones(s.size, bool)
    mask[np.argsort(s, axis=None, kind="stable")[:k]] = False
    return mask.reshape(s.shape)


def global_masks(scores: dict[str, np.ndarray], sparsity: float,
                 max_ratio: float) -> dict[str, np.ndarray]:
    """One ranking of every weight; the lowest ``sparsity`` of them go, skipping those of a
    layer that has already lost ``max_ratio`` of its weights."""
    names = list(scores)
    sizes = np.array([scores[n].size for n in names])
    flat = np.concatenate([scores[n].ravel() for n in names])
    layer = np.repeat(np.arange(len(names)), sizes)
    order = np.argsort(flat, kind="stable")
    rank = np.empty(flat.size, np.int64)  # position of each weight among its layer's, in order
    lo = layer[order]
    for i in range(len(names)):
        at = np.flatnonzero(lo == i)
        rank[at] = np.arange(len(at))
    cap = np.floor(max_ratio * sizes).astype(np.int64)
    chosen = order[rank < cap[lo]][: int(round(sparsity * flat.size))]
    keep = np.ones(flat.size, bool)
    keep[chosen] = False
    return {n: part.reshape(scores[n].shape)
            for n, part in zip(names, np.split(keep, np.cumsum(sizes)[:-1]))}


def layer_rows(am: Any, layers: list[WeightLayer]) -> list[dict[str, Any]]:
    rows = []
    for l in layers:
        w = am.model.state_array(l.param)
        nz = int(np.count_nonzero(w))
        rows.append({"param": l.param, "shape": list(l.shape), "numel": int(w.size),
                     "nonzero": nz, "sparsity": round(1 - nz / w.size, 6)})
    return rows


@register
class Mask(_ChannelTransform):
    """Zero channels (granularity=channel) or single weights (granularity=weight), shapes kept."""
    name = "mask"
    mode = "mask"
    options = MASK_OPTIONS

    def __init__(self, **opts: Any) -> None:
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
        if self["importance"] == "l1":
            self.opts["importance"] = "l2"  # identical per weight: one spelling
        if self["scope"] == "global" and self["sparsity"] > self["max-ratio"] \
                and self["threshold"] == 0:
            raise PipelineError(f"{where}: global sparsity {self['sparsity']} exceeds "
                                f"max-ratio {self['max-ratio']} (no layer loses more than "
                                "that); raise max-ratio")

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        if self["granularity"] == "weight":
            return self._weights(graph, am)
        if self["threshold"] > 0:
            return self._channels_below(graph, am)
        return super().run(graph, am)

    def _weights(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        layers = [l for l in weight_layers(graph) if not ignored(l.param, self["ignore"])]
        if not layers:
            others = unweighted_layers(graph)
            raise PlanError(
                f"{self.text()}: no conv/linear/matmul layer of {graph.name} has a weight "
                "parameter to mask" + (f" ({', '.join(others[:4])} multiply activations)"
                                       if others else "") +
                (f"; ignore={self['ignore']} may exclude them" if self["ignore"] else ""))
        scores = weight_scores(am, layers, self["importance"], self["seed"])
        if self["threshold"] > 0:
            masks = {p: s >= self["threshold"] for p, s in scores.items()}
        elif self["scope"] == "global":
            masks = global_masks(scores, self["sparsity"], self["max-ratio"])
        else:
            masks = {p: _lowest(s, int(round(self["sparsity"] * s.size)))
                     for p, s in scores.items()}
        old = am.model.weight_masks()
        masks = {p: mk for p, mk in masks.items() if not mk.all() or p in old}
        if masks:
            am.model.set_weight_masks(masks)
        rows = layer_rows(am, layers)
        numel = sum(r["numel"] for r in rows)
        zeros = numel - sum(r["nonzero"] for r in rows)
        changes = {"granularity": "weight", "layers": rows, "masked_layers": len(masks),
                   "weights": numel, "zero_weights": zeros,
                   "weight_sparsity": round(zeros / numel, 6)}
        preserved = PreservedAnalyses.only("shapes", "channel-groups", "cost") if masks \
            else PreservedAnalyses.all()
        return TransformResult(preserved, changes)

    def _channels_below(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        """Channels whose importance is below the threshold, at least min-channels kept."""
        cg = am.get("channel-groups")
        scores = am.get("importance", criterion=self["importance"], seed=self["seed"])
        removed = np.zeros(cg.n_classes, bool)
        for g in cg.groups:
            ok = g.prunable & (g.exact if self["exact-only"] else True)
            if not ok.any() or _ignored(g, self["ignore"]):
                continue
            cand = g.classes[ok]
            low = cand[scores[cand] < self["threshold"]]
            room = g.size - max(self["min-channels"], 1)
            removed[low[np.argsort(scores[low], kind="stable")[:max(room, 0)]]] = True
        _keep_every_tensor_alive(cg, scores, removed)
        groups = []
        for g in cg.groups:
            s = g.summary()
            s["kept"] = int(g.size - removed[g.classes].sum())
            groups.append(s)
        changes = {"removed_classes": int(removed.sum()),
                   "groups": [g for g in groups if g["kept"] < g["channels"]],
                   "groups_total": len(groups),
                   "groups_pruned": sum(g["kept"] < g["channels"] for g in groups),
                   "barriers": cg.barriers}
        keep = cg.keep_for(removed)
        if not keep:
            return TransformResult(PreservedAnalyses.all(), changes)
        am.model.apply_keep(keep, "mask")
        return TransformResult(PreservedAnalyses.none(), changes)
