"""Elementwise, softmax, reductions, pooling: channels pass straight through."""
from __future__ import annotations

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Node
from prunepass.passes.rules import rule
from prunepass.passes.rules.context import RuleContext
from prunepass.passes.rules.linear import pin_spatial

# Reductions for which a zero channel contributes nothing: removing equals zeroing.
ZERO_NEUTRAL = {"sum", "norm", "linalg_vector_norm", "any"}


@rule(ops.UNARY)
def unary(node: Node, ctx: RuleContext) -> None:
    ctx.identity_all(node.inputs[0], node.output)


@rule(ops.BINARY)
def binary(node: Node, ctx: RuleContext) -> None:
    for x in node.inputs:
        ctx.broadcast(x, node.output)


@rule(ops.FILL)
def fill(node: Node, ctx: RuleContext) -> None:
    if node.inputs:  # zeros_like & co: same shape as the input
        ctx.identity_all(node.inputs[0], node.output)
    for axis in node.attrs.get("symbolic_axes", []):
        ctx.pin(node.output, axis, "symbolic size")


@rule(ops.CONSTANT)
def constant(node: Node, ctx: RuleContext) -> None:
    ctx.pin_all(node.output, "constant")


@rule(ops.SOFTMAX)
def softmax(node: Node, ctx: RuleContext) -> None:
    ctx.identity_all(node.inputs[0], node.output)
    ctx.inexact(node.inputs[0], node.attrs["axis"], "softmax normalises over this axis",
                distribution=True)


@rule(ops.REDUCE)
def reduce(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.outputs[0]
    axes, keep = node.attrs["axes"], node.attrs["keepdim"]
    o = 0
    for axis in range(x.ndim):
        if axis in axes:
            if node.attrs["fn"] not in ZERO_NEUTRAL:
                ctx.inexact(x, axis, f"{node.attrs['fn']} reduces over this axis")
            if keep:
                o += 1
            continue
        if o < out.ndim:
            ctx.link(x, axis, out, o)
        o += 1
    for extra in node.outputs[1:]:  # max.dim's indices
        ctx.pin_all(extra, "reduction indices")


@rule(ops.POOL)
def pool(node: Node, ctx: RuleContext) -> None:
    x = node.inputs[0]
    pin_spatial(ctx, x, *node.outputs)
    if node.attrs.get("fn") in ("pixel_shuffle", "pixel_unshuffle"):
        _pixel_shuffle(node, ctx)
        return
    for out in node.outputs:
        if x.ndim >= 3 and out.ndim == x.ndim and x.shape[1] == out.shape[1]:
            ctx.link(x, 0, out, 0)
            ctx.link(x, 1, out, 1)
        else:
            ctx.barrier(node, "pooling changes the channel axis")
            return


def _pixel_shuffle(node: Node, ctx: RuleContext) -> None:
    """pixel_shuffle(r): output channel c is made of input channels c*r*r .. c*r*r+r*r-1
    (pixel_unshuffle the other way): the r*r input channels of one output channel are
    removed with it."""
    x, out = node.inputs[0], node.output
    ctx.link(x, 0, out, 0)
    wide, narrow = (x, out) if node.attrs["fn"] == "pixel_shuffle" else (out, x)
    per = wide.shape[-3] // max(narrow.shape[-3], 1)
    if per * narrow.shape[-3] != wide.shape[-3]:
        ctx.barrier(node, f"{node.attrs['fn']}: {wide.shape[-3]} channels do not split into "
                          f"{narrow.shape[-3]}")
        return
    k = np.arange(wide.shape[-3])
    ctx.link(wide, -3, narrow, -3, k, k // per)
