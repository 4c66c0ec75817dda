"""ONNX ops -> canonical IR ops.

``canonicalize(node, cx)`` returns ``(op, tensor_inputs, attrs)`` for one ONNX node that was
not folded into a static value. Inputs that are not tensors of the IR (a Reshape target,
Slice bounds, Resize sizes, Clip bounds...) are left out: the adapter rewrites them when a
size they describe changes. Ops not listed here become ``barrier`` nodes: nothing that
touches them is pruned, and the report names them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from prunepass.frontends.onnx.facts import Facts
from prunepass.ir import ops

Canon = tuple[str, list[str], dict[str, Any]]

UNARY_OPS = {
    "Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Gelu", "Erf", "Exp", "Log",
    "Sqrt", "Reciprocal", "Neg", "Abs", "Softplus", "Softsign", "Elu", "LeakyRelu", "Selu",
    "Celu", "Mish", "Identity", "Floor", "Ceil", "Round", "Sin", "Cos", "Tan", "Asin", "Acos",
    "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "Sign", "IsNaN", "IsInf",
    "ThresholdedRelu", "Shrink", "Swish", "Cast", "BitwiseNot",
}
BINARY_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}
# zero-neutral reductions map to the names the reduce rule knows
REDUCE_FNS = {
    "ReduceSum": "sum", "ReduceSumSquare": "sum", "ReduceL1": "norm", "ReduceL2": "norm",
    "ReduceMean": "mean", "ReduceMax": "amax", "ReduceMin": "amin", "ReduceProd": "prod",
    "ReduceLogSumExp": "logsumexp", "ReduceLogSum": "logsum",
}
# ops 18+ take reduction axes as an input; ReduceSum did from 13
AXES_INPUT_SINCE = {"ReduceSum": 13}
POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxPool", "AveragePool",
            "LpPool", "Resize", "Upsample"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax", "Hardmax"}
# a selection of ops whose channel semantics are deliberately not modelled
BARRIER_WHY = {
    "DepthToSpace": "moves channels into space", "SpaceToDepth": "moves space into channels",
    "Tile": "repeats along axes", "LRN": "normalises across channels",
    "GatherND": "gathers by index tuples", "GatherElements": "gathers element-wise",
    "ScatterND": "scatters by index", "ScatterElements": "scatters element-wise",
    "TopK": "data-dependent selection", "NonZero": "data-dependent shape",
    "CumSum": "accumulates along an axis", "Trilu": "masks by position",
}


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


@dataclass
class Cx:
    """What canonicalize may ask about the graph."""
    facts: Facts
    opset: int
    initializers: set[str]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.facts.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.facts.shapes[name])

    def static(self, name: str) -> np.ndarray | None:
        s = self.facts.static.get(name) if name else None
        return None if s is None else s.value

    def dynamic_positions(self, name: str, skip: set[int]) -> list[int] | None:
        """For a small static shape tensor, the elements computed from a symbolic (batch)
        size, ignoring those whose value is in ``skip`` (self-adjusting -1, 0 or 1). The
        adapter can rewrite every other element, so only these pin their axis."""
        s = self.facts.static.get(name) if name else None
        if s is None or s.edeps is None:
            return None
        flat = s.value.ravel().tolist()
        return [d for d, deps in enumerate(s.edeps)
                if flat[d] not in skip and self.facts.is_dynamic(deps)]


def _axis(a: int, ndim: int) -> int:
    return int(a) + ndim if int(a) < 0 else int(a)


def _barrier(node: onnx.NodeProto, why: str) -> Canon:
    return ops.BARRIER, [i for i in node.input if i], {"fn": node.op_type, "why": why}


def canonicalize(node: onnx.NodeProto, cx: Cx) -> Canon:
    op, ins, a = node.op_type, list(node.input), node_attrs(node)
    if node.domain not in ("", "ai.onnx"):
        return _barrier(node, f"custom op {node.domain}::{op}")
    x = ins[0] if ins else ""
    out = node.output[0] if node.output else ""
    opt = [i for i in ins[1:] if i]

    if op in ("Conv", "ConvTranspose"):
        return ops.CONV, [i for i in ins[:3] if i], {
            "groups": int(a.get("group", 1)), "transposed": op == "ConvTranspose",
            "stride": a.get("strides"), "padding": a.get("pads"), "dilation": a.get("dilations")}
    if op == "Gemm":
        c = ins[2] if len(ins) > 2 and ins[2] else None
        if a.get("transA", 0):
            return _barrier(node, "Gemm with transA")
        if a.get("transB", 0):
            if c is not None and cx.shape(c) != (cx.shape(out)[1],):
                return _barrier(node, f"Gemm bias of shape {list(cx.shape(c))}")
            return ops.LINEAR, [x, ins[1]] + ([c] if c else []), {
                "alpha": float(a.get("alpha", 1.0)), "beta": float(a.get("beta", 1.0))}
        return ops.MATMUL, [x, ins[1]] + ([c] if c else []), {"bias": c is not None}
    if op == "MatMul":
        return ops.MATMUL, [x, ins[1]], {}
    if op == "Einsum":
        return ops.EINSUM, [i for i in ins if i], {"equation": a["equation"]}
    if op == "BatchNormalization":
        if a.get("training_mode", 0):
            return _barrier(node, "batch norm in training mode")
        return ops.BATCHNORM, ins[:5], {
            "eps": float(a.get("epsilon", 1e-5)), "instance": False,
            "has": ["weight", "bias", "running_mean", "running_var"]}
    if op == "InstanceNormalization":
        return ops.BATCHNORM, ins[:3], {"eps": float(a.get("epsilon", 1e-5)), "instance": True,
                                        "has": ["weight", "bias"]}
    if op in ("LayerNormalization", "RMSNormalization"):
        r = cx.rank(x)
        return ops.LAYERNORM, [i for i in ins[:3] if i], {
            "ndims": r - _axis(a.get("axis", -1), r), "eps": float(a.get("epsilon", 1e-5)),
            "fn": "rms" if op == "RMSNormalization" else "layer"}
    if op == "GroupNormalization":
        c = cx.shape(x)[1]
        if any(cx.shape(p) != (c,) for p in opt):
            return _barrier(node, "GroupNormalization with per-group scale (opset 18 form)")
        return ops.GROUPNORM, [x] + opt, {"groups": int(a["num_groups"]),
                                          "eps": float(a.get("epsilon", 1e-5))}
    if op == "Clip":
        if all(cx.static(i) is not None for i in opt):
            return ops.UNARY, [x], {"fn": "clip"}
        return ops.BINARY, [x] + opt, {"fn": "clip"}
    if op == "Dropout":
        if len(node.output) > 1 and node.output[1]:
            return _barrier(node, "Dropout whose mask is used")
        return ops.UNARY, [x], {"fn": "dropout"}
    if op == "CastLike":
        return ops.UNARY, [x], {"fn": "cast"}
    if op in UNARY_OPS:
        return ops.UNARY, [x], {"fn": op.lower()}
    if op in BINARY_OPS:
        tensors = [i for i in ins if i]
        if len(tensors) == 1:
            return ops.UNARY, tensors, {"fn": op.lower()}
        return ops.BINARY, tensors, {"fn": op.lower()}
    if op in SOFTMAX_OPS:
        r = cx.rank(x)
        axis = _axis(a.get("axis", -1 if cx.opset >= 13 else 1), r)
        if cx.opset < 13 and axis != r - 1:
            # before opset 13 the input is flattened from `axis` on and normalised as one
            return _barrier(node, f"{op} over axes {axis}.. (opset {cx.opset})")
        return ops.SOFTMAX, [x], {"axis": axis, "fn": op.lower()}
    if op in REDUCE_FNS:
        r = cx.rank(x)
        if cx.opset >= AXES_INPUT_SINCE.get(op, 18):
            if len(ins) > 1 and ins[1]:
                value = cx.static(ins[1])
                if value is None:
                    return _barrier(node, "reduction axes computed at run time")
                axes = [int(v) for v in value.ravel()]
            else:
                axes = []
        else:
            axes = list(a.get("axes", []))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return ops.UNARY, [x], {"fn": "identity"}
            axes = list(range(r))
        return ops.REDUCE, [x], {"fn": REDUCE_FNS[op], "axes": sorted(_axis(d, r) for d in axes),
                                 "keepdim": bool(a.get("keepdims", 1))}
    if op in ("ArgMax", "ArgMin"):
        r = cx.rank(x)
        return ops.REDUCE, [x], {"fn": op.lower(), "axes": [_axis(a.get("axis", 0), r)],
                                 "keepdim": bool(a.get("keepdims", 1))}
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        # ONNX flattens the indices over N and C too: their values follow the channel count
        return _barrier(node, "MaxPool indices encode the channel count")
    if op in POOL_OPS:
        if op == "Resize" and len(ins) > 3 and ins[3] and cx.static(ins[3]) is None:
            return _barrier(node, "Resize sizes computed at run time")
        return ops.POOL, [x], {"fn": op}
    if op in ("Flatten", "Squeeze", "Unsqueeze"):
        return ops.RESHAPE, [x], {"symbolic_axes": []}
    if op == "Reshape":
        target = ins[1] if len(ins) > 1 else ""
        skip = {-1} if a.get("allowzero", 0) else {-1, 0}
        computed = cx.dynamic_positions(target, skip)
        if computed is None:  # unknown or large target: nothing here can be rewritten
            computed = list(range(cx.rank(out)))
        return ops.RESHAPE, [x], {"symbolic_axes": computed}
    if op == "Expand":
        r, shape_in = cx.rank(out), ins[1]
        computed = cx.dynamic_positions(shape_in, {1})
        value = cx.static(shape_in)
        if computed is None or value is None:
            sym = list(range(r))
        else:
            off = r - value.size
            sym = [off + d for d in computed]
        return ops.EXPAND, [x], {"symbolic_axes": sym}
    if op == "ConstantOfShape":
        computed = cx.dynamic_positions(x, set())
        return ops.FILL, [], {"fn": "constant_of_shape", "symbolic_axes":
                              list(range(cx.rank(out))) if computed is None else computed}
    if op == "Transpose":
        r = cx.rank(x)
        perm = [int(p) for p in a.get("perm", list(reversed(range(r))))]
        return ops.PERMUTE, [x], {"perm": perm}
    if op == "Concat":
        return ops.CONCAT, [i for i in ins if i], {"axis": _axis(a["axis"], cx.rank(out))}
    if op == "Split":
        r = cx.rank(x)
        if len(ins) > 1 and ins[1] and cx.static(ins[1]) is None:
            return _barrier(node, "Split sizes computed at run time")
        return ops.SPLIT, [x], {"axis": _axis(a.get("axis", 0), r), "drop_axis": False}
    if op == "Slice":
        return _slice(node, cx, a)
    if op == "Pad":
        return _pad(node, cx, a)
    if op == "Gather":
        return _gather(node, cx, a)
    if op == "Attention":
        if cx.rank(x) != 4 or len(node.output) > 1 or len([i for i in ins if i]) > 4 \
                or a.get("is_causal", 0) or a.get("softcap", 0.0):
            return _barrier(node, "Attention other than plain 4-D scaled dot product")
        return ops.ATTENTION, [i for i in ins[:4] if i], {"scale": a.get("scale")}
    if op == "Constant":
        return ops.CONSTANT, [], {}
    if op in BARRIER_WHY:
        return _barrier(node, BARRIER_WHY[op])
    return _barrier(node, f"no ONNX mapping for {op}")


def _slice(node: onnx.NodeProto, cx: Cx, a: dict[str, Any]) -> Canon:
    ins = list(node.input)
    x, out = ins[0], node.output[0]
    r = cx.rank(x)
    if cx.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        vals = [cx.static(i) if i else None for i in (ins + [""] * 5)[1:5]]
        if vals[0] is None or vals[1] is None or (ins[3:4] and ins[3] and vals[2] is None) \
                or (ins[4:5] and ins[4] and vals[3] is None):
            return _barrier(node, "Slice bounds computed at run time")
        starts, ends = vals[0].tolist(), vals[1].tolist()
        axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
        steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    axes = [_axis(d, r) for d in axes]
    step_of = dict(zip(axes, steps))
    # an axis is "cut" when it loses elements or is reordered (a negative step keeps the
    # size but reverses the channels, so it is not an identity either)
    cut = [d for d in axes if cx.shape(x)[d] != cx.shape(out)[d] or step_of[d] != 1]
    if len(cut) > 1 or any(step_of[d] != 1 for d in cut):
        # several cut axes: like a pad, each cut axis is pinned and the others pass through
        return ops.PAD, [x], {"axes": sorted(cut), "fn": "slice"}
    d = cut[0] if cut else (axes[0] if axes else 0)
    k = axes.index(d) if d in axes else 0
    return ops.SLICE, [x], {"axis": d, "start": int(starts[k]) if starts else 0,
                            "end": int(ends[k]) if ends else 0, "step": int(step_of.get(d, 1))}


def _pad(node: onnx.NodeProto, cx: Cx, a: dict[str, Any]) -> Canon:
    ins = list(node.input)
    x = ins[0]
    r = cx.rank(x)
    if cx.opset < 11:
        pads = list(a.get("pads", a.get("paddings", [])))
        axes = list(range(r))
    else:
        pv = cx.static(ins[1]) if len(ins) > 1 and ins[1] else None
        if pv is None:
            return _barrier(node, "Pad amounts computed at run time")
        pads = pv.tolist()
        av = cx.static(ins[3]) if len(ins) > 3 and ins[3] else None
        if len(ins) > 3 and ins[3] and av is None:
            return _barrier(node, "Pad axes computed at run time")
        axes = [_axis(d, r) for d in av.tolist()] if av is not None else list(range(r))
    n = len(axes)
    padded = sorted({axes[k] for k in range(n) if pads[k] != 0 or pads[k + n] != 0})
    return ops.PAD, [x], {"axes": padded}


def _gather(node: onnx.NodeProto, cx: Cx, a: dict[str, Any]) -> Canon:
    data, idx = node.input[0], node.input[1]
    r = cx.rank(data)
    axis = _axis(a.get("axis", 0), r)
    value = cx.static(idx)
    if value is not None and value.size == cx.shape(data)[axis] and value.size > 1 \
            and np.array_equal(value.ravel(), np.arange(value.size)):
        # every element in order: a reshape (the dynamo exporter's as_strided)
        return ops.RESHAPE, [data], {"symbolic_axes": [], "fn": "gather_all"}
    if data in cx.initializers and r == 2 and axis == 0 and (value is None or value.ndim > 0):
        return ops.EMBEDDING, [data, idx], {}
    if value is not None and value.ndim == 0:
        return ops.SELECT, [data], {"axis": axis, "index": int(value)}
    return ops.INDEX, [data, idx], {"axes": [axis]}


def _slice_cut(node: onnx.NodeProto, cx: Cx) -> tuple[int, int, int] | None:
    """(axis, start, end) of a Slice that cuts one axis with step 1 and keeps the others
    whole, with the bounds normalised to [0, size]; else None."""
    ins = list(node.input) + [""] * 5
    if cx.opset < 10:
        return None
    vals = [cx.static(i) if i else None for i in ins[1:5]]
    if vals[0] is None or vals[1] is None or (ins[3] and vals[2] is None) \
            or (ins[4] and vals[3] is None):
        return None
    x, out = ins[0], node.output[0]
    r = cx.rank(x)
    starts, ends = vals[0].tolist(), vals[1].tolist()
    axes = [_axis(d, r) for d in (vals[2].tolist() if vals[2] is not None
                                  else range(len(starts)))]
    steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    if any(s != 1 for s in steps):
        return None
    cut = [k for k, d in enumerate(axes) if cx.shape(x)[d] != cx.shape(out)[d]]
    if len(cut) != 1:
        return None
    k = cut[0]
    n = cx.shape(x)[axes[k]]
    s, e = starts[k], ends[k]
    s = min(max(s + n if s < 0 else s, 0), n)
    e = min(max(e + n if e < 0 else e, 0), n)
    return axes[k], s, e


def slice_partitions(model: onnx.ModelProto, cx: Cx, folded: set[int]) -> dict[int, list[int]]:
    """Slices that together cut one axis of one tensor into consecutive parts covering it
    (the legacy exporter's chunk): first node index -> member indices by position. They
    become one ``split`` node, so the parts can lose channels like a Split's outputs."""
    by_input: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for i, node in enumerate(model.graph.node):
        if i in folded or node.op_type != "Slice" or node.domain not in ("", "ai.onnx"):
            continue
        cut = _slice_cut(node, cx)
        if cut is not None:
            by_input.setdefault((node.input[0], cut[0]), []).append((i, cut[1], cut[2]))
    parts = {}
    for (x, axis), members in by_input.items():
        members.sort(key=lambda m: m[1])
        pos, ok = 0, len(members) > 1
        for _, s, e in members:
            ok = ok and s == pos and e > s
            pos = e
        if ok and pos == cx.shape(x)[axis]:
            parts[min(m[0] for m in members)] = [m[0] for m in members]
    return parts
