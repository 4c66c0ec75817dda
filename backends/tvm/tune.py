"""Tune with MetaSchedule: each kernel gets its share of the trial budget, kernels the database
has already tuned are skipped (no new measurements), a tqdm bar shows progress, and an
interrupted run keeps what it measured."""
from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from prunepass.backends.tvm.cost_model import open_cost_model, save_cost_model
from prunepass.backends.tvm.database import (database_dir, database_synced,
                                             exhausted_workloads, mark_cpu, mark_exhausted,
                                             measured_per_workload, open_database,
                                             other_cpu_notes, workload_hash)
from prunepass.backends.tvm.dependency import check_tuning_dependencies
from prunepass.backends.tvm.errors import TargetError, TuningInterrupted
from prunepass.backends.tvm.rpc import RPCTracker, wait_for_device
from prunepass.backends.tvm.targets import TargetSpec
from prunepass.backends.tvm.time_budget import time_budget_scheduler

BUILD_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 60.0
MAX_TRIALS_PER_BATCH = 64
MS_LOGGER = "tvm.s_tir.meta_schedule"
POPULATION = 512          # MetaSchedule's default, reached from 64 trials per kernel up
BUDGET_MAX_TRIALS_PER_TASK = 2000  # under a time budget the clock, not a count, ends a kernel
BUDGET_TRIALS_PER_BATCH = 8        # small batches: every kernel measured early, a closer stop
BUDGET_SECONDS_PER_TRIAL = 2.0     # a conv's build and run here, for sizing populations
MIN_POPULATION = 32
POPULATION_PER_TRIAL = 8
# Schedule rules TOPI names on its pooling blocks (annotation "schedule_rule")
POOL_RULES = ("pool_max", "pool_avg", "adaptive_pool_max", "adaptive_pool_avg")


@dataclass
class TuneReport:
    """What one tuning call did. ``measured`` counts new measurements made by this call."""
    database: str
    tasks: list[str] = field(default_factory=list)     # every kernel of the model
    tuned: list[str] = field(default_factory=list)     # kernels tuned by this call
    reused: list[str] = field(default_factory=list)    # kernels the database already had
    trials_per_task: int = 0
    measured: int = 0
    minutes: float | None = None                        # the time budget, if one was given
    seconds: float = 0.0                                 # how long this call tuned
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        share = (f"{self.minutes:g}-minute budget, {self.seconds:.0f} s used" if self.minutes
                 else f"up to {self.trials_per_task} each")
        return (f"{len(self.tasks)} kernels: {len(self.tuned)} tuned now "
                f"({self.measured} measurements, {share}), "
                f"{len(self.reused)} reused from {self.database}")


