"""nm-sparsity: keep the N most important of every M consecutive weights along the
reduction dimension (2:4 is what sparse tensor cores run at double rate).

Blocks run along each weight layer's reduction axis (see ``weight_layers``): a linear's
input features, a conv's input channels at every kernel position, a matmul's inner
dimension. A layer whose reduction dimension is not a multiple of M is skipped and listed
in the record. The zeros are a weight mask kept in the native model (fine-tuning cannot
refill them), and afterwards every block of every changed layer is checked."""
from __future__ import annotations

import numpy as np

from prunepass.errors import PipelineError, PlanError, VerificationError
from prunepass.ir.graph import Graph
from prunepass.pm import Option, PreservedAnalyses, TransformPass, TransformResult, register
from prunepass.pm.options import at_least
from prunepass.passes.analysis.sparsity import (
    ignored, nm_blocks, nm_violations, unweighted_layers, weight_layers)
from prunepass.passes.transform.mask_weights import WEIGHT_CRITERIA, layer_rows, weight_scores


def nm_mask(scores: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """True for the ``n`` highest scores of each block of ``m`` along ``axis``."""
    blocks = nm_blocks(scores, m, axis)
    order = np.argsort(blocks, axis=-1, kind="stable")
    keep = np.zeros(blocks.shape, bool)
    np.put_along_axis(keep, order[..., m - n:], True, axis=-1)
    moved = np.moveaxis(scores, axis, -1).shape
    return np.moveaxis(keep.reshape(moved), -1, axis)


@register
class NMSparsity(TransformPass):
    """Keep N of every M weights along the reduction dimension (2:4 structured sparsity)."""
    name = "nm-sparsity"
    options = (
        Option("n", int, 2, "weights kept per block", check=at_least(0)),
        Option("m", int, 4, "block length along the reduction dimension", check=at_least(1)),
        Option("importance", str, "l2", "per weight: magnitude (l1/l2/magnitude), taylor, "
               "random", WEIGHT_CRITERIA),
        Option("ignore", list, [], "parameter name patterns left dense, e.g. [fc2*]"),
        Option("seed", int, 0, "seed of the random importance", check=at_least(0)),
    )

    def __init__(self, **opts) -> None:  # noqa: ANN003
        super().__init__(**opts)
        if self["n"] > self["m"]:
            raise PipelineError(f"pass 'nm-sparsity': n={self['n']} keeps more weights than a "
                                f"block of m={self['m']} holds; need n <= m")
        if self["importance"] in ("l1", "magnitude"):
            self.opts["importance"] = "l2"

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        n, m = self["n"], self["m"]
        layers, skipped = [], []
        for l in weight_layers(graph):
            if ignored(l.param, self["ignore"]):
                continue
            size = l.shape[l.axis]
            if size % m:
                skipped.append({"param": l.param, "why": f"reduction dimension {size} (axis "
                                f"{l.axis}) is not a multiple of m={m}"})
            else:
                layers.append(l)
        if not layers:
            what = "; ".join(f"{s['param']}: {s['why']}" for s in skipped[:4]) or \
                "no conv/linear/matmul layer has a weight parameter" + (
                    f" ({', '.join(unweighted_layers(graph)[:4])} multiply activations)"
                    if unweighted_layers(graph) else "")
            raise PlanError(f"{self.text()}: nothing to sparsify in {graph.name}: {what}")
        changes = {"n": n, "m": m, "skipped": skipped}
        if n == m:  # every weight kept
            changes["layers"] = layer_rows(am, layers)
            return TransformResult(PreservedAnalyses.all(), changes)
        scores = weight_scores(am, layers, self["importance"], self["seed"])
        am.model.set_weight_masks({l.param: nm_mask(scores[l.param], n, m, l.axis)
                                   for l in layers})
        for l in layers:  # the model itself must now obey N:M, read back
            bad = nm_violations(am.model.state_array(l.param), n, m, l.axis)
            if bad:
                raise VerificationError(f"{self.text()}: {l.param} has {bad} blocks of {m} "
                                        f"with more than {n} non-zeros after masking")
        rows = layer_rows(am, layers)
        numel = sum(r["numel"] for r in rows)
        changes.update(layers=rows, weights=numel,
                       zero_weights=numel - sum(r["nonzero"] for r in rows), verified_nm=True)
        return TransformResult(PreservedAnalyses.only("shapes", "channel-groups", "cost"),
                               changes)
