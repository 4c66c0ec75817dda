"""Layer blocks: the convolution and linear layers that touch a channel group, and each
rebuilt as a single-layer spec at a given channel count (what channel-latency times)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Node


@dataclass(frozen=True)
class _Touch:
    """A layer touching a group: how many of its output / input channels are the group's."""
    node: Node
    out_share: int
    in_share: int
    depthwise: bool


def weight_axes(node: Node) -> tuple[int, int] | None:
    """(output axis, input axis) of the weight of a layer hw-round times: a convolution or
    linear layer (out, in, ...), or a matrix product by a 2-D parameter (in, out), as ONNX
    exporters write linear layers on 3-D inputs. None for other nodes."""
    if len(node.inputs) < 2:
        return None
    if node.op in (ops.CONV, ops.LINEAR):
        return 0, 1
    w = node.inputs[1]
    if node.op == ops.MATMUL and w.kind == "param" and w.ndim == 2:
        return 1, 0
    return None


def _depthwise(node: Node) -> bool:
    """One filter per input channel. Read from the shapes, which may be a plan's, not from
    the groups attribute, which stays the model's."""
    x, w = node.inputs[0], node.inputs[1]
    return int(node.attrs.get("groups") or 1) > 1 and w.shape[1] == 1 and \
        x.shape[1] == w.shape[0]


def _touches(node: Node, cg: Any, group_of: np.ndarray):  # noqa: ANN401, ANN202
    axes = weight_axes(node)
    if axes is None:
        return
    w = node.inputs[1]
    if node.op == ops.CONV and (w.ndim != 4 or node.attrs.get("transposed")):
        return  # 2-D convolutions only; the rest is left out of the sum
    groups = int(node.attrs.get("groups") or 1)
    depthwise = node.op == ops.CONV and _depthwise(node)
    if node.op == ops.CONV and groups > 1 and not depthwise:
        return  # grouped convolutions change in steps of whole groups: not modelled
    try:
        out_cls = cg.classes_of(w.name, axes[0])
        in_cls = cg.classes_of(w.name, axes[1])
    except KeyError:
        return
    out_g = np.bincount(group_of[out_cls][group_of[out_cls] >= 0], minlength=len(cg.groups))
    in_g = (np.zeros(len(cg.groups), int) if depthwise else
            np.bincount(group_of[in_cls][group_of[in_cls] >= 0], minlength=len(cg.groups)))
    for gid in np.flatnonzero(out_g + in_g):
        yield int(gid), _Touch(node, int(out_g[gid]), int(in_g[gid]), depthwise)


def _spec(t: _Touch, size: int, count: int):  # noqa: ANN202
    w = t.node.inputs[1]
    out_axis, in_axis = weight_axes(t.node)  # type: ignore[misc]

    def scaled(dim: int, share: int) -> int:
        return max(1, dim - share + int(round(share * count / size))) if share else dim

    cout = scaled(w.shape[out_axis], t.out_share)
    cin = cout if t.depthwise else scaled(w.shape[in_axis], t.in_share)
    if 0 < t.in_share < w.shape[in_axis]:
        # the input concatenates this group with others (densenet): a ratio prunes those
        # alike, and the total decides the input's alignment, so scale it all
        cin = max(1, int(round(w.shape[in_axis] * count / size)))
    return layer_spec(t.node, cin=cin, cout=cout)


def layer_spec(node: Node, cin: int | None = None, cout: int | None = None):  # noqa: ANN201
    """The LayerSpec timing ``node`` (a 2-D convolution or a linear layer, see weight_axes;
    None for other nodes) at its IR shapes, or with ``cin`` / ``cout`` channels instead. A depthwise
    convolution keeps cin = cout = groups."""
    from prunepass.backends.measure.layer_latency import LayerSpec
    axes = weight_axes(node)
    if axes is None:
        return None
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if node.op != ops.CONV:
        w_out, w_in = w.shape[axes[0]], w.shape[axes[1]]
        return LayerSpec("linear", cin or w_in, cout or w_out,
                         h=max(1, x.numel // max(w_in, 1)))
    if w.ndim != 4 or node.attrs.get("transposed"):
        return None
    groups = int(node.attrs.get("groups") or 1)
    depthwise = _depthwise(node)
    cout = cout or w.shape[0]
    if depthwise:
        cin = groups = cout
    else:
        cin = cin or w.shape[1] * groups
    kh, kw = w.shape[2], w.shape[3]
    stride = tuple(_pair(node.attrs.get("stride"), 1))
    pad = tuple(max(0, ((o - 1) * s + k - i + 1) // 2)
                for o, s, k, i in zip(y.shape[2:], stride, (kh, kw), x.shape[2:]))
    return LayerSpec("conv2d", cin, cout, x.shape[2], x.shape[3], kh, kw, stride, pad,
                     groups=groups, batch=x.shape[0])


def _pair(v: Any, default: int) -> list[int]:  # noqa: ANN401
    if v is None:
        return [default, default]
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    return v * 2 if len(v) == 1 else v[:2]
