"""Budgets: find the pruning amount that meets a MACs, energy or latency target.

A plan's cost is evaluated without touching the model: the IR's value shapes are set to
what the plan keeps, the cost (and energy) analyses run on that, and the shapes are put
back. A coarse scan and then bisection over the global ratio find the least pruning that
meets the target; with global scope the ratio is spread unevenly over groups by
(normalised) importance."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir.graph import Graph


def parse_target(text: str, option: str) -> tuple[float, bool]:
    """'0.5x' -> (0.5, relative); '1.2e9' -> (1.2e9, absolute)."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            value, relative = float(t[:-1]), True
        else:
            value, relative = float(t), False
    except ValueError:
        raise PipelineError(f"option {option!r} of pass 'prune-channels' expects a number or a "
                            f"ratio like 0.5x, got {text!r}") from None
    if value <= 0 or (relative and value >= 1):
        raise PipelineError(f"option {option!r} of pass 'prune-channels' must be positive "
                            f"(and below 1x when relative), got {text!r}")
    return value, relative


@contextmanager
def planned_shapes(graph: Graph, keep: dict[tuple[str, int], np.ndarray]) -> Iterator[Graph]:
    values = {v.name: v for v in graph.values()}
    saved = {}
    try:
        for (name, axis), idx in keep.items():
            v = values[name]
            saved.setdefault(id(v), (v, v.shape))
            shape = list(v.shape)
            shape[axis] = len(idx)
            v.shape = tuple(shape)
        yield graph
    finally:
        for v, shape in saved.values():
            v.shape = shape


def metric_fn(kind: str, profile: str, latency_source: str = "profile",
              threads: int = 0, trials: int = 0) -> Callable[[Graph], float]:
    from prunepass.passes.analysis.cost import compute_cost
    if kind == "macs":
        return lambda g: float(compute_cost(g).totals["macs"])
    from prunepass.hardware import load_profile
    from prunepass.passes.analysis.energy import compute_energy
    prof = load_profile(profile)
    if kind == "latency" and latency_source != "profile":
        return measured_latency(prof, latency_source, threads, trials)
    if kind == "latency":
        return lambda g: compute_energy(g, compute_cost(g), prof).totals["latency_s"] * 1e3
    if prof.unit != "pJ":
        raise PipelineError(f"target-energy needs a profile in pJ; {prof.name} is in {prof.unit}")
    return lambda g: compute_energy(g, compute_cost(g), prof).totals["total"] / 1e9  # mJ


def measured_latency(profile: Any, backend: str, threads: int,
                     trials: int = 0) -> Callable[[Graph], float]:
    """Latency in ms of a graph: its convolution and linear layers each timed alone on
    ``backend`` at their (planned) shapes (tvm: tuned with ``trials`` per kernel), plus the
    profile's model for every other node (normalisation, activations, pooling: small beside
    the layers, and memory-bound)."""
    from prunepass.backends.measure.layer_latency import LayerLatency
    from prunepass.passes.analysis.channel_latency import layer_spec
    from prunepass.passes.analysis.cost import compute_cost
    from prunepass.passes.analysis.energy import compute_energy
    timer = LayerLatency(backend, threads, trials=trials if backend == "tvm" else 0)

    def metric(g: Graph) -> float:
        specs = {n.name: layer_spec(n) for n in g.nodes}
        energy = compute_energy(g, compute_cost(g), profile)
        other = sum(e.latency_s for e in energy.nodes if specs.get(e.node) is None) * 1e3
        return float(sum(timer.many([s for s in specs.values() if s is not None]))) + other
    return metric


def search_ratio(graph: Graph, cg, choose: Callable[[float], np.ndarray],  # noqa: ANN001
                 metric: Callable[[Graph], float], target: float, relative: bool,
                 max_ratio: float, what: str, steps: int = 16,
                 within: float = 0.01) -> tuple[np.ndarray, dict[str, Any]]:
    """The smallest ratio whose plan meets ``target``; returns (removed mask, summary).

    A coarse scan first finds the first of ``grid`` evenly spaced ratios that meets the
    target, then bisection narrows the step before it until the plan is within ``within``
    (a fraction) below the target. Bisection alone assumes the metric
    falls as the ratio grows; a metric that knows channel alignment (measured layers, a
    calibrated profile) is not monotone, and bisection over the whole range can land far
    below the least pruning that meets the target."""
    dense = metric(graph)
    goal = target * dense if relative else target

    evaluations = 0

    def evaluate(r: float) -> tuple[np.ndarray, float]:
        nonlocal evaluations
        evaluations += 1
        removed = choose(r)
        with planned_shapes(graph, cg.keep_for(removed)):
            return removed, metric(graph)

    grid = 8
    lo = 0.0
    for k in range(1, grid + 1):
        hi = max_ratio * k / grid
        best, best_val = evaluate(hi)
        if best_val <= goal:
            break
        lo = hi
    else:
        raise PlanError(f"{what} budget {goal:.4g} cannot be met: pruning every group by "
                        f"max-ratio={max_ratio} reaches {best_val:.4g} (dense {dense:.4g}); "
                        "channels behind barriers, inputs and outputs are kept")
    # the bracket is 1/grid of the range: log2(grid) of the ``steps`` halvings are done
    for _ in range(max(steps - (grid.bit_length() - 1), 1)):
        if best_val >= goal * (1 - within):  # close enough: each evaluation may be costly
            break
        mid = (lo + hi) / 2
        removed, val = evaluate(mid)
        if val <= goal:
            hi, best, best_val = mid, removed, val
        else:
            lo = mid
    return best, {"budget": what, "target": goal, "dense": dense, "achieved": best_val,
                  "ratio": hi, "evaluations": evaluations}
