"""cost: MACs, parameters, parameter bytes and activation bytes, per node and in total.

Counted at the op level from the IR's concrete shapes, so functional ops and attention
matmuls count too. A MAC is one multiply-accumulate; normalisation and elementwise ops
count no MACs (they are memory-bound) but their bytes are counted."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node
from prunepass.passes.rules.linear import parse_einsum
from prunepass.pm import AnalysisPass, register


def node_macs(node: Node) -> int:
    out = node.outputs[0] if node.outputs else None
    if out is None:
        return 0
    if node.op == ops.CONV:
        w = node.inputs[1]
        k = int(np.prod(w.shape[2:], dtype=np.int64))
        if node.attrs["transposed"]:  # every input element scatters into out/g * k outputs
            return node.inputs[0].numel * w.shape[1] * k
        return out.numel * w.shape[1] * k
    if node.op == ops.LINEAR:
        return out.numel * node.inputs[1].shape[1]
    if node.op == ops.MATMUL:
        return out.numel * node.inputs[0].shape[-1]
    if node.op == ops.ATTENTION:
        q, k, v = node.inputs[:3]
        scores = out.numel // out.shape[-1] * k.shape[-2]  # batch * heads * L * S
        return scores * q.shape[-1] + scores * v.shape[-1]
    if node.op == ops.EINSUM:
        parsed = parse_einsum(node.attrs["equation"], len(node.inputs))
        if parsed is None:
            return 0
        sizes: dict[str, int] = {}
        for term, v in zip(parsed[0], node.inputs):
            for c, s in zip(term, v.shape):
                sizes[c] = max(sizes.get(c, 1), s)
        return int(np.prod(list(sizes.values()), dtype=np.int64))
    return 0


@dataclass
class NodeCost:
    node: str
    op: str
    scope: str
    macs: int
    params: int
    param_bytes: int
    act_bytes: int  # bytes written (outputs)
    read_bytes: int  # bytes read (inputs, parameters included)


@dataclass
class Cost:
    nodes: list[NodeCost]
    totals: dict[str, int]

    def by_node(self) -> dict[str, NodeCost]:
        return {c.node: c for c in self.nodes}


def compute_cost(graph: Graph) -> Cost:
    seen: set[int] = set()
    rows = []
    for n in graph.nodes:
        params = pbytes = 0
        for v in n.inputs:
            if v.kind == "param" and id(v) not in seen:
                seen.add(id(v))
                params += v.numel
                pbytes += v.nbytes
        rows.append(NodeCost(n.name, n.op, n.scope, int(node_macs(n)), params, pbytes,
                             sum(o.nbytes for o in n.outputs), sum(v.nbytes for v in n.inputs)))
    # parameters no node reads still count towards the model size
    unused = [v for v in graph.params() if id(v) not in seen]
    totals = {
        "macs": sum(r.macs for r in rows),
        "params": sum(r.params for r in rows) + sum(v.numel for v in unused),
        "param_bytes": sum(r.param_bytes for r in rows) + sum(v.nbytes for v in unused),
        "act_bytes": sum(r.act_bytes for r in rows),
    }
    return Cost(rows, totals)


@register
class CostAnalysis(AnalysisPass):
    """MACs, parameters, parameter bytes, activation bytes per node and in total."""
    name = "cost"

    def run(self, graph: Graph, am) -> Cost:  # noqa: ANN001
        return compute_cost(graph)
