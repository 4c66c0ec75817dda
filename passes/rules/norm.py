"""Normalisation layers. Batch and instance norm act per channel (exact); layer, RMS and
group norm compute statistics across channels, so removing a channel is not the same as
zeroing it: those channels are flagged inexact."""
from __future__ import annotations

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Node
from prunepass.passes.rules import rule
from prunepass.passes.rules.context import RuleContext


@rule(ops.BATCHNORM)
def batchnorm(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    ctx.identity_all(x, out)
    for p in node.inputs[1:]:
        ctx.link(p, 0, x, 1)
    for extra in node.outputs[1:]:  # saved statistics of the native op
        if extra.ndim:
            ctx.link(extra, 0, x, 1)
    if node.attrs.get("batch_stats"):  # statistics of this input: over every other axis
        first = 2 if node.attrs.get("instance") else 0
        for axis in range(first, x.ndim):
            if axis != 1:
                ctx.inexact(x, axis, "batch-norm statistics computed from this tensor (not "
                            "running ones) span this axis")


@rule(ops.LAYERNORM)
def layernorm(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    ctx.identity_all(x, out)
    nd = node.attrs["ndims"]
    for p in node.inputs[1:]:
        for k in range(nd):
            ctx.link(p, k, x, x.ndim - nd + k)
    for k in range(nd):
        ctx.inexact(x, x.ndim - nd + k, f"{node.attrs.get('fn', 'layer')} norm statistics "
                    "span this axis")
    for extra in node.outputs[1:]:
        ctx.pin_all(extra, "norm statistics")


@rule(ops.GROUPNORM)
def groupnorm(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    ctx.identity_all(x, out)
    for p in node.inputs[1:]:
        ctx.link(p, 0, x, 1)
    c, g = x.shape[1], node.attrs["groups"]
    per = c // g
    k = np.arange(c)
    # every group must keep the same channel count: position p is removed from all groups
    ctx.link(x, 1, x, 1, k, k % per)
    ctx.inexact(x, 1, "group norm statistics span this axis")
    for extra in node.outputs[1:]:
        ctx.pin_all(extra, "norm statistics")
