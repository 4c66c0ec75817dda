"""``search``: multi-objective search over per-group pruning ratios with Optuna's NSGA-II.

Each trial draws a ratio per channel group (and round-to / importance when several are
offered), prunes a copy of the model with ``prune-channels<group-ratios=[...]>,dce``,
optionally fine-tunes it (``finetune(module, epochs)``), and measures the objectives. The
study lives in Optuna storage: in memory by default, or any RDB URL
(``sqlite:///search.db``; ``postgresql://...`` to share one study between machines: run
the same ``search`` call on each, they divide ``n_trials`` between them). A finished
trial is committed when it ends, so an interrupted search loses nothing finished and the
same call resumes it. A trial whose evaluation raises or returns NaN is marked failed with
its reason (``fail_reason``) and the search goes on."""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from prunepass.errors import PipelineError, PlanError, PrunepassError
from prunepass.passes.analysis.sensitivity import EvaluationError, score_of
from prunepass.record import COUNTED, Record
from prunepass.search.objectives import DIRECTIONS, Constraint, parse_constraints, \
    parse_objectives
from prunepass.search.result import SearchResult
from prunepass.search.space import SearchSpace

log = logging.getLogger("prunepass.search")
FINISHED = ("COMPLETE", "FAIL", "PRUNED")


class TrialFailed(PrunepassError):
    """A trial could not be measured; its reason is the trial's ``fail_reason``."""


@dataclass
class _Context:
    base: Any  # the traced model (adapter), cloned for every trial
    space: SearchSpace
    objectives: list[str]
    constraints: list[Constraint]
    profile: str
    evaluate: Callable[[Any], Any] | None
    need_accuracy: bool
    measure_latency: Callable[[Any], float] | None
    finetune: Callable[[Any, int], None] | None
    finetune_epochs: int
    calibration: Any
    loss_fn: Any

    def prune(self, choice: dict[str, Any]) -> tuple[Record, Any]:
        """(record, pruned native module) for a point of the space; the base is untouched."""
        from prunepass.pm import AnalysisManager, PassManager
        adapter = self.base.clone()
        am = AnalysisManager(adapter, calibration=self.calibration, loss_fn=self.loss_fn,
                             energy_profile=self.profile, evaluate=self.evaluate)
        record = PassManager(self.space.passes(choice)).run(adapter, am)
        return record, adapter.materialize()


def record_metrics(record: Record, after: bool = True) -> dict[str, float]:
    """MACs and parameters (counted), latency and energy (modelled) from a record."""
    cost = record.cost_after if after else record.cost_before
    energy = record.energy_after if after else record.energy_before
    out = {"macs": float(cost["macs"]), "params": float(cost["params"])}
    if energy:
        out["latency_ms"] = energy["latency_s"] * 1e3
        if energy["unit"] == "pJ":
            out["energy_mj"] = energy["total"] / 1e9
    return out


def _measure(ctx: _Context, module: Any, what: str) -> float:
    try:
        seconds = float(ctx.measure_latency(module))  # type: ignore[misc]
    except Exception as e:  # the user's code
        raise EvaluationError(f"measure_latency raised {type(e).__name__}: {e} (on {what})") \
            from e
    if not math.isfinite(seconds) or seconds <= 0:
        raise EvaluationError(f"measure_latency returned {seconds} s on {what}")
    return seconds * 1e3


def _fail(trial, reason: str) -> None:  # noqa: ANN001
    trial.set_user_attr("fail_reason", reason)
    log.warning("trial %d failed: %s", trial.number, reason)
    raise TrialFailed(reason)


def _objective(trial, ctx: _Context) -> list[float]:  # noqa: ANN001
    t0 = time.perf_counter()
    choice = ctx.space.suggest(trial)
    from prunepass.pm import format_pipeline
    trial.set_user_attr("pipeline", format_pipeline(ctx.space.passes(choice)))
    try:
        try:
            record, module = ctx.prune(choice)
        except PrunepassError as e:
            _fail(trial, f"pruning failed: {e}")
        metrics = record_metrics(record)
        if ctx.finetune is not None and ctx.finetune_epochs > 0:
            try:
                ctx.finetune(module, ctx.finetune_epochs)
            except Exception as e:  # the user's code
                _fail(trial, f"fine-tune raised {type(e).__name__}: {e}")
            module.eval()
        try:
            if ctx.measure_latency is not None:
                metrics["latency_ms"] = _measure(ctx, module, f"trial {trial.number}")
            if ctx.need_accuracy:
                metrics["accuracy"] = score_of(ctx.evaluate, module,  # type: ignore[arg-type]
                                               f"trial {trial.number}")
        except EvaluationError as e:
            _fail(trial, str(e))
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "interrupted")
        raise
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
    if ctx.constraints:
        violations = [c.violation(metrics) for c in ctx.constraints]
        trial.set_user_attr("constraints", violations)
        if hasattr(trial, "set_constraint"):  # Optuna >= 5; older ones use constraints_func
            for c, v in zip(ctx.constraints, violations):
                trial.set_constraint(c.key, v)
    return [metrics[k] for k in ctx.objectives]


