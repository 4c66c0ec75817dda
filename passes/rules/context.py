"""What a channel rule sees: every (value, axis) of the graph as a range of element ids,
and three verbs: ``link`` (these elements are the same channel), ``pin`` (these elements
cannot be removed) and ``inexact`` (removing them is not the same as zeroing them)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node, Value


@dataclass
class RuleContext:
    graph: Graph
    # "channels": a reshape into (heads, head_dim) ties head_dim, every head keeps a share;
    # "heads": it ties the heads axis, so whole heads (and key/value groups) are the unit
    unit: str = "channels"
    base: dict[tuple[int, int], int] = field(default_factory=dict)
    size: int = 0
    src: list[np.ndarray] = field(default_factory=list)
    dst: list[np.ndarray] = field(default_factory=list)
    pinned: list[np.ndarray] = field(default_factory=list)
    pin_reasons: list[str] = field(default_factory=list)
    inexact_ids: list[np.ndarray] = field(default_factory=list)
    inexact_reasons: list[str] = field(default_factory=list)
    distribution_ids: list[np.ndarray] = field(default_factory=list)
    tracked: set[tuple[int, int]] = field(default_factory=set)
    producers: list[tuple[Value, int]] = field(default_factory=list)
    barriers: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for v in self.graph.values():
            for axis, s in enumerate(v.shape):
                self.base[(id(v), axis)] = self.size
                self.size += s
            if v.is_state():
                self.tracked.update((id(v), a) for a in range(v.ndim))

    # -- element ids ------------------------------------------------------------------
    def ids(self, v: Value, axis: int) -> np.ndarray:
        axis = axis % v.ndim
        b = self.base[(id(v), axis)]
        return np.arange(b, b + v.shape[axis])

    def is_tracked(self, v: Value, axis: int) -> bool:
        return (id(v), axis % v.ndim) in self.tracked

    # -- verbs ------------------------------------------------------------------------
    def link(self, a: Value, ax: int, b: Value, bx: int,
             ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> None:
        """Element ``ia[i]`` of ``a`` along ``ax`` is the same channel as element ``ib[i]``
        of ``b`` along ``bx`` (default: identity, the sizes must agree)."""
        ea, eb = self.ids(a, ax), self.ids(b, bx)
        if ia is None and ib is None:
            if len(ea) != len(eb):
                self.pin(a, ax, "size mismatch")
                self.pin(b, bx, "size mismatch")
                return
            self.src.append(ea)
            self.dst.append(eb)
        else:
            self.src.append(ea if ia is None else ea[ia])
            self.dst.append(eb if ib is None else eb[ib])
        if self.is_tracked(a, ax) or self.is_tracked(b, bx):
            self.tracked.add((id(a), ax % a.ndim))
            self.tracked.add((id(b), bx % b.ndim))

    def pin(self, v: Value, axis: int, reason: str) -> None:
        if v.shape[axis % v.ndim] > 0:
            self.pinned.append(self.ids(v, axis))
            self.pin_reasons.append(reason)

    def pin_all(self, v: Value, reason: str) -> None:
        for a in range(v.ndim):
            self.pin(v, a, reason)

    def inexact(self, v: Value, axis: int, reason: str, distribution: bool = False) -> None:
        """Removing these elements is not zeroing them: a statistic spans the axis (a norm,
        a mean), or, ``distribution``, the axis is what a distribution is over (a softmax):
        removing its entries changes what the model computes, not only its statistics."""
        self.inexact_ids.append(self.ids(v, axis))
        self.inexact_reasons.append(reason)
        if distribution:
            self.distribution_ids.append(self.ids(v, axis))

    def state_view(self, v: Value, axis: int) -> tuple[Value, int] | None:
        """The parameter (and its axis) that ``v``'s ``axis`` is, where ``v`` is a parameter
        or a transpose of one (``x @ self.weight.T``); None otherwise."""
        if not hasattr(self, "_made_by"):
            self._made_by = {id(o): n for n in self.graph.nodes for o in n.outputs}
        axis %= v.ndim
        while not v.is_state():
            node = self._made_by.get(id(v))
            if node is None or node.op != ops.PERMUTE:
                return None
            axis, v = node.attrs["perm"][axis], node.inputs[0]
        return v, axis

    def producer(self, v: Value, axis: int) -> None:
        """Mark a parameter axis whose channels are a layer's outputs: groups are formed
        around these, and removing one of them removes computation."""
        self.producers.append((v, axis % v.ndim))

    def barrier(self, node: Node, why: str) -> None:
        self.barriers.append((node.name, node.target, why))
        for v in [*node.inputs, *node.outputs]:
            self.pin_all(v, f"barrier {node.target}")

    def identity_all(self, a: Value, b: Value) -> None:
        for axis in range(min(a.ndim, b.ndim)):
            self.link(a, axis, b, axis)

    def broadcast(self, x: Value, out: Value) -> None:
        """Numpy broadcasting, aligned from the right: equal sizes are the same channel,
        size-1 axes are repeated and carry no channel."""
        off = out.ndim - x.ndim
        for axis in range(x.ndim):
            if x.shape[axis] == out.shape[axis + off]:
                self.link(x, axis, out, axis + off)
            elif x.shape[axis] != 1:
                self.pin(x, axis, "broadcast mismatch")
