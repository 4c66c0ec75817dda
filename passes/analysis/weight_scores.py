"""Scores from weights and gradients that pruning papers compare against.

``lamp``: LAMP's layer-adaptive magnitude, per channel: a channel's squared l2 norm over
the sum of the norms of the channels of its group that are at least as large (scores
become comparable across groups, for global ranking). ``fpgm``: FPGM's distance to the
geometric median: the summed distance of a channel's filters to the other channels'
filters in each producing layer; a channel close to the others is replaceable.
``hessian``: the second-order (Optimal Brain Damage) saliency 1/2 * sum H_ii * w_i^2, with
the Hessian diagonal taken as the empirical Fisher (squared gradients, one sample at a time
over the calibration batch, at most 16 samples)."""
from __future__ import annotations

import numpy as np
import torch

from prunepass.ir.graph import Graph
from prunepass.passes.analysis.importance import _accumulate, criterion, l2, prunable_classes

FISHER_SAMPLES = 16


@criterion("lamp")
def lamp(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    base = l2(graph, cg, am) ** 2
    scores = base.copy()
    for g in cg.groups:
        s = base[g.classes]
        order = np.argsort(s, kind="stable")
        tail = np.cumsum(s[order][::-1])[::-1]  # sum over the channels at least as large
        out = np.empty_like(s)
        out[order] = s[order] / np.maximum(tail, 1e-30)
        scores[g.classes] = out
    return scores


@criterion("fpgm")
def fpgm(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    values = {v.param: v for v in graph.state.values() if v.kind == "param"}
    in_group = prunable_classes(cg)
    scores = np.zeros(cg.n_classes)
    for g in cg.groups:
        if not in_group[g.classes].any():
            continue
        for param, axis in g.producers:
            v = values.get(param)
            if v is None:
                continue
            cls = cg.classes_of(v.name, axis)
            rows = np.moveaxis(am.model.state_array(param), axis, 0).reshape(len(cls), -1)
            ids, inverse = np.unique(cls, return_inverse=True)
            # a class that owns several rows (a head's head_dim rows) is their concatenation
            per = np.bincount(inverse)
            if (per != per[0]).any():
                feats = np.stack([rows[inverse == k].mean(0) for k in range(len(ids))])
            else:
                feats = rows[np.argsort(inverse, kind="stable")].reshape(len(ids), -1)
            t = torch.from_numpy(feats.astype(np.float32))
            scores[ids] += torch.cdist(t[None], t[None])[0].sum(1).double().numpy()
    return scores


def _samples(inputs, n: int) -> list:  # noqa: ANN001
    """The calibration batch as up to ``n`` batches of one sample."""
    from prunepass.frontends.torch.inputs import Inputs, normalize
    x = normalize(inputs)
    tensors = [t for t in [*x.args, *x.kwargs.values()] if isinstance(t, torch.Tensor)]
    batch = tensors[0].shape[0] if tensors and tensors[0].ndim else 1
    if batch <= 1 or any(t.ndim == 0 or t.shape[0] != batch for t in tensors):
        return [x]

    def take(t, i):  # noqa: ANN001, ANN202
        return t[i:i + 1] if isinstance(t, torch.Tensor) else t
    return [Inputs(tuple(take(a, i) for a in x.args), {k: take(v, i) for k, v in
                                                       x.kwargs.items()})
            for i in range(min(batch, n))]


@criterion("hessian")
def hessian(graph: Graph, cg, am) -> np.ndarray:  # noqa: ANN001
    inputs = am.calibration if am.calibration is not None else am.model.example_inputs
    fisher: dict[str, np.ndarray] = {}
    samples = _samples(inputs, FISHER_SAMPLES) if am.model.frontend == "torch" else [inputs]
    for s in samples:
        for name, g in am.model.state_gradients(s, am.loss_fn).items():
            fisher[name] = fisher.get(name, 0.0) + g * g
    weights = am.model.state_array
    return 0.5 * _accumulate(graph, cg, lambda n: fisher.get(n, 0.0) * weights(n) ** 2,
                             lambda a, ax: a.sum(ax), set(fisher))
