"""mask-weights: zero single weights of conv / linear / matmul layers, shapes kept.

The mask is kept in the native model (torch: a parametrization), so fine-tuning cannot
regrow what it zeroes. Its amount is ``sparsity``: the fraction of each layer's weights
(scope=local) or of all weights (scope=global: one ranking across layers, no layer losing
more than max-ratio) whose importance is lowest. ``threshold`` > 0 instead zeroes every
weight whose importance is below that absolute value. Importance per weight: magnitude |w|
(``l1``, ``l2`` and ``magnitude`` are the same thing per weight), ``taylor`` |w * dL/dw|
on the calibration batch, or ``random``. Weights masked before count as zero and stay so."""
from __future__ import annotations

from typing import Any

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir.graph import Graph
from prunepass.pm import Option, PreservedAnalyses, TransformPass, TransformResult, register
from prunepass.pm.options import at_least, in_range
from prunepass.passes.analysis.sparsity import WeightLayer, ignored, unweighted_layers, weight_layers

WEIGHT_CRITERIA = ("l1", "l2", "magnitude", "taylor", "random")


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


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
class MaskWeights(TransformPass):
    """Zero single weights with a mask kept through fine-tuning, shapes kept."""
    name = "mask-weights"
    options = (
        Option("sparsity", float, 0.5, "fraction of the weights zeroed",
               check=in_range(0.0, 1.0)),
        Option("importance", str, "l2", "weight score: l1/l2/magnitude are |w|, taylor "
               "|w*dL/dw| on the calibration batch", WEIGHT_CRITERIA),
        Option("scope", str, "local", "local: every layer loses `sparsity`; global: one "
               "ranking across layers", ("local", "global")),
        Option("max-ratio", float, 0.9, "global scope: no layer loses more than this "
               "fraction", check=in_range(0.0, 1.0)),
        Option("threshold", float, 0.0, "if > 0: zero what scores below this absolute "
               "value instead of `sparsity`", check=_non_negative),
        Option("ignore", list, [], "parameter name patterns (fnmatch or prefix) left alone"),
        Option("seed", int, 0, "seed of the random importance", check=at_least(0)),
    )

    def __init__(self, **opts: Any) -> None:  # noqa: ANN401
        super().__init__(**opts)
        if self["importance"] in ("l1", "magnitude"):
            self.opts["importance"] = "l2"  # identical per weight: one spelling
        if self["scope"] == "global" and self["sparsity"] > self["max-ratio"] \
                and self["threshold"] == 0:
            raise PipelineError(f"pass {self.name!r}: global sparsity {self['sparsity']} "
                                f"exceeds max-ratio {self['max-ratio']} (no layer loses more "
                                "than that); raise max-ratio")

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
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
