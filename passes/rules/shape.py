"""Shape ops: how channel indices move when axes are reshaped, permuted, concatenated,
split, sliced or broadcast."""
from __future__ import annotations

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Node, Value
from prunepass.passes.rules import rule
from prunepass.passes.rules.context import RuleContext


def reshape_blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Split two shapes of equal size into the smallest runs of axes with equal products:
    (1, 768, 14, 14) -> (1, 768, 196) gives [0]~[0], [1]~[1], [2, 3]~[2]."""
    blocks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        si, sj, pa, pb = i, j, 1, 1
        if i < len(a):
            pa *= a[i]
            i += 1
        if j < len(b):
            pb *= b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]
                i += 1
            elif j < len(b):
                pb *= b[j]
                j += 1
            else:
                raise ValueError(f"shapes {a} and {b} do not hold the same number of elements")
        # a trailing run of 1s joins this block
        while i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            i += 1
        while j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            j += 1
        blocks.append((list(range(si, i)), list(range(sj, j))))
    return blocks


def _coords(shape: list[int], k: int) -> np.ndarray:
    """Coordinate along axis ``k`` of each flat (row-major) index of ``shape``."""
    inner = int(np.prod(shape[k + 1:], dtype=np.int64))
    total = int(np.prod(shape, dtype=np.int64))
    return (np.arange(total) // inner) % shape[k]


def _classes(ia: np.ndarray, ib: np.ndarray, na: int, nb: int) -> int:
    """How many channels survive if element ia[f] of one axis is tied to ib[f] of another."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    m = coo_matrix((np.ones(len(ia)), (ia, na + ib)), shape=(na + nb, na + nb))
    return connected_components(m, directed=False)[0]