def _constraints_of(trial) -> list[float]:  # noqa: ANN001
    return trial.user_attrs["constraints"]


def make_storage(storage: Any) -> Any:
    """None: in memory; a URL: Optuna's RDB storage with heartbeats (a trial whose process
    died is marked failed after the grace period); a storage object: as it is."""
    if storage is None or not isinstance(storage, str):
        return storage
    import optuna
    from sqlalchemy.exc import SQLAlchemyError
    kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):  # several processes on one file: wait for the lock
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180,
                                              **kwargs)
        except SQLAlchemyError:
            # workers starting together race to create the schema: the loser retries
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial (failed ones with a traceback); we log one line per failure."""
    import warnings

    import optuna
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():  # constraints_func and heartbeats are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


def _check_feasible(ctx: _Context, dense: dict[str, float]) -> None:
    """Resource constraints shrink as pruning grows: if pruning every group by its upper
    bound misses one, no trial can meet it."""
    resource = [c for c in ctx.constraints if c.kind == "max" and not
                (c.metric == "latency_ms" and ctx.measure_latency is not None)]
    if not resource:
        return
    most = {"ratios": {g: ctx.space.upper(g) for g in ctx.space.groups},
            "round_to": min(ctx.space.round_to), "importance": ctx.space.importance[0]}
    metrics = record_metrics(ctx.prune(most)[0])
    for c in resource:
        if c.violation(metrics) > 0:
            raise PlanError(
                f"search: constraint {c.describe()} cannot be met: pruning every searched "
                f"group by its max ratio reaches {c.metric} {metrics[c.metric]:.6g} (dense "
                f"{dense[c.metric]:.6g}); raise max_ratio, search more groups or relax it")


def _sources(ctx: _Context, dense_record: Record) -> dict[str, str]:
    out = {"macs": COUNTED, "params": COUNTED}
    energy = dense_record.energy_before
    if energy:
        latency = energy["source"].split("latency ")[-1].rstrip(")")
        out["latency_ms"] = f"predicted by profile {energy['profile']} ({latency} latency model)"
        if energy["unit"] == "pJ":
            out["energy_mj"] = energy["source"]
    if ctx.measure_latency is not None:
        out["latency_ms"] = "measured by measure_latency()"
    if ctx.need_accuracy:
        tuned = f" after {ctx.finetune_epochs} fine-tune epoch(s)" \
            if ctx.finetune is not None and ctx.finetune_epochs > 0 else " (no fine-tuning)"
        out["accuracy"] = "evaluate() on the pruned model" + tuned
    return out


def search(model: Any, example_inputs: Sequence[Any] | Any = None,
           evaluate: Callable[[Any], Any] | None = None, *,
           objectives: Sequence[str] | str = ("accuracy", "macs"),
           constraints: dict[str, Any] | None = None, n_trials: int = 40,
           groups: Sequence[str] | None = None, max_ratio: float | dict[str, float] = 0.8,
           ratio_step: float = 0.05, round_to: Sequence[int] = (1,),
           importance: Sequence[str] = ("l2",), options: dict[str, Any] | None = None,
           profile: str = "x86-epyc", measure_latency: Callable[[Any], float] | None = None,
           finetune: Callable[[Any, int], None] | None = None, finetune_epochs: int = 1,
           storage: Any = None, study_name: str = "prunepass-search",
           population_size: int = 16, seed: int = 0, seed_ratios: Sequence[float] = (0.25, 0.5),
           seed_points: Sequence[dict[str, float]] = (),
           calibration: Sequence[Any] | None = None, loss_fn: Callable[[Any], Any] | None = None,
           timeout: float | None = None, progress: bool = True) -> SearchResult:
    """Search per-group pruning ratios for the Pareto front of ``objectives``.

    evaluate: ``evaluate(module) -> float``, higher is better (accuracy in %, say); needed
      for the ``accuracy`` objective and the ``accuracy_drop`` / ``accuracy`` constraints.
    objectives: among accuracy, latency_ms, energy_mj, macs, params (latency and energy
      are aliases). Latency is predicted by ``profile``'s latency model (roofline, or
      calibrated: prunepass.hardware.calibrate) unless ``measure_latency(module) -> s``
      is given; energy is always modelled.
    constraints: ``{"accuracy_drop": 1.0, "latency_ms": 4, "macs": "0.5x", ...}``: upper
      bounds (resources: absolute or relative to the dense model), accuracy_drop in points
      below the dense model's score, accuracy a lower bound.
    n_trials: trials the study should hold in the end (finished ones, failed included):
      a resumed study only runs the rest.
    groups: the groups searched, each named by a producer parameter (default: every
      prunable group); max_ratio (one bound, or per group) and ratio_step set the grid;
      round_to and importance are searched when they list several values; options are
      fixed prune-channels options (ignore, exact-only, min-channels, seed, ...).
    finetune: ``finetune(module, finetune_epochs)`` trains each pruned module before it
      is measured (``prunepass.search.recovery.classification_trainer`` makes one).
    storage / study_name: Optuna storage (None: in memory; an RDB URL; a storage object).
    seed_ratios: uniform ratios tried first in a new study (a warm start); seed_points:
      more first points, as ratios per group (``prunepass.search.allocate(...).ratios``).
    """
    from prunepass.errors import need
    optuna = need("optuna", "search", "the multi-objective search")

    from prunepass.api import load
    from prunepass.pm import AnalysisManager
    keys = parse_objectives(objectives)
    if n_trials < 1:
        raise PipelineError(f"search: n_trials must be >= 1, got {n_trials}")
    if finetune_epochs < 0:
        raise PipelineError(f"search: finetune_epochs must be >= 0, got {finetune_epochs}")
    spec = dict(constraints or {})
    need_accuracy = "accuracy" in keys or any(k in ("accuracy", "accuracy_drop") for k in spec)
    if need_accuracy and evaluate is None:
        raise PipelineError("search: the accuracy objective and accuracy constraints need "
                            "evaluate=fn, where fn(module) returns a score, higher is better")
    base = load(model, example_inputs).clone()
    am = AnalysisManager(base, calibration=calibration, loss_fn=loss_fn, energy_profile=profile)
    space = SearchSpace.for_model(am.get("channel-groups"), groups=groups, max_ratio=max_ratio,
                                  step=ratio_step, round_to=round_to, importance=importance,
                                  options=options)
    dense_record = Record.start(base, "", am)
    dense = record_metrics(dense_record, after=False)
    ctx = _Context(base, space, keys, [], profile, evaluate, need_accuracy, measure_latency,
                   finetune, finetune_epochs, calibration, loss_fn)
    missing = [k for k in keys if k not in dense and not (k == "accuracy" and need_accuracy)
               and not (k == "latency_ms" and measure_latency)]
    if missing:
        raise PipelineError(f"search: profile {profile!r} cannot give {', '.join(missing)} "
                            "(energy needs a profile in pJ)")
    dense_module = base.materialize()
    if measure_latency is not None:
        dense["latency_ms"] = _measure(ctx, dense_module, "the dense model")
    if need_accuracy:
        dense["accuracy"] = score_of(evaluate, dense_module, "the dense model")  # type: ignore
    ctx.constraints = parse_constraints(spec, dense)
    _check_feasible(ctx, dense)

    signature = {"space": space.signature(), "objectives": keys,
                 "constraints": {k: str(v) for k, v in sorted(spec.items())},
                 "finetune_epochs": finetune_epochs if finetune is not None else 0,
                 "model": {"macs": dense["macs"], "params": dense["params"]}}
    seeds = [space.uniform(r) for r in seed_ratios] + [space.point(p) for p in seed_points]
    with _quiet_optuna():
        sampler = optuna.samplers.NSGAIISampler(
            population_size=population_size, seed=seed,
            constraints_func=_constraints_of if ctx.constraints and not
            hasattr(optuna.trial.Trial, "set_constraint") else None)
        study = optuna.create_study(storage=make_storage(storage), study_name=study_name,
                                    directions=[DIRECTIONS[k] for k in keys], sampler=sampler,
                                    load_if_exists=True)
        stored = study.user_attrs.get("prunepass")
        if stored is None:
            study.set_user_attr("prunepass", signature)
            for params in seeds:
                study.enqueue_trial(params, skip_if_exists=True)
        elif stored != signature:
            diff = sorted(k for k in signature if stored.get(k) != signature[k])
            raise PlanError(f"search: study {study_name!r} in this storage was made with a "
                            f"different {', '.join(diff)}; use another study_name to start "
                            "a new one")
        states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
        remaining = n_trials - len(study.get_trials(deepcopy=False, states=states))
        if remaining > 0:
            study.optimize(lambda t: _objective(t, ctx), n_trials=remaining, timeout=timeout,
                           catch=(TrialFailed,), show_progress_bar=progress,
                           callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=states)])
    return SearchResult.collect(study, ctx, dense, _sources(ctx, dense_record))