def tune_model(mod: Any | Sequence[Any], spec: TargetSpec, database: str | Path, *,
               trials: int = 0, max_trials_per_task: int | None = None,
               minutes: float | None = None, rpc: RPCTracker | None = None,
               progress: bool = True, seed: int | None = None,
               callbacks: Sequence[Any] = ()) -> tuple[Any, TuneReport]:
    """Tune the kernels of ``mod`` (a Relax IRModule from compile.prepare, or a list of them)
    for ``spec``; return the database and a report.

    A list is tuned in one call, each kernel shared between modules once: MetaSchedule's
    start (task contexts, builder and runner pools, the cost model) costs seconds per call,
    more than a few trials of a small kernel.

    trials: the whole budget; each kernel gets trials // kernels, at least 1, so none is left
        untuned; max_trials_per_task overrides that share. With neither, nothing is measured
        and the database is only opened (its records still apply to the build).
    minutes: a wall-clock budget for this call instead (time_budget.py): each kernel is
        measured once, then batches go to the kernels with the largest share of the model's
        latency; no batch is started that would end past the budget. Kernels the database
        already has measurements for are reused, not tuned again.
    database: a folder; records live in ``database/<target key>/`` and any later call whose
        kernels have the same shapes reuses them: a kernel with at least its share of
        measurements is not measured again.
    rpc: measure on the device behind this tracker instead of here (needed for aarch64 and
        CUDA, whose code cannot run on this machine).
    callbacks: extra MetaSchedule MeasureCallbacks, run after each measured batch."""
    import tvm.s_tir.meta_schedule as ms
    from prunepass.progress import bar as progress_bar

    started = time.monotonic()
    if rpc is None and not spec.runs_on_host and (trials > 0 or max_trials_per_task):
        raise TargetError(f"tuning for {spec.name} measures on the device: pass an RPC tracker "
                          f"(rpc=...), or trials=0 to build untuned")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    deadline = time.monotonic() + minutes * 60 if minutes else None
    folder = database_dir(database, spec)
    db, notes = open_database(folder)
    report = TuneReport(str(folder), notes=[*notes, *other_cpu_notes(database, spec)],
                        minutes=minutes)
    tasks = _extract_tasks(mod if isinstance(mod, (list, tuple)) else [mod], spec)
    report.tasks = [t.task_name for t in tasks]
    if not tasks or (trials <= 0 and not max_trials_per_task and not minutes):
        return db, report
    if minutes:
        report.trials_per_task = max_trials_per_task or BUDGET_MAX_TRIALS_PER_TASK
        pending = _untuned(tasks, db, folder, report, enough=1)
    else:
        report.trials_per_task = max_trials_per_task or max(1, trials // len(tasks))
        pending = _untuned(tasks, db, folder, report, enough=report.trials_per_task)
    if not pending:
        return db, report
    mark_cpu(folder, spec)

    check_tuning_dependencies()
    per_task = report.trials_per_task
    bar: Any = None  # made below, once the cost model's own bar is done

    def ended_early(measured: int) -> None:
        # A kernel that ran out of candidates will not take its share: the bar's total
        # shrinks, or it would stop short of its end (densenet121's 408 kernels at 8
        # trials: 1941 of 3264) and its estimate of the time left would be wrong.
        if not minutes:  # a time bar ends with the budget
            bar.total -= per_task - measured
            bar.refresh()

    with _quiet_console():
        runner = _runner(rpc)  # before the slow import below: a dead tracker fails fast
        import_tensor_intrinsics()
        register_pool_rules(spec.target)
        # a population sized for the trials a kernel can expect: evolving 512 candidates
        # to measure a handful costs more than the measurements
        expected = per_task if not minutes else max(
            MIN_POPULATION // POPULATION_PER_TRIAL,
            int(minutes * 60 / BUDGET_SECONDS_PER_TRIAL / len(pending)))
        with _unnamed_handlers_removed(), _new_console_quiet():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                pending, work_dir=str(folder), strategy=_search(expected, per_task, ended_early),
                seed=seed)
        cost_model, cost_notes = open_cost_model(folder, db, spec.target, progress=progress)
    report.notes += cost_notes
    before = len(db)
    scheduler: Any = "gradient"
    budget_callbacks: list[Any] = []
    if minutes:
        bar = progress_bar(total=round(minutes * 60), unit="s", enabled=progress,
                           desc=f"tuning {len(contexts)} kernels for {spec.name} "
                                f"({minutes:g} min)",
                           bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")
        bar.update(min(bar.total, time.monotonic() - (deadline - minutes * 60)))
        batch = BUDGET_TRIALS_PER_BATCH
        scheduler, learn = time_budget_scheduler(deadline, batch, lambda seconds: (
            bar.update(min(seconds, max(0.0, bar.total - bar.n)))))
        budget_callbacks = [learn]
    else:
        bar = progress_bar(total=per_task * len(contexts), unit="trial", enabled=progress,
                           desc=f"tuning {len(contexts)} kernels for {spec.name}")
        batch = MAX_TRIALS_PER_BATCH
    try:
        with _quiet_console(), _sigint_seen() as interrupted:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(folder),
                max_trials_global=per_task * len(contexts), max_trials_per_task=per_task,
                num_trials_per_iter=min(per_task, batch), task_scheduler=scheduler,
                builder=_builder(None if minutes else bar), runner=runner, database=db,
                cost_model=cost_model,
                measure_callbacks=[*ms.MeasureCallback.create("default"), *budget_callbacks,
                                   *callbacks])
    except (KeyboardInterrupt, Exception) as err:
        # A Ctrl-C inside a Python callback reaches us as a RuntimeError from TVM's FFI.
        if isinstance(err, KeyboardInterrupt) or interrupted:
            raise TuningInterrupted(str(folder), len(db) - before) from err
        raise
    finally:
        bar.close()
        with _quiet_console():  # it learnt from what was measured, cut short or not
            save_cost_model(cost_model, folder)
    database_synced(folder)  # only after a whole run: one cut short is read again from disk
    report.measured = len(db) - before
    report.seconds = round(time.monotonic() - started, 1)
    measured = measured_per_workload(db)
    keys = [workload_hash(task.dispatched[0]) for task in pending]
    if minutes:
        untouched = sum(1 for key in keys if not measured[key])
        if untouched:
            report.notes.append(f"the {minutes:g}-minute budget ended before {untouched} of "
                                f"{len(keys)} kernels were measured: they keep default "
                                f"schedules (a longer budget measures them)")
        return db, report
    # A finished search that measured less than its share found no more candidates.
    mark_exhausted(folder, {key for key in keys if measured[key] < per_task})
    return db, report


