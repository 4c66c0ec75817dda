"""Budgets: find the pruning amount that meets a MACs, energy or latency target.

A plan's cost is evaluated without touching the model: the IR's value shapes are set to
what the plan keeps, the cost (and energy) analyses run on that, and the shapes are put
back. A coarse scan and then bisection over the global ratio find the least pruning that
meets the target; with global scope the ratio is spread unevenly over groups by
(normalised) importance."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir.graph import Graph


def parse_target(text: str, option: str, owner: str = "select-budget") -> tuple[float, bool]:
    """'0.5x' -> (0.5, relative); '1.2e9' -> (1.2e9, absolute)."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            value, relative = float(t[:-1]), True
        else:
            value, relative = float(t), False
    except ValueError:
        raise PipelineError(f"option {option!r} of pass {owner!r} expects a number or a "
                            f"ratio like 0.5x, got {text!r}") from None
    if value <= 0 or (relative and value >= 1):
        raise PipelineError(f"option {option!r} of pass {owner!r} must be positive "
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


Keep = dict[tuple[str, int], np.ndarray]
# A budget's metric: (graph with the plan's shapes, the plan's keep; None: dense) -> value.
Metric = Callable[[Graph, Optional[Keep]], float]


def metric_fn(kind: str, profile: str, latency_source: str = "profile",
              threads: int = 0, trials: int = 0, model: Any = None) -> Metric:
    """The metric a budget on ``kind`` (macs, energy, latency) is searched on. ``model``
    (the model adapter) is needed by latency-source=tvm-model, which builds every plan."""
    from prunepass.passes.analysis.cost import compute_cost
    if kind == "macs":
        return lambda g, keep=None: float(compute_cost(g).totals["macs"])
    from prunepass.hardware import load_profile
    from prunepass.passes.analysis.energy import compute_energy
    prof = load_profile(profile)
    if kind == "latency" and latency_source == "tvm-model":
        if model is None:
            raise PipelineError("latency-source=tvm-model builds each plan: it needs the model")
        return model_latency(model, threads, trials)
    if kind == "latency" and latency_source != "profile":
        return measured_latency(prof, latency_source, threads, trials)
    if kind == "latency":
        return lambda g, keep=None: compute_energy(g, compute_cost(g),
                                                   prof).totals["latency_s"] * 1e3
    if prof.unit != "pJ":
        raise PipelineError(f"target-energy needs a profile in pJ; {prof.name} is in {prof.unit}")
    return lambda g, keep=None: compute_energy(g, compute_cost(g), prof).totals["total"] / 1e9


def model_latency(model: Any, threads: int, trials: int) -> Metric:
    """Latency in ms of the planned model itself: a copy of ``model`` (an adapter) with the
    plan's channels removed and dead nodes erased, compiled by TVM for this CPU, tuned with
    ``trials`` MetaSchedule trials per kernel into the layer-latency database (so compiling
    the pruned model later reuses every kernel), and timed with time_evaluator. Each call
    builds a model: minutes with tuning, seconds for kernels already tuned."""
    import tempfile
    from prunepass.backends.measure.layer_latency import set_tvm_threads, tvm_database
    from prunepass.backends.tvm.compile import compile_model
    from prunepass.backends.tvm.measure import measure_compiled
    set_tvm_threads(threads)

    def metric(g: Graph, keep: Keep | None = None) -> float:
        planned = model.planned(keep) if keep else model.clone()
        inputs = tuple(planned.example_inputs)
        with tempfile.TemporaryDirectory(prefix="prunepass-budget-") as tmp:
            compiled = compile_model(planned.materialize(), inputs, "x86", tmp,
                                     max_trials_per_task=trials or None,
                                     database=tvm_database() if trials else None)
            return measure_compiled(compiled, inputs, repeats=15, number=3,
                                    warmup=3).median_ms
    return metric


def measured_latency(profile: Any, backend: str, threads: int, trials: int = 0) -> Metric:
    """Latency in ms of a graph: its convolution and linear layers each timed alone on
    ``backend`` at their (planned) shapes (tvm: tuned with ``trials`` per kernel), plus the
    profile's model for every other node (normalisation, activations, pooling: small beside
    the layers, and memory-bound)."""
    from prunepass.backends.measure.layer_latency import LayerLatency
    from prunepass.passes.analysis.layer_blocks import layer_spec
    from prunepass.passes.analysis.cost import compute_cost
    from prunepass.passes.analysis.energy import compute_energy
    timer = LayerLatency(backend, threads, trials=trials if backend == "tvm" else 0)

    def metric(g: Graph, keep: Keep | None = None) -> float:
        specs = {n.name: layer_spec(n) for n in g.nodes}
        energy = compute_energy(g, compute_cost(g), profile)
        other = sum(e.latency_s for e in energy.nodes if specs.get(e.node) is None) * 1e3
        return float(sum(timer.many([s for s in specs.values() if s is not None]))) + other
    return metric


def search_ratio(graph: Graph, cg, choose: Callable[[float], np.ndarray],  # noqa: ANN001
                 metric: Metric, target: float, relative: bool,
                 max_ratio: float, what: str, steps: int = 16,
                 within: float = 0.01) -> tuple[np.ndarray, dict[str, Any]]:
    """The smallest ratio whose plan meets ``target``; returns (removed mask, summary).

    A coarse scan first finds the first of ``grid`` evenly spaced ratios that meets the
    target, then bisection narrows the step before it until the plan is within ``within``
    (a fraction) below the target. Bisection alone assumes the metric
    falls as the ratio grows; a metric that knows channel alignment (measured layers, a
    calibrated profile) is not monotone, and bisection over the whole range can land far
    below the least pruning that meets the target."""
    dense = metric(graph, None)
    goal = target * dense if relative else target

    evaluations = 0

    def evaluate(r: float) -> tuple[np.ndarray, float]:
        nonlocal evaluations
        evaluations += 1
        removed = choose(r)
        keep = cg.keep_for(removed)
        with planned_shapes(graph, keep):
            return removed, metric(graph, keep)

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
