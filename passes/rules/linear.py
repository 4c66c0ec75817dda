"""Ops with weights or contractions: conv (plain, grouped, depthwise, transposed), linear,
matmul, einsum, attention, embedding."""
from __future__ import annotations

import re

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Node, Value
from prunepass.passes.rules import rule
from prunepass.passes.rules.context import RuleContext


def pin_spatial(ctx: RuleContext, *values: Value) -> None:
    """A convolution's or pooling's spatial axes (2 and on) are positions, not channels:
    their sizes follow the input's, so a layer that reshapes them into tokens must not
    make them a group of its own."""
    for v in values:
        for axis in range(2, v.ndim):
            ctx.pin(v, axis, "spatial axis: its size follows the model input's")


@rule(ops.CONV)
def conv(node: Node, ctx: RuleContext) -> None:
    x, w, out = node.inputs[0], node.inputs[1], node.output
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    g = node.attrs["groups"]
    ctx.link(x, 0, out, 0)
    pin_spatial(ctx, x, out)
    if node.attrs["transposed"]:
        if g != 1:
            ctx.barrier(node, "grouped transposed convolution")
            return
        ctx.link(x, 1, w, 0)
        ctx.link(out, 1, w, 1)
        ctx.producer(w, 1)
    else:
        ctx.link(out, 1, w, 0)
        ctx.producer(w, 0)
        cin, per_in = x.shape[1], w.shape[1]
        cout = out.shape[1]
        if g == 1:
            ctx.link(x, 1, w, 1)
        elif per_in == 1:
            # depthwise (with channel multiplier m): input c feeds outputs c*m .. c*m+m-1;
            # removing it removes the whole group, and the group count follows
            m = cout // cin
            o = np.arange(cout)
            ctx.link(out, 1, x, 1, o, o // m)
        else:
            # grouped: groups keep equal sizes, so position p is removed from every group
            k = np.arange(cin)
            ctx.link(x, 1, w, 1, k, k % per_in)
            per_out = cout // g
            o = np.arange(cout)
            ctx.link(out, 1, out, 1, o, o % per_out)
    if bias is not None:
        ctx.link(bias, 0, out, 1)


@rule(ops.LINEAR)
def linear(node: Node, ctx: RuleContext) -> None:
    x, w, out = node.inputs[0], node.inputs[1], node.output
    for axis in range(x.ndim - 1):
        ctx.link(x, axis, out, axis)
    ctx.link(x, -1, w, 1)
    ctx.link(out, -1, w, 0)
    ctx.producer(w, 0)
    if len(node.inputs) > 2:
        ctx.link(node.inputs[2], 0, out, -1)


def _batch_broadcast(ctx: RuleContext, x: Value, out: Value, trailing: int) -> None:
    """Link the leading (batch) axes of ``x`` to ``out``, aligned from the right, skipping
    the ``trailing`` matrix axes."""
    nb_x, nb_o = x.ndim - trailing, out.ndim - 2
    for k in range(1, nb_x + 1):
        ax, ao = nb_x - k, nb_o - k
        if ao < 0:
            break
        if x.shape[ax] == out.shape[ao]:
            ctx.link(x, ax, out, ao)


@rule(ops.MATMUL)
def matmul(node: Node, ctx: RuleContext) -> None:
    a, b, out = node.inputs[0], node.inputs[1], node.output
    if a.ndim < 2 or b.ndim < 2:
        ctx.barrier(node, "matrix-vector product")
        return
    ctx.link(a, -1, b, -2)
    ctx.link(a, -2, out, -2)
    ctx.link(b, -1, out, -1)
    _batch_broadcast(ctx, a, out, 2)
    _batch_broadcast(ctx, b, out, 2)
    weight = ctx.state_view(b, -1)  # a parameter, or its transpose (x @ self.weight.T)
    if weight is not None:
        ctx.producer(*weight)
    if node.attrs.get("bias"):
        ctx.broadcast(node.inputs[2], out)


@rule(ops.GROUPED_MATMUL)
def grouped_matmul(node: Node, ctx: RuleContext) -> None:
    """Tokens sorted by expert times each expert's (K, N) matrix: the experts share K and
    N, so a channel of K or N is removed from every expert (the 3-D weight keeps one shape);
    the experts axis is addressed by the routing."""
    x, w, out = node.inputs[0], node.inputs[1], node.output
    ctx.link(x, 0, out, 0)
    ctx.link(x, 1, w, 1)
    ctx.link(out, 1, w, 2)
    ctx.pin(w, 0, "experts are chosen by the router")
    for extra in node.inputs[2:]:
        ctx.pin_all(extra, "expert offsets")
    weight = ctx.state_view(w, 2)
    if weight is not None:
        ctx.producer(*weight)


@rule(ops.RNN)
def rnn(node: Node, ctx: RuleContext) -> None:
    """A recurrent layer's input features are its first weights' columns (both directions);
    its hidden units are carried from step to step inside the op: kept."""
    x, params = node.inputs[0], node.inputs[1:]
    per = 4 if node.attrs["biases"] else 2
    for d in range(2 if node.attrs["bidirectional"] else 1):
        if d * per < len(params):
            ctx.link(x, -1, params[d * per], 1)
    for p in params:
        for axis in range(p.ndim):
            if not (axis == 1 and p in params[:per * 2:per]):
                ctx.pin(p, axis, f"{node.attrs['mode']} hidden units (recurrent state)")
    for o in node.outputs:
        ctx.pin(o, o.ndim - 1, f"{node.attrs['mode']} hidden units (recurrent state)")
    for axis in range(x.ndim - 1):
        if x.shape[axis] == node.output.shape[axis]:
            ctx.link(x, axis, node.output, axis)


def parse_einsum(eq: str, n: int) -> tuple[list[str], str] | None:
    eq = eq.replace(" ", "")
    if "." in eq:
        return None
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n:
        return None
    if not _:
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


@rule(ops.EINSUM)
def einsum(node: Node, ctx: RuleContext) -> None:
    parsed = parse_einsum(node.attrs["equation"], len(node.inputs))
    if parsed is None or any(len(t) != v.ndim for t, v in zip(parsed[0], node.inputs)):
        ctx.barrier(node, f"einsum {node.attrs['equation']!r} with ellipsis")
        return
    terms, rhs = parsed
    out = node.output
    places: dict[str, list[tuple[Value, int]]] = {}
    for term, v in zip(terms, node.inputs):
        for axis, c in enumerate(term):
            places.setdefault(c, []).append((v, axis))
    for axis, c in enumerate(rhs):
        places.setdefault(c, []).append((out, axis))
    for c, where in places.items():
        sized = [(v, a) for v, a in where if v.shape[a] != 1]
        for (v, a), (u, b) in zip(sized, sized[1:]):
            ctx.link(v, a, u, b)
        if c in rhs:
            for v, a in where:
                if v.is_state():
                    ctx.producer(v, a)
        if len(re.findall(c, rhs)) > 1 or any(t.count(c) > 1 for t in terms):
            for v, a in where:
                ctx.pin(v, a, "repeated einsum index")


@rule(ops.ATTENTION)
def attention(node: Node, ctx: RuleContext) -> None:
    q, k, v = node.inputs[:3]
    out = node.output
    ctx.link(q, -1, k, -1)  # query and key share the contracted head dimension
    ctx.link(v, -1, out, -1)
    ctx.link(q, -2, out, -2)
    ctx.link(k, -2, v, -2)
    ctx.inexact(k, -2, "softmax over keys", distribution=True)
    for x in (q, k, v):
        _batch_broadcast(ctx, x, out, 2)
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3] > 0 \
            and q.shape[-3] % k.shape[-3] == 0:
        # grouped-query attention in one call (enable_gqa): query head h reads key/value
        # head h // (query heads per key/value head)
        h = np.arange(q.shape[-3])
        rep = q.shape[-3] // k.shape[-3]
        ctx.link(q, -3, k, -3, h, h // rep)
        ctx.link(q, -3, v, -3, h, h // rep)
    if len(node.inputs) > 3:
        mask = node.inputs[3]
        if mask.ndim >= 2:
            if mask.shape[-1] == k.shape[-2]:
                ctx.link(mask, -1, k, -2)
            if mask.shape[-2] == q.shape[-2]:
                ctx.link(mask, -2, q, -2)
            _batch_broadcast(ctx, mask, out, 2)
    for extra in node.outputs[1:]:
        ctx.pin_all(extra, "attention statistics")


@rule(ops.EMBEDDING)
def embedding(node: Node, ctx: RuleContext) -> None:
    w, idx, out = node.inputs[0], node.inputs[1], node.output
    ctx.link(out, -1, w, 1)
    ctx.producer(w, 1)
    ctx.pin(w, 0, "embedding rows are addressed by index")
    for axis in range(idx.ndim):
        ctx.link(idx, axis, out, axis)