def _extract_tasks(mods: Sequence[Any], spec: TargetSpec) -> list[Any]:
    """The kernels of all ``mods``, each workload once."""
    import tvm.s_tir.meta_schedule as ms
    tasks: dict[int, Any] = {}
    for mod in mods:
        for task in ms.relax_integration.extract_tasks(fuse(mod, spec), spec.target):
            tasks.setdefault(workload_hash(task.dispatched[0]), task)
    return list(tasks.values())


def _untuned(tasks: list[Any], db: Any, folder: Path, report: TuneReport, enough: int
             ) -> list[Any]:
    """The tasks whose workload has fewer than ``enough`` measurements in the database and
    a search space not known to be exhausted; sorts every task name into report.tuned or
    report.reused."""
    measured = measured_per_workload(db)
    exhausted = exhausted_workloads(folder)
    pending = []
    for task in tasks:
        key = workload_hash(task.dispatched[0])
        if measured[key] >= enough or (key in exhausted and measured[key]):
            report.reused.append(task.task_name)
        else:
            report.tuned.append(task.task_name)
            pending.append(task)
    return pending


def import_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin, which MetaSchedule needs, in seconds instead of minutes.

    It parses ~250 TVMScript functions; each parse calls inspect.stack(), and inspect.getmodule
    scans all of sys.modules for every frame whose file it has not cached. The frames of the
    import machinery ("<frozen importlib._bootstrap>") are never cached, so with torch loaded
    (thousands of modules) the import took 60-300 s here. Caching those pseudo-files as "no
    module" gives getmodule's own answer for them (None) without the scan."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    primed = []
    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        pseudo_file = f"<frozen {name}>"
        for key in (pseudo_file, os.path.normcase(os.path.abspath(pseudo_file))):
            if key not in inspect.modulesbyfile:
                inspect.modulesbyfile[key] = "<no module: frozen import machinery>"
                primed.append(key)
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        for key in primed:
            inspect.modulesbyfile.pop(key, None)


def register_pool_rules(target: Any) -> None:
    """TOPI's pooling blocks ask for schedule rules (meta_schedule.pool_max, ...) that TVM 0.27
    does not register. MetaSchedule then prints a two-line warning for each pooling kernel,
    through the progress bar, drops the request and schedules the block with its generic
    rules. Registered here, each rule does just that, without the warning: the search
    space, the traces and the kernels stay the same."""
    import tvm

    def generic(sch: Any, block: Any) -> list[Any]:
        sch.unannotate(block, "schedule_rule")
        return [sch]

    for key in target.keys:
        for rule in POOL_RULES:
            name = f"s_tir.meta_schedule.{key}.meta_schedule.{rule}"
            if tvm.get_global_func(name, allow_missing=True) is None:
                tvm.register_global_func(name, generic)


def fuse(mod: Any, spec: TargetSpec) -> Any:
    """Legalize and fuse as compile_relax does before it looks kernels up in the database, so
    the workloads tuned here are the ones the build finds."""
    import tvm
    from tvm import relax
    passes = [*relax.pipeline.library_dispatch_passes(spec.target),
              relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(),
              relax.transform.FuseTIR()]
    with spec.target:
        return tvm.transform.Sequential(passes)(mod)


