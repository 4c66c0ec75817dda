"""The search space: a pruning ratio per channel group (given to prune-channels as
``group-ratios``), plus round-to and the importance criterion when several are offered.

A group is named by its first producer parameter (``conv2.weight``), as in
``prunepass groups MODEL`` and in ``group-ratios``; an Optuna parameter is ``ratio:NAME``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from prunepass.errors import PipelineError
from prunepass.passes.analysis.importance import CRITERIA
from prunepass.pm import Pass

# prune-channels options the search decides itself: giving them too is a conflict
SEARCH_OWNS = ("ratio", "group-ratios", "scope", "round-to", "importance", "target-macs",
               "target-energy", "target-latency-ms")


@dataclass(frozen=True)
class SearchSpace:
    groups: tuple[str, ...]
    max_ratio: dict[str, float]  # upper bound of each group's ratio
    step: float = 0.05
    round_to: tuple[int, ...] = (1,)
    importance: tuple[str, ...] = ("l2",)
    options: dict[str, Any] = field(default_factory=dict)  # fixed prune-channels options

    @classmethod
    def for_model(cls, cg, *, groups: Sequence[str] | None = None,  # noqa: ANN001
                  max_ratio: float | dict[str, float] = 0.8, step: float = 0.05,
                  round_to: Sequence[int] = (1,), importance: Sequence[str] = ("l2",),
                  options: dict[str, Any] | None = None) -> "SearchSpace":
        """The space over a model's channel groups ``cg`` (the channel-groups analysis)."""
        from prunepass.passes.analysis.sensitivity import eligible_groups
        from prunepass.passes.pipelines.prune_channels import PruneChannels
        opts = {k.replace("_", "-"): v for k, v in (options or {}).items()}
        clash = sorted(set(opts) & set(SEARCH_OWNS))
        if clash:
            raise PipelineError(f"search: {', '.join(clash)} are chosen by the search; remove "
                                "them from options (use groups=, max_ratio=, round_to=, "
                                "importance=)")
        PruneChannels(**opts)  # the remaining options must be valid prune-channels options
        names = [g.producers[0][0] for g in eligible_groups(cg, opts.get("ignore", []))]
        if groups is not None:
            by_param = {p: g.producers[0][0] for g in cg.groups for p, _ in g.producers}
            unknown = [n for n in groups if n not in by_param]
            if unknown:
                raise PipelineError(f"search: no channel group is produced by "
                                    f"{', '.join(map(repr, unknown))} (prunable groups: "
                                    f"{', '.join(names)})")
            chosen = [by_param[n] for n in groups]
            pinned = [n for n in chosen if n not in names]
            if pinned:
                raise PipelineError(f"search: the groups of {', '.join(pinned)} cannot be "
                                    "pruned (pinned, or ignored by options)")
            names = list(dict.fromkeys(chosen))
        if not names:
            raise PipelineError("search: the model has no prunable channel group")
        bounds = dict.fromkeys(names, max_ratio) if not isinstance(max_ratio, dict) else \
            {n: max_ratio.get(n, 0.8) for n in names}
        bad = {n: r for n, r in bounds.items() if not 0 < r < 1}
        if bad:
            raise PipelineError(f"search: max_ratio must be in (0, 1), got {bad}")
        if isinstance(max_ratio, dict) and set(max_ratio) - set(names):
            raise PipelineError("search: max_ratio names groups outside the space: "
                                f"{', '.join(sorted(set(max_ratio) - set(names)))}")
        if not 0 < step <= min(bounds.values()):
            raise PipelineError(f"search: ratio_step must be in (0, max_ratio], got {step}")
        if not round_to or any(not isinstance(r, int) or r < 1 for r in round_to):
            raise PipelineError(f"search: round_to must list integers >= 1, got {round_to!r}")
        unknown = [c for c in importance if c not in CRITERIA]
        if not importance or unknown:
            raise PipelineError(f"search: importance must list criteria among "
                                f"{', '.join(CRITERIA)}, got {list(importance)!r}")
        return cls(tuple(names), bounds, step, tuple(dict.fromkeys(round_to)),
                   tuple(dict.fromkeys(importance)), opts)

    def upper(self, name: str) -> float:
        """The largest ratio on the step grid that does not exceed the group's bound."""
        n = int(self.max_ratio[name] / self.step + 1e-9)
        return round(n * self.step, 10)

    def suggest(self, trial) -> dict[str, Any]:  # noqa: ANN001
        """Draw one point from an Optuna trial."""
        choice: dict[str, Any] = {
            "ratios": {g: trial.suggest_float(f"ratio:{g}", 0.0, self.upper(g), step=self.step)
                       for g in self.groups}}
        choice["round_to"] = trial.suggest_categorical("round_to", list(self.round_to)) \
            if len(self.round_to) > 1 else self.round_to[0]
        choice["importance"] = trial.suggest_categorical("importance", list(self.importance)) \
            if len(self.importance) > 1 else self.importance[0]
        return choice

    def from_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The point an Optuna trial's params describe."""
        return {"ratios": {g: params[f"ratio:{g}"] for g in self.groups},
                "round_to": params.get("round_to", self.round_to[0]),
                "importance": params.get("importance", self.importance[0])}

    def uniform(self, ratio: float) -> dict[str, Any]:
        """Optuna params of the point that prunes every group by ``ratio`` (on the grid)."""
        return self.point(dict.fromkeys(self.groups, ratio))

    def point(self, ratios: dict[str, float]) -> dict[str, Any]:
        """Optuna params for ratios per group (snapped to the grid; missing groups: 0)."""
        unknown = sorted(set(ratios) - set(self.groups))
        if unknown:
            raise PipelineError(f"search: seed point names groups outside the space: "
                                f"{', '.join(unknown)}")
        params: dict[str, Any] = {
            f"ratio:{g}": min(round(round(ratios.get(g, 0.0) / self.step) * self.step, 10),
                              self.upper(g))
            for g in self.groups}
        if len(self.round_to) > 1:
            params["round_to"] = self.round_to[0]
        if len(self.importance) > 1:
            params["importance"] = self.importance[0]
        return params

    def passes(self, choice: dict[str, Any]) -> list[Pass]:
        """prune-channels with the point's per-group ratios, then dce."""
        from prunepass.passes.transform.dce import DeadCodeElimination
        from prunepass.passes.pipelines.prune_channels import PruneChannels
        ratios = [f"{g}:{r:g}" for g, r in choice["ratios"].items() if r > 0]
        prune = PruneChannels(**self.options, ratio=0.0, group_ratios=ratios,
                              round_to=choice["round_to"], importance=choice["importance"])
        return [prune, DeadCodeElimination()]

    def signature(self) -> dict[str, Any]:
        """What a stored study must match to be resumed with this space."""
        return {"groups": list(self.groups), "max_ratio": self.max_ratio, "step": self.step,
                "round_to": list(self.round_to), "importance": list(self.importance),
                "options": {k: v for k, v in sorted(self.options.items())}}
