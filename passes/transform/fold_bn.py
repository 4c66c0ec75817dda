"""fold-bn: fold inference batch norms into the conv or linear layer that feeds them."""
from __future__ import annotations

from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node
from prunepass.pm import PreservedAnalyses, TransformPass, TransformResult, register


def foldable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    outputs = {id(v) for v in graph.outputs}
    pairs = []
    for bn in graph.nodes:
        if bn.op != ops.BATCHNORM or bn.attrs.get("instance"):
            continue
        if not {"running_mean", "running_var"} <= set(bn.attrs.get("has", [])):
            continue
        x = bn.inputs[0]
        p = x.producer
        if p is None or len(x.users) != 1 or id(x) in outputs:
            continue
        if len(p.inputs) < 2 or p.inputs[1].kind != "param":
            continue
        if p.op == ops.CONV and not p.attrs["transposed"]:
            pairs.append((p, bn))
        elif p.op == ops.LINEAR and x.ndim == 2:
            pairs.append((p, bn))
    return pairs


@register
class FoldBatchNorm(TransformPass):
    """Fold inference batch norms into the preceding conv/linear (output unchanged)."""
    name = "fold-bn"

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        pairs = foldable_pairs(graph)
        if pairs:
            am.model.fold_batchnorms(pairs)
        return TransformResult(PreservedAnalyses.none() if pairs else PreservedAnalyses.all(),
                               {"folded": [bn.name for _, bn in pairs]})