def build_kernel(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default_build without its `import tvm.s_tir.tensor_intrin`, which takes
    25-50 s and runs in every fresh builder process, once per batch. Tensorized schedules are
    already rewritten when they reach the builder, so the build does not look intrinsics up."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _search(expected: int, per_task: int, ended_early: Callable[[int], None]) -> Any:
    """MetaSchedule's evolutionary search, its population scaled to the trials a kernel is
    ``expected`` to get: evolving 512 candidates per round to measure a handful costs more
    than the measurements. It ends a kernel at the first round that finds nothing new to
    measure (see _ends_when_exhausted) and then calls ``ended_early`` with the kernel's
    measurements, if fewer than per_task."""
    import tvm.s_tir.meta_schedule as ms
    population = min(POPULATION, max(MIN_POPULATION, POPULATION_PER_TRIAL * expected))
    search = ms.search_strategy.EvolutionarySearch(population_size=population)
    return _ends_when_exhausted(search, per_task, ended_early)


def _ends_when_exhausted(search: Any, per_task: int,
                         ended_early: Callable[[int], None]) -> Any:
    """``search`` (a MetaSchedule search strategy) ending a kernel's tuning at the first round
    that offers no candidate. MetaSchedule's own search returns empty rounds four times
    before it gives up, each a whole evolution (about 1 s in all for a kernel with a single
    schedule, such as a concatenation with its batch norm and activation; densenet121 has
    about 190)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class EndsWhenExhausted(PySearchStrategy):
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.measured = 0
            self.ended = False

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: Any,
                       database: Any = None, cost_model: Any = None) -> None:
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database,
                                  cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self) -> Any:
            candidates = self.inner.generate_measure_candidates()
            if candidates is not None and len(candidates) > 0:
                self.measured += len(candidates)
                return candidates
            if not self.ended and self.measured < per_task:
                ended_early(self.measured)
            self.ended = True
            return None

        def notify_runner_results(self, candidates: Any, results: Any) -> None:
            self.inner.notify_runner_results(candidates, results)

        def clone(self) -> Any:
            return EndsWhenExhausted(self.inner.clone())

    return EndsWhenExhausted(search)


def _builder(bar: Any | None) -> Any:
    """MetaSchedule's LocalBuilder with build_kernel, advancing ``bar`` (tqdm) by each batch
    it builds. Building is half a trial's time here (a conv's batch of 8: built in 3 s, run in
    2 s), and measurements reach measure callbacks only when the scheduler next visits their
    kernel: at a few trials per kernel, after every other kernel's batch, so a bar fed by
    them stood still until the end (80 s for the 12 kernels of 6 layer blocks)."""
    import tvm.s_tir.meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class Builder(ms.builder.LocalBuilder._cls):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = super().build(build_inputs)
            if bar is not None:
                bar.update(len(build_inputs))
            return results

    return Builder(timeout_sec=BUILD_TIMEOUT_S, f_build=build_kernel)


def _runner(rpc: RPCTracker | None) -> Any:
    import tvm.s_tir.meta_schedule as ms
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
    wait_for_device(rpc)  # fail now, with a clear message, rather than inside the runner
    config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port,
                                 tracker_key=rpc.key, session_timeout_sec=int(rpc.timeout_s))
    return ms.runner.RPCRunner(rpc_config=config, max_workers=1)


@contextmanager
def _unnamed_handlers_removed() -> Iterator[None]:
    """MetaSchedule re-configures its logger by handler name on every tuning call and fails on
    an unnamed handler, such as the capture handlers pytest attaches; hide those meanwhile."""
    logger = logging.getLogger(MS_LOGGER)
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


@contextmanager
def _sigint_seen() -> Iterator[list[bool]]:
    """Note a Ctrl-C (SIGINT) while tuning; TVM's FFI turns the KeyboardInterrupt into another
    exception on its way out of C++."""
    seen: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen  # only the main thread receives signals
        return

    def handler(signum: int, frame: Any) -> None:
        seen.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _new_console_quiet() -> Iterator[None]:
    """MetaSchedule replaces its console handler whenever it makes task contexts, at its
    logger's level then (DEBUG once it has run), and prints the log folder through it; with
    the logger at WARNING meanwhile the new handler starts at WARNING. MetaSchedule sets the
    logger itself back to DEBUG, so its log files keep everything."""
    logger = logging.getLogger(MS_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        if logger.level == logging.WARNING:  # no handler was made: leave it as it was
            logger.setLevel(level)


@contextmanager
def _quiet_console() -> Iterator[None]:
    """MetaSchedule prints a task table to stdout after every batch; keep them in its log
    files (``<database>/<target>/logs``) and let the console show warnings and the bar."""
    logger = logging.getLogger(MS_LOGGER)
    consoles = [h for h in logger.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for h, level in zip(consoles, levels):
            h.setLevel(level)
