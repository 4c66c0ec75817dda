"""Scores read from activations on the calibration inputs (default: the example inputs).

Each layer that reads a channel (a linear or convolution input column) contributes:
``activation``: mean |x_c|; ``wanda``: ||x_c||_2 * sum_i |W_ic| (Wanda, per input column,
summed over the channel's columns); ``flap``: Var(x_c) * ||W_:c||^2 (FLAP's fluctuation: how
much output the channel's deviation from its mean carries). A channel class sums what its
columns get; a group no layer reads falls back to l2."""
from __future__ import annotations

import numpy as np

from prunepass.errors import PlanError
from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node, Value
from prunepass.passes.analysis.importance import criterion, fallback_to, prunable_classes


def _readers(graph: Graph, cg) -> list[tuple[Node, Value, int, np.ndarray]]:  # noqa: ANN001
    """(layer, its input, channel axis of the input, classes along it) for every linear
    and ungrouped convolution whose input channels touch a prunable group."""
    in_group = prunable_classes(cg)
    out = []
    for n in graph.nodes:
        if n.op == ops.LINEAR:
            axis = n.inputs[0].ndim - 1
        elif n.op == ops.CONV and n.attrs["groups"] == 1 and not n.attrs["transposed"]:
            axis = 1
        else:
            continue
        x, w = n.inputs[0], n.inputs[1]
        if x.kind != "act" or not w.is_state() or x.ndim <= axis:
            continue
        cls = cg.classes_of(x.name, axis)
        if in_group[cls].any():
            out.append((n, x, axis, cls))
    return out


def _column_sums(am, node: Node, power: int) -> np.ndarray:  # noqa: ANN001
    """sum_i |W_ic|^power per input channel c of a linear or convolution."""
    w = np.abs(am.model.state_array(node.inputs[1].param or node.inputs[1].name))
    w = w ** power if power != 1 else w
    return w.sum(axis=tuple(a for a in range(w.ndim) if a != 1))


def _score(graph: Graph, cg, am, per_column) -> np.ndarray:  # noqa: ANN001
    readers = _readers(graph, cg)
    wanted = {x.name: axis for _, x, axis, _ in readers}
    try:
        stats = am.model.activation_stats(am.calibration, wanted)
    except NotImplementedError as e:
        raise PlanError(f"activation scores: {e}") from None
    scores = np.zeros(cg.n_classes)
    seen = np.zeros(cg.n_classes, bool)
    for node, x, _, cls in readers:
        s = stats.get(x.name)
        if s is None:
            continue
        np.add.at(scores, cls, per_column(am, node, s))
        seen[cls] = True
    return fallback_to(graph, cg, am, scores, seen)


@criterion("activation")
def activation(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    return _score(graph, cg, am, lambda am, node, s: s.mean_abs)


@criterion("wanda")
def wanda(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    return _score(graph, cg, am, lambda am, node, s: s.norm * _column_sums(am, node, 1))


@criterion("flap")
def flap(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    return _score(graph, cg, am, lambda am, node, s: s.variance * _column_sums(am, node, 2))
