"""Runs analyses on demand and caches their results until a transform invalidates them."""
from __future__ import annotations

from typing import Any, Callable

from prunepass.frontends.base import ModelAdapter
from prunepass.pm.passes import AnalysisPass, PreservedAnalyses
from prunepass.pm.registry import lookup


class AnalysisManager:
    def __init__(self, model: ModelAdapter, calibration: Any = None, loss_fn: Any = None,
                 check_numerics: bool = False, energy_profile: str | None = None,
                 evaluate: Callable[[Any], float] | None = None) -> None:
        self.model = model
        # evaluate(native module) -> score, higher is better (e.g. accuracy in %): what the
        # sensitivity analysis and the search measure. Results are cached per pass options,
        # so set it before the first analysis that uses it.
        self.evaluate = evaluate
        self.energy_profile = energy_profile  # when set, records carry modelled energy
        self.node_latency: dict[str, float] | None = None  # measured, when a backend has it
        self.calibration = calibration  # inputs for data-driven analyses (Taylor)
        self.loss_fn = loss_fn
        self.check_numerics = check_numerics
        # the open prune plan (prunepass.plan.PrunePlan): made by plan passes, applied and
        # ended by remove-channels / mask-channels; a pass that changes the model ends it
        self.plan: Any = None
        self.plan_dropped_by: str | None = None
        # option values an analysis gets when a pass asks for it without them: a plan that
        # prunes whole heads sets {"channel-groups": {"unit": "heads"}}, and every pass that
        # asks for the groups while it is open sees the same ones
        self.defaults: dict[str, dict[str, Any]] = {}
        self._cache: dict[tuple[str, tuple], Any] = {}
        self.computed: list[str] = []  # analyses run, in order (for tests and reports)

    @property
    def graph(self):  # noqa: ANN201
        return self.model.graph

    def get(self, name: str, **opts: Any) -> Any:
        p = lookup(name)(**{**self.defaults.get(name, {}), **opts})
        if not isinstance(p, AnalysisPass):
            raise TypeError(f"{name} is a transform, not an analysis")
        return self.run(p)

    def run(self, p: AnalysisPass) -> Any:
        key = (p.name, tuple(sorted((k, str(v)) for k, v in p.opts.items())))
        if key not in self._cache:
            self._cache[key] = p.run(self.model.graph, self)
            self.computed.append(p.name)
        return self._cache[key]

    def cached(self, name: str) -> bool:
        return any(k[0] == name for k in self._cache)

    def invalidate(self, preserved: PreservedAnalyses) -> None:
        self._cache = {k: v for k, v in self._cache.items() if preserved.preserves(k[0])}
