"""A default schedule for the CPU kernels no tuning record covers: parallel over the outer
spatial loops, vectorized along the axis contiguous in memory.

TVM's CPU pipeline leaves such kernels as it legalized them: one thread, scalar loops, and
for NHWC reductions (a squeeze-excite mean, a max pool) the channel loop outermost, so each
channel walks the whole tensor. After library kernels take the convolutions and matmuls,
these kernels are what is left, and many of them are never measured by a short tuning run
(densenet121: 187 of 205). This rule gives every one of them a schedule a tuner would start
from: producers inlined, then per remaining block

    parallel(fuse(outer spatial loops)) > vector blocks > reduction loops > vectorize(lanes)

where the vector axis is the spatial iterator that indexes the last dimension of both the
output and the inputs (the channel in NHWC). A concatenation along it is cut where its
inputs meet, each piece vectorized on its own. A reduction over the contiguous axis (layer
norm, softmax) keeps that loop innermost and scalar; its outer loops are still parallel.
Kernels with no such axis (a transpose) are left to LLVM's vectorizer."""
from __future__ import annotations

import math
from typing import Any

# Below this many iterations a block runs on one thread: starting the pool's threads costs
# more than the work (a squeeze-excite bias of 8 channels, say).
MIN_PARALLEL_ITERATIONS = 4096
# Outer iterations enough to share among threads without splitting the vector axis too
MIN_PARALLEL_ROWS = 64
# The widest concatenation piece vectorized as one vector (float32: 16 AVX-512 registers)
MAX_PIECE_LANES = 256


def default_schedule_pass(target: Any) -> Any:
    """The IRModule pass giving every PrimFunc not yet scheduled (not tuned) the default
    CPU schedule; a no-op for kernels the rule does not understand."""
    from tvm.s_tir import dlight as dl
    return dl.ApplyDefaultSchedule(_rule(target))


def _rule(target: Any) -> Any:
    from tvm.s_tir import dlight as dl
    from tvm.target.codegen import llvm_get_vector_width

    vector_bits = llvm_get_vector_width(target) if target.kind.name == "llvm" else 128
    vector_bits = vector_bits if vector_bits > 0 else 128

    @dl.ScheduleRule.from_callable("prunepass.cpu_default")
    def cpu_default(func: Any, target: Any, _tunable: bool) -> Any:
        return schedule_cpu_default(func, vector_bits)

    return cpu_default


