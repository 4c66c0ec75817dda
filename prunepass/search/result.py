"""What a search returns: the Pareto set (each member with its re-appliable record), a
table, a Pareto plot, and files."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunepass.errors import PlanError
from prunepass.record import Record
from prunepass.search.objectives import DIRECTIONS, LABELS, Constraint


@dataclass
class ParetoPoint:
    trial: int
    metrics: dict[str, float]
    choice: dict[str, Any]  # ratios per group, round_to, importance
    pipeline: str
    record: Record  # prunepass.apply_record(fresh_model, inputs, record) re-applies it


@dataclass
class SearchResult:
    study: Any  # the optuna.Study
    objectives: list[str]
    constraints: list[Constraint]
    dense: dict[str, float]
    sources: dict[str, str]
    pareto: list[ParetoPoint]

    @classmethod
    def collect(cls, study, ctx, dense: dict[str, float],  # noqa: ANN001
                sources: dict[str, str]) -> "SearchResult":
        """The feasible Pareto set (Optuna's best_trials), one member per distinct plan,
        each with its record rebuilt by re-running the plan on the model."""
        points, seen = [], set()
        for t in sorted(study.best_trials, key=lambda t: t.number):
            pipeline = t.user_attrs["pipeline"]
            if pipeline in seen:
                continue
            seen.add(pipeline)
            choice = ctx.space.from_params(t.params)
            record, _ = ctx.prune(choice)
            if record.cost_after["macs"] != t.user_attrs["metrics"]["macs"]:
                raise PlanError(f"trial {t.number}'s plan gives {record.cost_after['macs']} "
                                f"MACs now but gave {t.user_attrs['metrics']['macs']:.0f} when "
                                "it ran: the model or its weights differ from the study's")
            points.append(ParetoPoint(t.number, dict(t.user_attrs["metrics"]), choice,
                                      pipeline, record))
        key = ctx.objectives[-1]
        points.sort(key=lambda p: p.metrics[key])
        return cls(study, list(ctx.objectives), list(ctx.constraints), dense, sources, points)

    # -- trials -----------------------------------------------------------------------
    def trials(self, state: str = "COMPLETE") -> list:
        import optuna
        return self.study.get_trials(deepcopy=False,
                                     states=(getattr(optuna.trial.TrialState, state),))

    @property
    def failed(self) -> list[tuple[int, str]]:
        """(trial number, reason) of every failed trial."""
        return [(t.number, t.user_attrs.get("fail_reason", "unknown"))
                for t in self.trials("FAIL")]

    def feasible(self, t) -> bool:  # noqa: ANN001
        return all(v <= 0 for v in t.user_attrs.get("constraints", []))

    # -- reporting --------------------------------------------------------------------
    def table(self) -> str:
        d = self.dense
        lines = ["objectives: " + ", ".join(f"{k} ({DIRECTIONS[k]})" for k in self.objectives)]
        if self.constraints:
            lines.append("constraints: " + ", ".join(c.describe() for c in self.constraints))
        lines += [f"  {k}: {v}" for k, v in self.sources.items()]
        complete = self.trials()
        infeasible = sum(not self.feasible(t) for t in complete)
        lines.append(f"trials: {len(complete)} complete ({infeasible} infeasible), "
                     f"{len(self.failed)} failed; Pareto set: {len(self.pareto)}")
        cols = [k for k in ("accuracy", "macs", "params", "latency_ms", "energy_mj") if k in d]
        head = f"{'trial':>6} " + " ".join(f"{_col(k):>11}" for k in cols) + \
            f" {'MACs x':>7}  plan"
        lines += [head, "-" * len(head)]
        lines.append(f"{'dense':>6} " + " ".join(f"{_fmt(k, d[k]):>11}" for k in cols) +
                     f" {1.0:>7.2f}")
        for p in self.pareto:
            lines.append(f"{p.trial:>6} " + " ".join(f"{_fmt(k, p.metrics[k]):>11}" for k in cols)
                         + f" {d['macs'] / p.metrics['macs']:>7.2f}  {_plan(p.choice)}")
        return "\n".join(lines)

    def plot(self, path: str | Path, x: str = "macs", y: str = "accuracy") -> Path:
        from prunepass.search.plots import Series, pareto_plot
        if x not in self.dense or y not in self.dense:
            raise ValueError(f"plot: {x} and {y} must be measured metrics "
                             f"({', '.join(self.dense)})")
        maximize = (DIRECTIONS[x] == "maximize", DIRECTIONS[y] == "maximize")
        complete = self.trials()
        scale = 1e6 if x == "macs" else 1e3 if x == "params" else 1.0
        ok = [(t.user_attrs["metrics"][x], t.user_attrs["metrics"][y]) for t in complete
              if self.feasible(t)]
        bad = [(t.user_attrs["metrics"][x], t.user_attrs["metrics"][y]) for t in complete
               if not self.feasible(t)]
        front = [(p.metrics[x], p.metrics[y]) for p in self.pareto]
        series = [Series("trials", ok, front=False, style={"color": "grey"}),
                  Series("infeasible", bad, front=False, style={"color": "tab:red",
                                                                  "marker": "x"}),
                  Series("Pareto set", front, style={"color": "tab:blue"})]
        xl = LABELS[x] + (" (millions)" if scale == 1e6 else " (thousands)" if scale == 1e3
                          else "")
        return pareto_plot(path, series, xlabel=f"{xl}, {self.sources.get(x, '')}"[:90],
                           ylabel=LABELS[y], maximize=maximize, xscale=scale,
                           dense=(self.dense[x], self.dense[y]),
                           title=f"{len(complete)} trials, {len(self.pareto)} on the front")

    def save(self, folder: str | Path) -> dict[str, Path]:
        """table.txt, pareto.csv, summary.json, records/trial-N.json and pareto.png."""
        out = Path(folder)
        (out / "records").mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "table.txt", "csv": out / "pareto.csv",
                 "summary": out / "summary.json"}
        paths["table"].write_text(self.table() + "\n")
        metrics = list(self.dense)
        with open(paths["csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["trial", *metrics, "record", "pipeline"])
            for p in self.pareto:
                rec = out / "records" / f"trial-{p.trial:05d}.json"
                p.record.save(rec)
                w.writerow([p.trial, *(p.metrics.get(k, "") for k in metrics),
                            rec.relative_to(out), p.pipeline])
        paths["summary"].write_text(json.dumps({
            "objectives": self.objectives, "dense": self.dense, "sources": self.sources,
            "constraints": [c.describe() for c in self.constraints],
            "failed": self.failed,
            "pareto": [{"trial": p.trial, "metrics": p.metrics, "choice": p.choice,
                        "pipeline": p.pipeline,
                        "record": f"records/trial-{p.trial:05d}.json"} for p in self.pareto],
        }, indent=1))
        if "accuracy" in self.dense:
            paths["plot"] = self.plot(out / "pareto.png")
        return paths


def _col(key: str) -> str:
    return {"accuracy": "accuracy", "macs": "MACs (M)", "params": "params (k)",
            "latency_ms": "latency ms", "energy_mj": "energy mJ"}[key]


def _fmt(key: str, v: float) -> str:
    if key == "macs":
        return f"{v / 1e6:.3f}"
    if key == "params":
        return f"{v / 1e3:.1f}"
    if key in ("latency_ms", "energy_mj"):
        return f"{v:.4g}"
    return f"{v:.2f}"


def _plan(choice: dict[str, Any]) -> str:
    short = " ".join(f"{g.removesuffix('.weight')}:{r:.2f}" for g, r in choice["ratios"].items())
    extra = f" round-to={choice['round_to']}" if choice["round_to"] != 1 else ""
    return short + extra + (f" {choice['importance']}" if choice["importance"] != "l2" else "")
