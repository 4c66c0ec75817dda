"""Structural checks of a Graph: every value is defined before use, use lists agree with
node inputs, and shapes are consistent where the op fixes them."""
from __future__ import annotations

from prunepass.errors import VerificationError
from prunepass.ir import ops
from prunepass.ir.graph import Graph


def verify(graph: Graph) -> None:
    defined: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.state.values()}
    problems: list[str] = []
    for node in graph.nodes:
        if node.op not in ops.ALL:
            problems.append(f"node {node.name}: unknown canonical op {node.op!r}")
        for v in node.inputs:
            if id(v) not in defined:
                problems.append(f"node {node.name}: input {v.name} is used before it is defined")
            if node not in v.users:
                problems.append(f"node {node.name}: missing from the users of {v.name}")
        for v in node.outputs:
            if v.producer is not node:
                problems.append(f"node {node.name}: output {v.name} names another producer")
            defined.add(id(v))
        if node.op == ops.CONV and len(node.inputs) >= 2:
            x, w = node.inputs[0], node.inputs[1]
            groups = node.attrs.get("groups", 1)
            cin = w.shape[0] if node.attrs.get("transposed") else w.shape[1] * groups
            if x.shape[1] != cin:
                problems.append(
                    f"node {node.name}: input has {x.shape[1]} channels, weight expects {cin}")
        if node.op == ops.LINEAR and node.inputs[0].shape[-1] != node.inputs[1].shape[1]:
            problems.append(f"node {node.name}: input features {node.inputs[0].shape[-1]} "
                            f"!= weight in-features {node.inputs[1].shape[1]}")
    for v in graph.outputs:
        if id(v) not in defined:
            problems.append(f"graph output {v.name} is never defined")
    if problems:
        raise VerificationError("IR verification failed: " + "; ".join(problems[:5])
                                + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