@rule(ops.RESHAPE)
def reshape(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    for axis in node.attrs.get("symbolic_axes", []):
        if axis < out.ndim:
            ctx.pin(out, axis, "symbolic size")
    try:
        blocks = reshape_blocks(x.shape, out.shape)
    except ValueError:
        ctx.barrier(node, "reshape of unequal sizes")
        return
    for ins, outs in blocks:
        if len(ins) == 1 and len(outs) == 1:
            ctx.link(x, ins[0], out, outs[0])
            continue
        tracked = [a for a in ins if ctx.is_tracked(x, a) and x.shape[a] > 1]
        if not tracked:
            # no layer's channels among them (channels are tracked from the layer that
            # makes them on): positions, such as a conv's H and W flattened into tokens.
            # A layer reading them later must not make them a group of its own.
            for a in outs:
                ctx.pin(out, a, "positions reshaped (no channel axis among them)")
            continue
        # Tie one channel axis in to one axis out: the pair that keeps the most independent
        # channels. (3*C) -> (3, C) keeps C; C -> (heads, head_dim) keeps head_dim;
        # (C, H, W) -> C*H*W keeps C blocks of H*W; (heads, head_dim) -> C keeps head_dim.
        # Every other axis of the block is pinned: it is bound to the tied ones.
        in_shape = [x.shape[a] for a in ins]
        out_shape = [out.shape[a] for a in outs]
        heads = _heads_pair(ctx, x, out, ins, outs, tracked)
        if heads is not None:
            p, q = heads
            ia = _coords(in_shape, ins.index(p))
            ib = _coords(out_shape, outs.index(q))
            pairs = np.unique(np.stack([ia, ib], 1), axis=0)
            _tie(ctx, x, out, ins, outs, p, q, pairs)
            continue
        best = None
        for p in tracked:
            ia = _coords(in_shape, ins.index(p))
            for q in outs:
                if out.shape[q] == 1:
                    continue
                ib = _coords(out_shape, outs.index(q))
                pairs = np.unique(np.stack([ia, ib], 1), axis=0)
                n = _classes(pairs[:, 0], pairs[:, 1], x.shape[p], out.shape[q])
                if best is None or n > best[0]:
                    best = (n, p, q, pairs)
        if best is None:
            continue
        _, p, q, pairs = best
        _tie(ctx, x, out, ins, outs, p, q, pairs)


def _tie(ctx: RuleContext, x: Value, out: Value, ins: list[int], outs: list[int], p: int,
         q: int, pairs: np.ndarray) -> None:
    ctx.link(x, p, out, q, pairs[:, 0], pairs[:, 1])
    for a in ins:
        if a != p:
            ctx.pin(x, a, "reshaped together with a channel axis")
    for a in outs:
        if a != q:
            ctx.pin(out, a, "reshaped together with a channel axis")


def _heads_pair(ctx: RuleContext, x: Value, out: Value, ins: list[int], outs: list[int],
                tracked: list[int]) -> tuple[int, int] | None:
    """With ``unit=heads``: the (in axis, out axis) to tie where a reshape splits the last
    axis into (..., heads, head_dim) or merges (heads, head_dim) back: the heads axis, so a
    class is a whole head. (3*C) -> (3, heads, head_dim) ties heads too."""
    if ctx.unit != "heads":
        return None

    def heads_axis(v: Value, axes: list[int]) -> int | None:
        sized = [a for a in axes if v.shape[a] > 1]
        if len(sized) < 2 or sized[-1] != v.ndim - 1:
            return None
        return sized[-2]
    if len(ins) == 1 and ins[0] == x.ndim - 1 and tracked:
        h = heads_axis(out, outs)
        return None if h is None else (ins[0], h)
    if len(outs) == 1 and outs[0] == out.ndim - 1:
        h = heads_axis(x, ins)
        return None if h is None or h not in tracked else (h, outs[0])
    return None


@rule(ops.PERMUTE)
def permute(node: Node, ctx: RuleContext) -> None:
    for o, i in enumerate(node.attrs["perm"]):
        ctx.link(node.inputs[0], i, node.output, o)


@rule(ops.EXPAND)
def expand(node: Node, ctx: RuleContext) -> None:
    ctx.broadcast(node.inputs[0], node.output)
    for axis in node.attrs.get("symbolic_axes", []):
        ctx.pin(node.output, axis, "symbolic size")


def _others(v: Value, axis: int) -> list[int]:
    return [a for a in range(v.ndim) if a != axis]


@rule(ops.CONCAT)
def concat(node: Node, ctx: RuleContext) -> None:
    axis, out = node.attrs["axis"], node.output
    off = 0
    for x in node.inputs:
        if x.ndim != out.ndim:  # torch.cat skips empty 1-D tensors
            continue
        n = x.shape[axis]
        ctx.link(x, axis, out, axis, None, np.arange(off, off + n))
        for a in _others(x, axis):
            ctx.link(x, a, out, a)
        off += n


@rule(ops.SPLIT)
def split(node: Node, ctx: RuleContext) -> None:
    x, axis = node.inputs[0], node.attrs["axis"]
    if node.attrs.get("drop_axis"):
        ctx.pin(x, axis, "unbind")
        for o in node.outputs:
            for k, a in enumerate(_others(x, axis)):
                ctx.link(x, a, o, k)
        return
    off = 0
    for o in node.outputs:
        n = o.shape[axis]
        ctx.link(o, axis, x, axis, None, np.arange(off, off + n))
        for a in _others(x, axis):
            ctx.link(x, a, o, a)
        off += n
    if off != x.shape[axis]:  # some outputs are not in the graph: cannot rewrite sizes
        ctx.pin(x, axis, "split with unused parts")


@rule(ops.STACK)
def stack(node: Node, ctx: RuleContext) -> None:
    axis, out = node.attrs["axis"], node.output
    ctx.pin(out, axis, "stacked axis")
    for x in node.inputs:
        for a in range(x.ndim):
            ctx.link(x, a, out, a if a < axis else a + 1)


@rule(ops.SELECT)
def select(node: Node, ctx: RuleContext) -> None:
    x, axis, out = node.inputs[0], node.attrs["axis"], node.output
    ctx.pin(x, axis, "indexed by position")
    for k, a in enumerate(_others(x, axis)):
        ctx.link(x, a, out, k)


@rule(ops.SLICE)
def slice_(node: Node, ctx: RuleContext) -> None:
    x, axis, out = node.inputs[0], node.attrs["axis"], node.output
    for a in _others(x, axis):
        ctx.link(x, a, out, a)
    n = x.shape[axis]
    start = node.attrs["start"] or 0
    start = max(0, start + n if start < 0 else min(start, n))
    written = any(u.target.split(".")[-2].endswith("_") for u in out.users
                  if u.target.count(".") >= 2)
    if written:  # an in-place write through the slice: keep it where it is
        ctx.pin(x, axis, "slice written in place")
        ctx.pin(out, axis, "slice written in place")
    elif node.attrs["step"] == 1 and isinstance(start, int):
        # a contiguous range: its channels are the input's, offset; the adapter moves the
        # bounds when channels before or inside the range go
        ctx.link(out, axis, x, axis, None, np.arange(start, start + out.shape[axis]))
    else:
        ctx.pin(x, axis, "strided slice")
        ctx.pin(out, axis, "strided slice")


@rule(ops.INDEX)
def index(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    axes = node.attrs["axes"]
    for a in axes:
        ctx.pin(x, a, "indexed by tensor")
    if axes != list(range(axes[0], axes[-1] + 1)):
        ctx.barrier(node, "non-contiguous advanced indexing")
        return
    for a in range(axes[0]):
        ctx.link(x, a, out, a)
    after = x.ndim - axes[-1] - 1
    for k in range(1, after + 1):
        ctx.link(x, x.ndim - k, out, out.ndim - k)


@rule(ops.PAD, ops.ROLL)
def pad_or_roll(node: Node, ctx: RuleContext) -> None:
    x, out = node.inputs[0], node.output
    for a in range(x.ndim):
        if a in node.attrs["axes"]:
            ctx.pin(x, a, f"{node.op} along this axis")
            ctx.pin(out, a, f"{node.op} along this axis")
        else:
            ctx.link(x, a, out, a)
