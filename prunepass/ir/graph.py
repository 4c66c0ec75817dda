"""Graph, Node and Value: the IR every pass works on.

A Graph is a DAG of Nodes in topological order. Each Node applies one canonical op
(see ``ops``) to input Values and produces output Values. Values carry a concrete shape
and dtype; parameters, buffers and constants are Values with no producer and a ``param``
name (the frontend's stable name for the tensor, e.g. ``layer1.0.conv1.weight``).

The Graph is a view of a frontend's native model: transforms change the native model
through its adapter and the Graph is rebuilt from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

INPUT = "input"
PARAM = "param"  # a trainable tensor
BUFFER = "buffer"  # a non-trainable state tensor (running statistics)
CONST = "const"  # a tensor constant baked into the model
ACT = "act"  # an intermediate produced by a node

STATE_KINDS = (PARAM, BUFFER, CONST)


@dataclass(eq=False)
class Value:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = ACT
    param: str | None = None
    producer: "Node | None" = None
    users: list["Node"] = field(default_factory=list)
    # Which axes have a symbolic (batch) size in the native model.
    dynamic_axes: tuple[int, ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def itemsize(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 4)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def is_state(self) -> bool:
        return self.kind in STATE_KINDS

    def __repr__(self) -> str:
        return f"%{self.name}{list(self.shape)}"


@dataclass(eq=False)
class Node:
    name: str
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # the native op, for messages and reports
    scope: str = ""  # the module path it came from, for reports

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def __repr__(self) -> str:
        ins = ", ".join(repr(v) for v in self.inputs)
        outs = ", ".join(repr(v) for v in self.outputs)
        return f"{outs} = {self.op}[{self.target}]({ins})"


DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
    "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


class Graph:
    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.state: dict[str, Value] = {}  # param name -> Value

    # -- construction -------------------------------------------------------------------
    def add_input(self, value: Value) -> Value:
        value.kind = INPUT
        self.inputs.append(value)
        return value

    def add_state(self, value: Value) -> Value:
        assert value.param is not None and value.is_state()
        self.state[value.param] = value
        return value

    def add_node(self, node: Node) -> Node:
        for v in node.inputs:
            v.users.append(node)
        for v in node.outputs:
            v.producer = node
        self.nodes.append(node)
        return node

    # -- queries ------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        seen: set[int] = set()
        for v in [*self.inputs, *self.state.values()]:
            seen.add(id(v))
            yield v
        for n in self.nodes:
            for v in [*n.inputs, *n.outputs]:
                if id(v) not in seen:
                    seen.add(id(v))
                    yield v

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def params(self) -> list[Value]:
        return [v for v in self.state.values() if v.kind == PARAM]

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        lines = [f"graph {self.name}({', '.join(repr(v) for v in self.inputs)}):"]
        lines += [f"  {n!r}" for n in self.nodes]
        lines.append(f"  return {', '.join(repr(v) for v in self.outputs)}")
        return "\n".join(lines)