def schedule_cpu_default(func: Any, vector_bits: int) -> Any | None:
    """The default schedule of one PrimFunc, or None where it does not apply (opaque
    blocks, dynamic shapes)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks or any("O" in b.dom_kind() for b in blocks):
        return None
    if any(not isinstance(d, int) for b in blocks for d in _extents(b)):
        return None  # dynamic shapes: left to TVM's defaults
    blocks = try_inline(sch, blocks)
    for block in blocks:
        _schedule_block(sch, block, vector_bits)
    return sch


def _extents(block: Any) -> list[Any]:
    from tvm import tirx
    return [int(i.dom) if isinstance(i.dom, (int, tirx.IntImm)) else i.dom
            for i in block.iters]


def _schedule_block(sch: Any, block: Any, vector_bits: int) -> None:
    rv = block.block_rv
    loops = sch.get_loops(rv)
    if len(loops) != len(block.iters) or not loops:
        return  # inlining reshaped it: leave it as it is
    kinds = block.dom_kind()
    extents = [int(e) for e in _extents(block)]
    stmt = sch.get(rv)
    vector = _vector_axis(stmt, block)
    lanes = _lanes(stmt, vector_bits, extents[vector]) if vector is not None else 1
    spatial = [i for i, k in enumerate(kinds) if k == "S" and i != vector]
    reduction = [i for i, k in enumerate(kinds) if k == "R"]
    total = math.prod(extents)
    outer = [loops[i] for i in spatial]
    rows = total // max(extents[vector] if vector is not None else 1, 1)
    for i in reduction:
        rows //= extents[i]
    middle, inner = [], []
    points = _branch_points(stmt, block.iters[vector].var, extents[vector]) \
        if vector is not None and not reduction else []
    if points:
        _partitioned(sch, outer, loops[vector], points, total, stmt, vector_bits)
        return
    if vector is not None and lanes > 1:
        vo, vi = sch.split(loops[vector], factors=[None, lanes])
        # the vector blocks stay a serial loop of their own where the outer loops give the
        # threads enough work, and join the parallel loop where they do not (a pooled
        # squeeze-excite vector: one row)
        (middle if rows >= MIN_PARALLEL_ROWS else outer).append(vo)
        inner.append(vi)
    elif vector is not None:
        outer.append(loops[vector])
    elif not reduction:
        return  # no axis contiguous in output and inputs alike (a transpose): LLVM's
        # own vectorizer does better on TVM's loops than a fused parallel loop (15 vs 28 us)
    order = outer + middle + [loops[i] for i in reduction] + inner
    if len(order) > 1:
        sch.reorder(*order)
    _fused_parallel(sch, outer, total)
    if inner:
        sch.vectorize(inner[0])
    if reduction and inner:
        # the output's initial value set before the reduction loops, not tested for in the
        # vectorized update (the order MetaSchedule's postprocessors use)
        sch.decompose_reduction(rv, loops[reduction[0]])


def _fused_parallel(sch: Any, outer: list[Any], total: int) -> None:
    """The ``outer`` loops (adjacent, outermost first) fused into one, run on the thread
    pool when the block has ``total`` >= MIN_PARALLEL_ITERATIONS iterations."""
    if not outer:
        return
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if total >= MIN_PARALLEL_ITERATIONS:
        sch.parallel(fused)


def _vector_axis(stmt: Any, block: Any) -> int | None:
    """The spatial iterator indexing the last dimension of the output and of every input
    that has it (the NHWC channel), or None where the innermost read runs along a reduction
    axis or another iterator; an index into ``block.iters``."""
    from tvm import ir, sym, tirx
    analyzer = sym.Analyzer()  # a reshape's index (v % 384 for v < 384) simplified first
    for i in block.iters:
        analyzer.bind(i.var, ir.Range(0, i.dom))

    def last_var(region: Any) -> Any | None:
        return _index_var(analyzer.simplify(region.region[-1].min)) if region.region else None

    last_write = last_var(stmt.writes[0]) if len(stmt.writes) == 1 else None
    if last_write is None:
        return None
    position = next((n for n, i in enumerate(block.iters) if i.var.same_as(last_write)), None)
    if position is None or block.iters[position].kind != "S":
        return None
    for region in stmt.reads:
        if not region.region:
            continue
        index = analyzer.simplify(region.region[-1].min)
        if isinstance(index, tirx.IntImm) and int(region.region[-1].extent) == 1:
            continue  # a scalar or a per-row value broadcast along the vector axis
        var = _index_var(index)
        if var is None or not var.same_as(last_write):
            return None
    return position


def _index_var(index: Any) -> Any | None:
    """The iterator of an index that is the iterator or the iterator plus a constant (a
    concatenation's input at a channel offset)."""
    from tvm import tirx
    if isinstance(index, (tirx.Add, tirx.Sub)) and isinstance(index.b, tirx.IntImm):
        index = index.a
    elif isinstance(index, tirx.Add) and isinstance(index.a, tirx.IntImm):
        index = index.b
    return index if isinstance(index, tirx.Var) else None


def _lanes(stmt: Any, vector_bits: int, extent: int) -> int:
    """Vector lanes for the output's dtype: the widest of a register's lanes, half or a
    quarter of them that divides ``extent`` (1000 classes: 8 lanes of 16), at least 4."""
    bits = stmt.writes[0].source.dtype.bits if stmt.writes else 32
    lanes = max(vector_bits // max(bits, 8), 1)
    for candidate in (lanes, lanes // 2, lanes // 4):
        if candidate >= 4 and extent % candidate == 0:
            return candidate
    return 1


def _branch_points(stmt: Any, var: Any, extent: int) -> list[int]:
    """Where the block's value switches source along ``var``: the constants c of conditions
    ``c <= var`` (and the like) in if_then_else / select, as a concatenation along the
    channels has; sorted, inside (0, extent)."""
    import tvm_ffi
    from tvm import ir, tirx
    points: set[int] = set()

    def condition(cond: Any) -> None:
        a, b = getattr(cond, "a", None), getattr(cond, "b", None)
        if isinstance(a, tirx.IntImm) and isinstance(b, tirx.Var) and b.same_as(var):
            offset = {tirx.LE: 0, tirx.LT: 1}.get(type(cond))  # c <= v, c < v
        elif isinstance(b, tirx.IntImm) and isinstance(a, tirx.Var) and a.same_as(var):
            offset = {tirx.GE: 0, tirx.LT: 0, tirx.GT: 1, tirx.LE: 1}.get(type(cond))
            a, b = b, a
        else:
            return
        if offset is not None:
            points.add(int(a.value) + offset)

    def call(node: Any) -> None:
        if getattr(node.op, "name", "").endswith(".if_then_else"):
            condition(node.args[0])

    def select(node: Any) -> None:
        condition(node.condition)

    tvm_ffi.structural_walk(stmt.body, [(ir.expr.Call, call), (tirx.Select, select)])
    return sorted(p for p in points if 0 < p < extent)


def _partitioned(sch: Any, outer: list[Any], vector_loop: Any, points: list[int], total: int,
                 stmt: Any, vector_bits: int) -> None:
    """The vector axis cut where the source switches, the outer loops parallel: each piece
    reads one input, with no branch per element. Where every cut falls on a multiple of the
    vector lanes, the axis is split into vectors first and the vector loop of each piece is
    vectorized; otherwise each piece up to MAX_PIECE_LANES wide is one vector, which LLVM
    cuts into registers (a loop starting at an offset cannot be split)."""
    extent = int(sch.get(vector_loop).extent)
    lanes = _lanes(stmt, vector_bits, math.gcd(extent, *points))
    if lanes > 1:
        vector_loop, inner = sch.split(vector_loop, factors=[None, lanes])
        points = [p // lanes for p in points]
        extent //= lanes
    if outer:
        sch.reorder(*outer, vector_loop)
    _fused_parallel(sch, outer, total)
    bounds = [0, *points, extent]
    widths = [b - a for a, b in zip(bounds, bounds[1:])]
    pieces = sch.loop_partition(vector_loop, [*widths[:-1], None])  # the last one inferred
    for piece, width in zip(pieces, widths):
        if lanes > 1:
            for block in sch.get_child_blocks(piece):
                sch.vectorize(sch.get_loops(block)[-1])
        elif _lanes(stmt, vector_bits, width) > 1 and width <= MAX_PIECE_LANES:
            sch.vectorize(piece)
