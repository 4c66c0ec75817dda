"""Channel-pruning schedules with recovery: prune a step, fine-tune, repeat.

A schedule gives the cumulative *amount* pruned after each step, as a fraction of the dense
model: of its channels (``budget="ratio"``) or of its MACs, modelled energy or predicted
latency (``"macs"``, ``"energy"``, ``"latency-ms"``: each step is a budget of
``(1 - amount) x dense``). Kinds, with n steps and k = 1..n:

* ``one-shot``: the final amount at once (n = 1);
* ``iterative``: each step removes the same fraction of what is still there,
  a_k = 1 - (1 - a_0) ((1 - a_f) / (1 - a_0))^(k/n);
* ``polynomial``: Zhu & Gupta's gradual decay (arXiv:1710.01878),
  a_k = a_f + (a_0 - a_f) (1 - k/n)^power: large steps first, small ones at the end.

``schedule_amount`` (in ``prunepass.schedules``) is the one formula behind these and the
weight-mask schedules there (where the amount is named sparsity). Fine-tuning is a function ``train(module, epochs)`` that trains the module in
place; ``classification_trainer`` builds the default one from tensors or a data loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from prunepass.errors import PipelineError
from prunepass.record import Record
from prunepass.schedules import KINDS, schedule_amount

BUDGETS = ("ratio", "macs", "energy", "latency-ms")
TrainFn = Callable[[Any, int], None]  # train(module, epochs), in place


@dataclass(frozen=True)
class ChannelSchedule:
    kind: str = "one-shot"
    final: float = 0.5  # amount pruned at the end, a fraction of the dense model
    steps: int = 1
    epochs: int = 1  # fine-tuning epochs after each pruning step
    budget: str = "ratio"  # what the amount is a fraction of (see the module docstring)
    initial: float = 0.0
    power: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PipelineError(f"schedule kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.budget not in BUDGETS:
            raise PipelineError(f"schedule budget {self.budget!r}: use one of "
                                f"{', '.join(BUDGETS)}")
        if not 0.0 <= self.initial <= self.final < 1.0:
            raise PipelineError(f"schedule amounts must satisfy 0 <= initial <= final < 1; "
                                f"got initial={self.initial}, final={self.final}")
        if self.steps < 1 or self.epochs < 0 or self.power <= 0:
            raise PipelineError(f"schedule steps must be >= 1, epochs >= 0, power > 0; got "
                                f"steps={self.steps}, epochs={self.epochs}, power={self.power}")

    def amounts(self) -> list[float]:
        """Cumulative amount after every step."""
        n = 1 if self.kind == "one-shot" else self.steps
        return [schedule_amount(self.kind, k, n, self.final, self.initial, self.power)
                for k in range(1, n + 1)]


def classification_trainer(data: tuple[Any, Any] | Iterable[tuple[Any, Any]], *,
                           loss_fn: Callable[[Any, Any], Any] | None = None,
                           lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                           optimizer: Callable[[Any], Any] | None = None,
                           progress: bool = True, desc: str = "fine-tune") -> TrainFn:
    """The default fine-tuning loop: Adam (or ``optimizer(params)``) on cross-entropy (or
    ``loss_fn(outputs, targets)``). ``data`` is ``(x, y)`` tensors, shuffled into batches
    of ``batch_size`` with a fixed seed, or any re-iterable of ``(inputs, targets)``
    batches (a DataLoader). Progress bars on epochs and on steps."""
    import torch
    import torch.nn.functional as F
    from prunepass.progress import bar
    loss_fn = loss_fn or F.cross_entropy
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        gen = torch.Generator().manual_seed(seed)

        def batches() -> Iterable[tuple[Any, Any]]:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                yield x[perm[i:i + batch_size]], y[perm[i:i + batch_size]]
        n_steps: int | None = (len(x) + batch_size - 1) // batch_size
    else:
        batches, n_steps = (lambda: iter(data)), None  # type: ignore[assignment]
        if hasattr(data, "__len__"):
            n_steps = len(data)  # type: ignore[arg-type]

    def train(module: Any, epochs: int) -> None:
        if epochs <= 0:
            return
        opt = optimizer(module.parameters()) if optimizer else \
            torch.optim.Adam(module.parameters(), lr=lr)
        module.train()
        for _ in bar(range(epochs), desc=desc, unit="epoch", leave=False, enabled=progress):
            for xb, yb in bar(batches(), total=n_steps, desc="steps", unit="step",
                               leave=False, enabled=progress):
                opt.zero_grad()
                loss = loss_fn(module(xb), yb)
                loss.backward()
                opt.step()
        module.eval()
    return train


@dataclass
class RecoveryResult:
    model: Any  # the pruned, fine-tuned module
    record: Record  # every step composed: re-applies to a fresh model (apply_record)
    history: list[dict[str, Any]] = field(default_factory=list)


_SCHEDULE_OWNS = ("ratio", "group-ratios", "target-macs", "target-energy", "target-latency-ms",
                  "scope")


def step_options(schedule: ChannelSchedule, done: float, amount: float,
                 dense: dict[str, float]) -> dict[str, Any]:
    """prune-channels options for one step, from ``done`` to ``amount`` (cumulative)."""
    if schedule.budget == "ratio":  # a ratio applies to the channels still there
        return {"ratio": 1 - (1 - amount) / (1 - done)}
    goal = (1 - amount) * dense[schedule.budget]
    return {f"target-{schedule.budget}": f"{goal:.9g}"}


def compose(records: Sequence[Record]) -> Record:
    """One record for consecutive prune steps, each made on the previous step's result
    (same parameter names): keeps composed, costs from the first before and last after."""
    first, last = records[0], records[-1]
    out = Record(model=first.model, frontend=first.frontend,
                 pipeline=",".join(r.pipeline for r in records),
                 given=",".join(r.given or r.pipeline for r in records),
                 cost_before=first.cost_before, cost_after=last.cost_after,
                 shapes_before=first.shapes_before, shapes_after=last.shapes_after,
                 energy_before=first.energy_before, energy_after=last.energy_after,
                 energy_nodes_before=first.energy_nodes_before,
                 energy_nodes_after=last.energy_nodes_after)
    for step, r in enumerate(records, 1):
        out.add_keep({name: {int(a): idx for a, idx in axes.items()}
                      for name, axes in r.keep.items()})
        out.passes.extend({**p, "step": step} for p in r.passes)
    return out


def prune_with_recovery(model: Any, example_inputs: Sequence[Any],
                        schedule: ChannelSchedule, train: TrainFn | None = None, *,
                        options: dict[str, Any] | None = None,
                        evaluate: Callable[[Any], Any] | None = None,
                        calibration: Sequence[Any] | None = None,
                        loss_fn: Callable[[Any], Any] | None = None,
                        energy_profile: str | None = None,
                        progress: bool = True) -> RecoveryResult:
    """Prune ``model`` by ``schedule``, calling ``train(module, schedule.epochs)`` after each
    step (none when ``train`` is None). ``options`` go to prune-channels (importance,
    round-to, ignore, min-channels, max-ratio, profile, ...); the schedule sets the amount.
    ``evaluate(module)`` (optional) is recorded after each step. The input model is never
    changed. Returns the module, the composed record and one history row per step."""
    from prunepass.progress import bar

    from prunepass.api import load
    from prunepass.passes.analysis.sensitivity import score_of
    from prunepass.passes.plan.budget import metric_fn
    from prunepass.passes.pipelines.prune_channels import PruneChannels
    from prunepass.passes.transform.dce import DeadCodeElimination
    from prunepass.pm import AnalysisManager, PassManager
    opts = {k.replace("_", "-"): v for k, v in (options or {}).items()}
    clash = sorted(set(opts) & set(_SCHEDULE_OWNS))
    if clash:
        raise PipelineError(f"prune_with_recovery: the schedule sets the amount; remove "
                            f"{', '.join(clash)} from options (use ChannelSchedule(final=..., "
                            "budget=...))")
    PruneChannels(**opts)  # check the options before any work
    adapter = load(model, example_inputs).clone()  # never the caller's adapter
    dense: dict[str, float] = {}
    if schedule.budget != "ratio":
        profile = opts.get("profile", "x86-epyc")
        dense[schedule.budget] = metric_fn(schedule.budget.split("-")[0], profile)(adapter.graph)
    records: list[Record] = []
    history: list[dict[str, Any]] = []
    module, done = None, 0.0  # the model starts dense, whatever `initial` says
    for k, amount in enumerate(bar(schedule.amounts(), desc="prune steps", unit="step",
                                    leave=False, enabled=progress), 1):
        if amount <= done + 1e-12:
            continue
        step_opts = {**opts, **step_options(schedule, done, amount, dense)}
        cur = adapter if module is None else load(module, adapter.example_inputs)
        am = AnalysisManager(cur, calibration=calibration, loss_fn=loss_fn,
                             energy_profile=energy_profile)
        rec = PassManager([PruneChannels(**step_opts), DeadCodeElimination()]).run(cur, am)
        module = cur.materialize()
        if train is not None and schedule.epochs > 0:
            train(module, schedule.epochs)
        module.eval()
        row: dict[str, Any] = {"step": k, "amount": round(amount, 6),
                               "options": {key: step_opts[key] for key in step_opts
                                           if key in _SCHEDULE_OWNS},
                               "macs": rec.cost_after["macs"],
                               "params": rec.cost_after["params"]}
        if evaluate is not None:
            row["score"] = score_of(evaluate, module, f"the model after step {k}")
        records.append(rec)
        history.append(row)
        done = amount
    if not records:
        raise PipelineError(f"schedule {schedule} prunes nothing: final must exceed initial")
    return RecoveryResult(module, compose(records), history)
