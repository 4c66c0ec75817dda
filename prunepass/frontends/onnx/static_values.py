"""Static values: tensors that an ONNX graph computes from constants and from the sizes of
other tensors (the Shape -> Gather -> Concat -> Reshape chains exporters emit). They are
evaluated here rather than becoming IR nodes, and for every element we record where it
came from, so that the adapter can rewrite it when a size changes:

  lit   (tensor, flat index) when the element is a copy of one element of an initializer
        or Constant (editing that literal changes it), else None;
  deps  the (value, axis) sizes it was computed from (through Shape or Size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

Dep = tuple[str, int]
Lit = tuple[str, int]

SMALL = 64  # element-wise provenance is kept for tensors up to this many elements
FOLD_LIMIT = 1 << 20  # larger results are left to the runtime
# Float initializers up to this size are static like shape data (eps, a scale); larger
# ones are weights: they fold only through ops that compute with them (a mask built by
# ScatterND on a constant), never through ops that merely move them (a Transpose of a
# weight stays an IR node, so the weight keeps its name and its importance).
FLOAT_LITERAL_LIMIT = 1

NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Multinomial", "Bernoulli", "If", "Loop", "Scan", "Dropout"}
# Ops that only move elements of their data inputs (input 0, or all inputs for Concat):
# evaluating them on index arrays says which input element each output element copies.
MOVE_OPS = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice",
            "Concat", "Transpose", "Expand", "Tile", "Split", "GatherElements"}
CAST_OPS = {"Cast", "CastLike"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Max", "Min", "Sum", "Mean",
               "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
               "Xor", "Not", "Neg", "Abs", "Sqrt", "Ceil", "Floor", "Round", "Reciprocal",
               "Exp", "Log", "Sign", "Relu", "Where", "BitShift", "IsNaN", "IsInf",
               "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Clip"}


@dataclass
class Static:
    value: np.ndarray
    deps: frozenset  # every (value, axis) size any element depends on
    lits: list[Lit | None] | None = None  # per element, for tensors of at most SMALL elements
    edeps: list[frozenset] | None = None  # per element deps, same condition
    literal: bool = False  # an initializer or Constant output itself

    @property
    def elementwise(self) -> bool:
        return self.lits is not None


def literal_static(name: str, value: np.ndarray) -> Static:
    small = value.size <= SMALL
    return Static(value, frozenset(), [(name, i) for i in range(value.size)] if small else None,
                  [frozenset()] * value.size if small else None, literal=True)


def is_static_literal(value: np.ndarray) -> bool:
    """Integer and boolean literals are shape data; float literals only when tiny."""
    if value.dtype.kind in "biu":
        return True
    return value.size <= FLOAT_LITERAL_LIMIT


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise ValueError(f"Constant with attribute {a.name} is not supported")


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


class Folder:
    """Evaluates foldable nodes one at a time, in graph order."""

    def __init__(self, opsets: dict[str, int]) -> None:
        self.opsets = opsets

    def _eval(self, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ev = ReferenceEvaluator(node, opsets=self.opsets)
        return [np.asarray(x) for x in ev.run(None, feeds)]

    def shape_of(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> list[Static]:
        x = node.input[0]
        if node.op_type == "Size":
            return [Static(np.array(int(np.prod(shape)), dtype=np.int64),
                           frozenset((x, a) for a in range(len(shape))),
                           [None], [frozenset((x, a) for a in range(len(shape)))])]
        r = len(shape)
        start, end = _attr(node, "start", 0), _attr(node, "end", r)
        start = min(max(start + r if start < 0 else start, 0), r)
        end = min(max(end + r if end < 0 else end, 0), r)
        axes = list(range(start, end))
        edeps = [frozenset({(x, a)}) for a in axes]
        return [Static(np.array([shape[a] for a in axes], dtype=np.int64),
                       frozenset((x, a) for a in axes), [None] * len(axes), edeps)]

    def evaluate(self, node: onnx.NodeProto, ins: list[Static | None]) -> list[Static] | None:
        """Outputs of a node whose inputs are all static, or None if it cannot be folded."""
        feeds = {n: s.value for n, s in zip(node.input, ins) if n and s is not None}
        try:
            outs = self._eval(node, feeds)
        except Exception:  # an op the reference evaluator lacks: leave it to the IR
            return None
        if any(o.size > FOLD_LIMIT for o in outs):
            return None
        present = [s for s in ins if s is not None]
        deps = frozenset().union(*(s.deps for s in present)) if present else frozenset()
        if all(o.size <= SMALL for o in outs):
            per = self._provenance(node, ins, outs, feeds)
            if per is None:  # computed: every element depends on everything read
                per = [([None] * o.size, [deps] * o.size) for o in outs]
            return [Static(o, frozenset().union(*e) if e else frozenset(), l, e)
                    for o, (l, e) in zip(outs, per)]
        return [Static(o, deps) for o in outs]

    def _provenance(self, node: onnx.NodeProto, ins: list[Static | None], outs: list[np.ndarray],
                    feeds: dict[str, np.ndarray]):  # noqa: ANN202
        op = node.op_type
        if op in MOVE_OPS:
            data = list(range(len(ins))) if op == "Concat" else [0]
            if any(ins[i] is None or not ins[i].elementwise for i in data):
                return None
            offs, total, idx_feeds = {}, 0, dict(feeds)
            for i in data:
                v = ins[i].value
                offs[i] = total
                idx_feeds[node.input[i]] = np.arange(total, total + v.size,
                                                     dtype=np.int64).reshape(v.shape)
                total += v.size
            if len(set(node.input[i] for i in data)) != len(data):
                return None  # the same tensor twice: numbering would clash
            try:
                moved = self._eval(node, idx_feeds)
            except Exception:
                return None
            flat_l: list[Lit | None] = []
            flat_e: list[frozenset] = []
            for i in data:
                flat_l += ins[i].lits
                flat_e += ins[i].edeps
            return [([flat_l[k] for k in m.ravel()], [flat_e[k] for k in m.ravel()])
                    for m in moved]
        if op in CAST_OPS:
            s = ins[0]
            return [(list(s.lits), list(s.edeps))] if s is not None and s.elementwise else None
        if op in ELEMENTWISE and len(outs) == 1:
            out = outs[0]
            if any(s is not None and not s.elementwise for s in ins):
                return None
            edeps = [frozenset()] * out.size
            picks = []
            for s in ins:
                if s is None:
                    picks.append(None)
                    continue
                ix = np.broadcast_to(np.arange(s.value.size).reshape(s.value.shape),
                                     out.shape).ravel()
                picks.append(ix)
                edeps = [e | s.edeps[k] for e, k in zip(edeps, ix)]
            lits: list[Lit | None] = [None] * out.size
            if op == "Where" and all(p is not None for p in picks):
                cond = ins[0].value.astype(bool).ravel()[picks[0]]
                lits = [ins[1].lits[a] if c else ins[2].lits[b]
                        for c, a, b in zip(cond, picks[1], picks[2])]
            return [(lits, edeps)]
        return None


def static_inputs_ok(node: onnx.NodeProto, static: dict[str, Static],
                     weights: set[str]) -> bool:
    names = [n for n in node.input if n]
    if not names or not all(n in static or n in weights for n in names):
        return False
    return not (node.op_type in MOVE_OPS | CAST_OPS and any(n in weights for n in names))


def subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names read inside a node's subgraphs (If/Loop/Scan bodies) from the outer scope."""
    used: set[str] = set()
    for a in node.attribute:
        graphs: Iterable[onnx.GraphProto] = [a.g] if a.type == onnx.AttributeProto.GRAPH \
            else (a.graphs if a.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                for i in n.input:
                    if i and i not in defined:
                        used.add(i)
                used |= {x for x in subgraph_names(n) if x not in defined}
                defined.update(n.output)
    return used
