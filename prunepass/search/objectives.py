"""What a search measures about each pruned model, in which direction, and the constraints.

Metrics: ``accuracy`` (the user's evaluation function: any score, higher is better),
``latency_ms`` (predicted by the hardware profile's latency model, roofline or calibrated,
or measured when a measuring function is given), ``energy_mj`` (modelled from the
profile), ``macs`` and ``params`` (counted from the IR). Every number carries its source."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from prunepass.errors import PipelineError
from prunepass.passes.plan.budget import parse_target

DIRECTIONS = {"accuracy": "maximize", "latency_ms": "minimize", "energy_mj": "minimize",
              "macs": "minimize", "params": "minimize"}
ALIASES = {"latency": "latency_ms", "energy": "energy_mj", "score": "accuracy"}
LABELS = {"accuracy": "accuracy", "latency_ms": "latency (ms)", "energy_mj": "energy (mJ)",
          "macs": "MACs", "params": "parameters"}


def metric_name(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in DIRECTIONS:
        raise PipelineError(f"search: unknown objective {name!r}; use "
                            f"{', '.join(DIRECTIONS)} (or latency, energy)")
    return key


def parse_objectives(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    keys = [metric_name(n.strip()) for n in names]
    if not keys:
        raise PipelineError("search: give at least one objective, e.g. accuracy,macs")
    if len(set(keys)) != len(keys):
        raise PipelineError(f"search: objective listed twice in {list(names)!r}")
    return keys


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` (kind max) or ``metric >= bound`` (kind min)."""
    key: str  # as the user wrote it: accuracy_drop, latency_ms, macs, ...
    metric: str
    bound: float
    kind: str

    def violation(self, metrics: dict[str, float]) -> float:
        """<= 0 when satisfied (Optuna's convention), else by how much it is missed."""
        v = metrics[self.metric]
        return v - self.bound if self.kind == "max" else self.bound - v

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.kind == 'max' else '>='} {self.bound:.6g}"


def parse_constraints(spec: dict[str, Any] | None, dense: dict[str, float]) -> list[Constraint]:
    """{"accuracy_drop": 1.0, "latency_ms": 4, "macs": "0.5x", "accuracy": 95} -> bounds.
    Resource bounds are absolute or relative to the dense model ("0.5x")."""
    out = []
    for key, value in (spec or {}).items():
        if key == "accuracy_drop":
            try:
                drop = float(value)
            except (TypeError, ValueError):
                raise PipelineError(f"search: constraint accuracy_drop must be a number of "
                                    f"points, got {value!r}") from None
            if drop < 0:
                raise PipelineError(f"search: constraint accuracy_drop must be >= 0, got {drop}")
            out.append(Constraint(key, "accuracy", dense["accuracy"] - drop, "min"))
        elif key == "accuracy":
            out.append(Constraint(key, "accuracy", float(value), "min"))
        else:
            metric = ALIASES.get(key, key)
            if metric not in DIRECTIONS:
                known = ", ".join(k for k in DIRECTIONS if k != "accuracy")
                raise PipelineError(f"search: unknown constraint {key!r}; use accuracy_drop, "
                                    f"accuracy, {known}")
            if metric not in dense:
                raise PipelineError(f"search: constraint {key!r} needs {metric}, which this "
                                    "search cannot compute (energy needs a profile in pJ)")
            try:
                target, relative = parse_target(str(value), key)
            except PipelineError:
                raise PipelineError(f"search: constraint {key!r} expects a positive number or "
                                    f"a fraction of the dense model like 0.5x, got {value!r}") \
                    from None
            out.append(Constraint(key, metric, target * dense[metric] if relative else target,
                                  "max"))
    return out
