"""Tuning to a wall-clock budget: MetaSchedule's task scheduler replaced by one that spends
the minutes where the model's latency is, and stops before the budget would be overrun.

Each kernel is measured once first (the largest first, in case the budget ends there); then
every next batch of trials goes to the kernel with the most to gain: its share of the
model's latency (best time so far x how often the model calls it) divided by the batches it
has had, so that a kernel already tuned for a while gives way to a slower one. Before each
batch the scheduler checks the clock: a batch that would end past the budget, estimated
from that kernel's slowest batch so far (or the mean of all before its first), is not
started; when no kernel's batch fits, tuning ends."""
from __future__ import annotations

import time
from typing import Any, Callable

SAFETY = 1.5  # a batch's time varies: start one only with this much of its estimate left
FIRST_GUESS_S = 1.0  # seconds per trial before any batch has been timed (a conv here: 1-2)


def time_budget_scheduler(deadline: float, batch: int, on_batch: Callable[[float], None]
                          ) -> Any:
    """A MetaSchedule task scheduler that stops at ``deadline`` (time.monotonic()) and calls
    ``on_batch(seconds)`` after each batch of up to ``batch`` trials; also a measure callback
    (pass it to tune_tasks as one) through which it learns each kernel's best time."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class TimeBudget(PyTaskScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.best_s: dict[int, float] = {}     # kernel -> best measured seconds
            self.batches: dict[int, int] = {}      # kernel -> batches dispatched
            self.running: int | None = None
            self.started = 0.0
            self.per_trial_s: float | None = None  # running estimate, from finished batches
            self.task_trial_s: dict[int, float] = {}  # the same, per kernel (they differ 10x)
            self.last_batch = 0

        def next_task_id(self) -> int:
            tasks = self._outer().tasks_
            self._finish_running()
            alive = [i for i, task in enumerate(tasks) if not task.is_terminated]
            if not alive:
                return -1
            alive = [i for i in alive if self._time_for(i)]
            if not alive:  # no kernel's next batch fits in the time left
                return -1
            fresh = [i for i in alive if i not in self.batches]
            if fresh:  # everyone measured once, biggest first
                pick = max(fresh, key=lambda i: tasks[i].flop * tasks[i].task_weight)
            else:
                pick = max(alive, key=lambda i: self._gain(tasks[i], i))
            self.batches[pick] = self.batches.get(pick, 0) + 1
            self.running, self.started = pick, time.monotonic()
            return pick

        def _finish_running(self) -> None:
            if self.running is None:
                return
            task_id, self.running = self.running, None
            if not self._outer().tasks_[task_id].is_terminated:
                self._join(task_id)
            seconds = time.monotonic() - self.started
            estimate = seconds / max(1, self.last_batch)
            self.per_trial_s = estimate if self.per_trial_s is None else \
                0.5 * self.per_trial_s + 0.5 * estimate
            self.task_trial_s[task_id] = max(estimate, self.task_trial_s.get(task_id, 0.0))
            on_batch(seconds)

        def _time_for(self, task_id: int) -> bool:
            """Whether a batch of this kernel, at the slowest it has been (else at the
            running mean), ends within the budget."""
            per_trial = self.task_trial_s.get(task_id, self.per_trial_s or FIRST_GUESS_S)
            return time.monotonic() + per_trial * batch * SAFETY < deadline

        def _gain(self, task: Any, task_id: int) -> float:
            best = self.best_s.get(task_id)
            if best is None:  # nothing valid measured yet: as much to gain as the worst
                best = max(self.best_s.values(), default=1.0)
            return best * task.task_weight / self.batches[task_id]

        def _join(self, task_id: int) -> Any:
            # MetaSchedule's own join (results to the search, the callbacks, the log); not
            # named join_running_task, which would replace it and be called back from it
            from tvm.s_tir.meta_schedule import _ffi_api
            return _ffi_api.TaskSchedulerJoinRunningTask(self._outer(), task_id)

    scheduler = TimeBudget()

    @derived_object
    class LearnBest(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            scheduler.last_batch = len(measure_candidates)
            times = [sum(float(s) for s in r.run_secs) / len(r.run_secs)
                     for r in runner_results if r.error_msg is None and r.run_secs]
            if times:
                best = min(times)
                scheduler.best_s[task_id] = min(best, scheduler.best_s.get(task_id, best))

    return scheduler, LearnBest()
