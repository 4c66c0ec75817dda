"""Sparsity schedules: prune while fine-tuning, with the weight masks kept in between.

A schedule says at which training steps to prune and to which total sparsity:

* ``one-shot``: once, to ``final``, at ``start``.
* ``iterative``: ``steps`` times, ``every`` training steps apart, each step removing the
  same fraction of the weights still alive: s_k = 1 - (1 - s_i) ((1 - s_f) / (1 - s_i))^(k/n).
* ``polynomial``: Zhu & Gupta's gradual pruning (arXiv:1710.01878),
  s_k = s_f + (s_i - s_f) (1 - k/n)^power, fast at first and slow towards the end.

``Sparsifier`` runs the ``mask`` pass (granularity=weight) on a working copy of the model
at those steps and moves the new masks onto the module being trained, keeping its
Parameter objects (an optimiser created on ``sparsifier.module`` stays valid)::

    sp = Sparsifier(model, (x,), Schedule("polynomial", final=0.9, steps=10, every=50),
                    scope="global")
    opt = torch.optim.Adam(sp.module.parameters(), 1e-3)
    for t in range(1000):
        sp.step(t)                 # prunes when the schedule says so
        train_one_batch(sp.module, opt)

or ``sparsify(model, (x,), train_step, schedule, **mask_options)`` with
``train_step(module, t)``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from prunepass.errors import PipelineError

KINDS = ("one-shot", "iterative", "polynomial")


def schedule_amount(kind: str, k: int, steps: int, final: float, initial: float = 0.0,
                    power: float = 3.0) -> float:
    """Cumulative amount pruned after step k of ``steps`` (k = 0 gives ``initial``): the
    formula of both the weight-mask schedules here and the channel schedules of
    prunepass.search.recovery."""
    n = 1 if kind == "one-shot" else steps
    t = min(max(k, 0), n) / n
    if kind == "one-shot":
        return final if k >= 1 else initial
    if kind == "iterative":
        return 1 - (1 - initial) * ((1 - final) / (1 - initial)) ** t
    if kind == "polynomial":
        return final + (initial - final) * (1 - t) ** power
    raise PipelineError(f"schedule kind {kind!r}: use one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Schedule:
    kind: str = "one-shot"
    final: float = 0.5
    initial: float = 0.0
    steps: int = 1  # pruning steps
    every: int = 1  # training steps between two pruning steps
    start: int = 0  # training step of the first pruning step
    power: float = 3.0  # polynomial exponent

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PipelineError(f"schedule kind {self.kind!r}: use one of {', '.join(KINDS)}")
        for name in ("final", "initial"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise PipelineError(f"schedule {name} sparsity must be in [0.0, 1.0), got {v}")
        if self.initial > self.final:
            raise PipelineError(f"schedule initial sparsity {self.initial} exceeds final "
                                f"{self.final}")
        if self.steps < 1 or self.every < 1 or self.start < 0:
            raise PipelineError("schedule steps and every must be >= 1, start >= 0; got "
                                f"steps={self.steps}, every={self.every}, start={self.start}")

    def sparsity(self, k: int) -> float:
        """Total sparsity after pruning step k (1..steps)."""
        return schedule_amount(self.kind, max(k, 1) if self.kind == "one-shot" else k,
                               self.steps, self.final, self.initial, self.power)

    def plan(self) -> list[tuple[int, float]]:
        """(training step, total sparsity) of every pruning step."""
        n = 1 if self.kind == "one-shot" else self.steps
        return [(self.start + (k - 1) * self.every, self.sparsity(k)) for k in range(1, n + 1)]

    @property
    def last_step(self) -> int:
        return self.plan()[-1][0]


@dataclass
class Sparsifier:
    """The module to train plus the schedule that masks it (see the module docstring)."""
    model: Any
    example_inputs: Sequence[Any]
    schedule: Schedule
    calibration: Sequence[Any] | None = None
    loss_fn: Callable[[Any], Any] | None = None
    mask_options: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from prunepass.api import load
        from prunepass.passes.pipelines.mask import Mask
        opts = {k.replace("_", "-"): v for k, v in self.mask_options.items()}
        bad = {"granularity", "sparsity", "threshold"} & set(opts)
        if bad:
            raise PipelineError(f"Sparsifier sets {', '.join(sorted(bad))} itself: the "
                                "schedule gives the sparsity of weight masks")
        self._pass = lambda s: Mask(granularity="weight", sparsity=s, **opts)
        self._pass(self.schedule.final)  # check the options now, not at the first step
        # our own copy: the caller's model is never changed, even by syncing weights back
        self.adapter = load(self.model, self.example_inputs).clone()
        if self.adapter.frontend != "torch":
            raise PipelineError("schedules fine-tune torch models only")
        self.module = self.adapter.materialize()
        self._due = dict(self.schedule.plan())

    def step(self, t: int) -> float | None:
        """Prune if training step ``t`` is a pruning step; return the new sparsity."""
        if t not in self._due:
            return None
        from prunepass.frontends.torch import weight_masks
        from prunepass.pm import AnalysisManager, PassManager
        target = self._due[t]
        weight_masks.copy_state(self.module, self.adapter.gm)  # what training changed
        am = AnalysisManager(self.adapter, calibration=self.calibration, loss_fn=self.loss_fn)
        record = PassManager([self._pass(target)]).run(self.adapter, am)
        weight_masks.apply(self.module, self.adapter.weight_masks(), copy_params=False)
        changes = record.passes[0]["changes"]
        self.history.append({"step": t, "target": round(target, 6),
                             "weight_sparsity": changes["weight_sparsity"]})
        return changes["weight_sparsity"]


def sparsify(model: Any, example_inputs: Sequence[Any],
             train_step: Callable[[Any, int], Any], schedule: Schedule,
             total_steps: int | None = None, *, calibration: Sequence[Any] | None = None,
             loss_fn: Callable[[Any], Any] | None = None, **mask_options: Any) -> Sparsifier:
    """Train with ``train_step(module, t)`` for ``total_steps`` steps (default: up to the
    last pruning step, inclusive), pruning by ``schedule`` before the steps it names.
    ``mask_options`` go to the mask pass (importance, scope, max-ratio, ignore, seed).
    Returns the Sparsifier: ``.module`` is the trained, masked module, ``.history`` the
    sparsity reached at each pruning step."""
    sp = Sparsifier(model, example_inputs, schedule, calibration, loss_fn, mask_options)
    for t in range(total_steps if total_steps is not None else schedule.last_step + 1):
        sp.step(t)
        train_step(sp.module, t)
    return sp
