"""importance: a score per channel class; low scores are removed first.

Criteria: ``l1``/``l2`` (norm of every weight slice the channel owns: its filters and the
consumers' input columns), ``bn-scale`` (|gamma| of its batch norms; groups without one fall
back to l2), ``taylor`` (first-order Taylor: |sum of w * dL/dw| over the channel's weights,
on the calibration batch), ``random``; from activations (activation_scores.py): ``activation``,
``wanda``, ``flap``; from weights and gradients (weight_scores.py): ``lamp``, ``fpgm``,
``hessian``. New criteria register in ``CRITERIA`` with ``@criterion``."""
from __future__ import annotations

from typing import Callable

import numpy as np

from prunepass.ir import ops
from prunepass.ir.graph import Graph
from prunepass.pm import AnalysisPass, Option, register

Criterion = Callable[[Graph, object, object], np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def criterion(name: str) -> Callable[[Criterion], Criterion]:
    def reg(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn
    return reg


def prunable_classes(cg) -> np.ndarray:  # noqa: ANN001
    """A bool per class: in a group and not pinned."""
    in_group = np.zeros(cg.n_classes, bool)
    for g in cg.groups:
        in_group[g.classes[g.prunable]] = True
    return in_group


def fallback_to(graph: Graph, cg, am, scores: np.ndarray, seen: np.ndarray  # noqa: ANN001
                ) -> np.ndarray:
    """Groups a criterion could not score (no class ``seen``) get their l2 scores."""
    missing = [g for g in cg.groups if not seen[g.classes].any()]
    if missing:
        base = l2(graph, cg, am)
        for g in missing:
            scores[g.classes] = base[g.classes]
    return scores


def _grouped_axes(graph: Graph, cg, names=None):  # noqa: ANN001, ANN202
    """(value, axis, classes) for every parameter axis that touches a prunable group."""
    in_group = prunable_classes(cg)
    for name, v in graph.state.items():
        if v.kind != "param" or (names is not None and name not in names):
            continue
        for axis in range(v.ndim):
            cls = cg.classes_of(v.name, axis)
            if in_group[cls].any():
                yield v, axis, cls


def _accumulate(graph: Graph, cg, arrays, per_slice, names=None) -> np.ndarray:  # noqa: ANN001
    scores = np.zeros(cg.n_classes)
    for v, axis, cls in _grouped_axes(graph, cg, names):
        a = arrays(v.param)
        other = tuple(i for i in range(a.ndim) if i != axis)
        np.add.at(scores, cls, per_slice(a, other))
    return scores


@criterion("l1")
def l1(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    return _accumulate(graph, cg, am.model.state_array, lambda a, ax: np.abs(a).sum(ax))


def _square_sum(a: np.ndarray, other: tuple[int, ...]) -> np.ndarray:
    """Sum of squares over ``other`` without a squared copy of the tensor (an LLM's
    embedding is hundreds of MB)."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:a.ndim]
    kept = "".join(c for i, c in enumerate(letters) if i not in other)
    return np.einsum(f"{letters},{letters}->{kept}", a, a)


@criterion("l2")
def l2(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    return np.sqrt(_accumulate(graph, cg, am.model.state_array, _square_sum))


@criterion("bn-scale")
def bn_scale(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    gammas = {n.inputs[1].param for n in graph.nodes
              if n.op == ops.BATCHNORM and "weight" in n.attrs.get("has", [])}
    scores = _accumulate(graph, cg, am.model.state_array, lambda a, ax: np.abs(a), gammas)
    return fallback_to(graph, cg, am, scores, scores != 0)


@criterion("taylor")
def taylor(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    grads = am.model.state_gradients(am.calibration, am.loss_fn)
    weights = am.model.state_array
    signed = _accumulate(graph, cg, lambda n: weights(n) * grads.get(n, 0.0),
                         lambda a, ax: a.sum(ax), set(grads))
    return np.abs(signed)


@criterion("random")
def random(graph: Graph, cg, am, seed: int = 0) -> np.ndarray:  # noqa: ANN001
    return np.random.default_rng(seed).random(cg.n_classes)


# criteria in files of their own register when imported; after CRITERIA exists
from prunepass.passes.analysis import activation_scores, weight_scores  # noqa: E402,F401


@register
class ImportanceAnalysis(AnalysisPass):
    """Score every channel class (norms, bn-scale, Taylor, Hessian, LAMP, FPGM, activation,
    Wanda, FLAP, random)."""
    name = "importance"
    options = (
        Option("criterion", str, "l2", "how channels are scored", tuple(CRITERIA)),
        Option("seed", int, 0, "seed of the random criterion"),
    )

    def run(self, graph: Graph, am) -> np.ndarray:  # noqa: ANN001
        cg = am.get("channel-groups")
        if self["criterion"] == "random":
            return random(graph, cg, am, self["seed"])
        return CRITERIA[self["criterion"]](graph, cg, am)

