"""ATen (torch.export training IR) -> canonical IR ops.

``canonicalize(node, vals)`` returns ``(op, tensor_inputs, attrs)`` for one fx node. Ops
that are not listed here become ``barrier`` nodes: the channel-groups analysis then keeps
every channel that touches them and reports the op by name.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx

from prunepass.ir import ops

aten = torch.ops.aten

Canon = tuple[str, list[fx.Node], dict[str, Any]]


def bind(node: fx.Node) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


def _is_tensor(a: Any) -> bool:
    return isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)


def _rank(node: fx.Node) -> int:
    return node.meta["val"].dim()


def _axis(a: int, ndim: int) -> int:
    return a + ndim if a < 0 else a


def _symbolic_axes(sizes: Any) -> list[int]:
    """Positions in a size list that are not literal ints (symbolic batch sizes)."""
    if not isinstance(sizes, (list, tuple)):
        return []
    return [i for i, s in enumerate(sizes) if not isinstance(s, int)]


def _tensors(args: Any) -> list[fx.Node]:
    if isinstance(args, (list, tuple)):
        return [a for a in args if _is_tensor(a)]
    return [args] if _is_tensor(args) else []


UNARY_FNS = {
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "mish", "mish_", "softplus", "exp", "log",
    "sqrt", "rsqrt", "neg", "abs", "erf", "clamp", "clamp_", "clamp_min", "clamp_max",
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "clone", "contiguous", "alias",
    "detach", "_to_copy", "to", "type_as", "lift_fresh_copy", "relu6", "selu", "celu",
    "reciprocal", "square", "sin", "cos", "pow", "logit", "hardshrink", "prelu",
    "fill_", "zero_", "bitwise_not", "logical_not", "sign", "floor", "ceil", "round",
    "ne", "eq", "lt", "le", "gt", "ge", "log_sigmoid", "native_dropout",
}
BINARY_FNS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum",
    "where", "masked_fill", "masked_fill_", "pow", "eq", "ne", "lt", "le", "gt", "ge",
    "bitwise_and", "bitwise_or", "logical_and", "logical_or", "fill_", "copy_", "rsub",
    "floor_divide", "remainder", "fmod", "atan2", "hypot", "prelu",
    "addcmul", "addcdiv", "lerp",  # input + value * t1 * t2 and kin: elementwise, n-ary
}
REDUCE_FNS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "prod", "logsumexp",
              "any", "all", "argmax", "argmin", "norm", "linalg_vector_norm"}
POOL_FNS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d",
    "upsample_linear1d", "upsample_trilinear3d", "_upsample_nearest_exact2d",
    "_adaptive_avg_pool2d", "pixel_shuffle", "pixel_unshuffle",
}
FILL_FNS = {"zeros", "ones", "full", "empty", "new_zeros", "new_ones", "new_full", "new_empty",
            "arange", "scalar_tensor", "zeros_like", "ones_like", "full_like", "empty_like",
            "rand_like", "randn_like", "rand", "randn", "linspace", "eye"}
RESHAPE_FNS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze",
               "squeeze_", "unsqueeze", "unsqueeze_", "view_as", "reshape_as"}


def _base_name(target: Any) -> str:
    # torch.ops.aten.relu_.default -> "relu_"
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


class NotATensorOp(ValueError):
    """The node computes sizes, not tensors: it has no place in the IR."""


def canonicalize(node: fx.Node) -> Canon:
    t = node.target
    name = _base_name(t)
    out_val = node.meta.get("val")
    if t in (operator.mul, operator.add, operator.floordiv, operator.sub):
        raise NotATensorOp("symbolic arithmetic is not a tensor op")
    if not isinstance(t, torch._ops.OpOverload):
        return ops.BARRIER, _tensors(list(node.args) + list(node.kwargs.values())), {}
    a = bind(node)
    first = node.args[0] if node.args else None

    if name in ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d",
                "conv_transpose2d", "conv_transpose3d"):
        transposed = name.startswith("conv_transpose") or bool(a.get("transposed", False))
        ins = [a["input"], a["weight"]] + ([a["bias"]] if _is_tensor(a.get("bias")) else [])
        return ops.CONV, ins, {"groups": int(a.get("groups") or 1), "transposed": transposed,
                               "stride": a.get("stride"), "padding": a.get("padding"),
                               "dilation": a.get("dilation")}
    if name == "linear":
        ins = [a["input"], a["weight"]] + ([a["bias"]] if _is_tensor(a.get("bias")) else [])
        return ops.LINEAR, ins, {}
    if name in ("matmul", "bmm", "mm"):
        return ops.MATMUL, [a["self"], a[list(a)[1]]], {}
    if name in ("addmm", "baddbmm", "addbmm"):
        return ops.MATMUL, [a["batch1" if "batch1" in a else "mat1"],
                            a["batch2" if "batch2" in a else "mat2"], a["self"]], {"bias": True}
    if name in ("grouped_mm_fallback", "_grouped_mm", "grouped_mm") and len(node.args) > 1 \
            and _is_tensor(first) and _is_tensor(node.args[1]) and _rank(first) == 2 \
            and _rank(node.args[1]) == 3:
        return ops.GROUPED_MATMUL, _tensors(list(node.args[:3])), {}
    if name in ("lstm", "gru", "rnn_tanh", "rnn_relu") and isinstance(node.args[2], list):
        # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, ...)
        return ops.RNN, [first, *node.args[2]], {
            "mode": name.split("_")[0], "biases": bool(node.args[3]),
            "layers": int(node.args[4]), "bidirectional": bool(node.args[7])}
    if name in ("topk", "sort", "argsort", "kthvalue") and _is_tensor(first):
        # values picked or reordered along one axis: that axis is positions, the others
        # pass through
        return ops.INDEX, [first], {"axes": [_axis(a.get("dim", -1), _rank(first))]}
    if name == "einsum":
        return ops.EINSUM, list(a["tensors"]), {"equation": a["equation"]}
    if name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        ins = [a["query"], a["key"], a["value"]]
        if _is_tensor(a.get("attn_mask")):
            ins.append(a["attn_mask"])
        return ops.ATTENTION, ins, {"scale": a.get("scale")}
    if name == "embedding":
        return ops.EMBEDDING, [a["weight"], a["indices"]], {}
    if name in ("batch_norm", "_native_batch_norm_legit_no_training", "instance_norm",
                "_native_batch_norm_legit", "native_batch_norm"):
        ins = [a["input"]] + [a.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
        # statistics computed from the input itself (training=True, instance norm), not
        # running ones: they reduce over every axis but the channels'
        batch_stats = name in ("_native_batch_norm_legit", "instance_norm") or \
            (name in ("batch_norm", "native_batch_norm") and bool(a.get("training")))
        return ops.BATCHNORM, [x for x in ins if _is_tensor(x)], {
            "eps": a.get("eps"), "instance": name == "instance_norm",
            "batch_stats": batch_stats,
            "has": [k for k in ("weight", "bias", "running_mean", "running_var")
                    if _is_tensor(a.get(k))]}
    if name in ("layer_norm", "native_layer_norm", "rms_norm"):
        ins = [a["input"]] + [x for x in (a.get("weight"), a.get("bias")) if _is_tensor(x)]
        return ops.LAYERNORM, ins, {"ndims": len(a["normalized_shape"]),
                                    "fn": "rms" if name == "rms_norm" else "layer"}
    if name in ("group_norm", "native_group_norm"):
        ins = [a["input"]] + [x for x in (a.get("weight"), a.get("bias")) if _is_tensor(x)]
        return ops.GROUPNORM, ins, {"groups": int(a.get("num_groups") or a.get("group"))}
    if name in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
        return ops.SOFTMAX, [first], {"axis": _axis(a["dim"], _rank(first))}
    if name in REDUCE_FNS and _is_tensor(first):
        nd = _rank(first)
        dims = a.get("dim")
        if dims is None or dims == []:
            axes = list(range(nd))
        else:
            axes = [_axis(d, nd) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        return ops.REDUCE, [first], {"fn": name, "axes": sorted(axes),
                                     "keepdim": bool(a.get("keepdim", False))}
    if name in POOL_FNS:
        return ops.POOL, [first], {"fn": name}
    if name in RESHAPE_FNS:
        sizes = a.get("size") if name in ("view", "reshape", "_unsafe_view") else None
        if name == "unflatten":
            sizes = a.get("sizes")
        return ops.RESHAPE, [first], {"symbolic_axes": _symbolic_axes(sizes)}
    if name in ("permute", "transpose", "t", "swapaxes", "movedim", "numpy_T", "mT"):
        nd = _rank(first)
        if name == "permute":
            perm = [_axis(d, nd) for d in a["dims"]]
        elif name == "t":
            perm = [1, 0] if nd == 2 else list(range(nd))
        elif name == "movedim":
            src, dst = _axis(a["source"], nd), _axis(a["destination"], nd)
            rest = [d for d in range(nd) if d != src]
            rest.insert(dst, src)
            perm = rest
        elif name == "numpy_T":  # x.T: every axis reversed
            perm = list(range(nd))[::-1]
        else:
            d0, d1 = (nd - 2, nd - 1) if name == "mT" else \
                [_axis(d, nd) for d in list(node.args[1:3])]
            perm = list(range(nd))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        return ops.PERMUTE, [first], {"perm": perm}
    if name in ("expand", "expand_as", "broadcast_to"):
        return ops.EXPAND, [first], {"symbolic_axes": _symbolic_axes(a.get("size"))}
    if name == "cat" or name == "concat":
        xs = list(a["tensors"])
        return ops.CONCAT, xs, {"axis": _axis(a["dim"], _rank(xs[0]))}
    if name == "stack":
        xs = list(a["tensors"])
        return ops.STACK, xs, {"axis": _axis(a["dim"], _rank(xs[0]) + 1)}
    if name in ("split", "split_with_sizes", "chunk", "tensor_split", "unbind", "unsafe_split"):
        return ops.SPLIT, [first], {"axis": _axis(a.get("dim", 0), _rank(first)),
                                    "drop_axis": name == "unbind"}
    if name == "select":
        return ops.SELECT, [first], {"axis": _axis(a["dim"], _rank(first)), "index": a["index"]}
    if name == "slice":
        nd = _rank(first)
        return ops.SLICE, [first], {"axis": _axis(a["dim"], nd), "start": a["start"],
                                    "end": a["end"], "step": a["step"] or 1}
    if name in ("index", "_unsafe_index"):
        idx = a["indices"]
        axes = [i for i, x in enumerate(idx) if x is not None]
        return ops.INDEX, [first] + [x for x in idx if _is_tensor(x)], {"axes": axes}
    if name in ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d"):
        pad = list(a["pad"] if "pad" in a else a["padding"])
        nd = _rank(first)
        axes = [nd - 1 - i // 2 for i, p in enumerate(pad) if p != 0]
        return ops.PAD, [first], {"axes": sorted(set(axes))}
    if name == "roll":
        nd = _rank(first)
        dims = a.get("dims") or list(range(nd))
        return ops.ROLL, [first], {"axes": [_axis(d, nd) for d in dims]}
    if name in FILL_FNS:
        like = [first] if name.endswith("_like") and _is_tensor(first) else []
        return ops.FILL, like, {"fn": name, "symbolic_axes": _symbolic_axes(a.get("size"))}
    if name in BINARY_FNS and sum(_is_tensor(x) for x in node.args) >= 2:
        return ops.BINARY, _tensors(list(node.args)), {"fn": name}
    if name in UNARY_FNS or name in BINARY_FNS:
        if _is_tensor(first) and isinstance(out_val, torch.Tensor) and \
                tuple(out_val.shape) == tuple(first.meta["val"].shape):
            return ops.UNARY, [first], {"fn": name}
    return ops.BARRIER, _tensors(list(node.args) + list(node.kwargs.values())), {"fn": name}


# Size-list arguments the torch adapter rewrites when a dimension shrinks: op -> arg index.
SIZE_ARG: dict[str, int] = {
    "view": 1, "reshape": 1, "_unsafe_view": 1, "expand": 1, "new_zeros": 1, "new_ones": 1,
    "new_full": 1, "new_empty": 1, "zeros": 0, "ones": 0, "full": 0, "empty": 0,
    "broadcast_to": 1,
}

Rewriter = Callable[[fx.Node], None]
