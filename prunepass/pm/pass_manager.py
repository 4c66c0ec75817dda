"""PassManager: runs a list of passes over a model, with instruments, and returns a record."""
from __future__ import annotations

from typing import Any, Sequence

from prunepass.frontends.base import ModelAdapter
from prunepass.pm.analysis_manager import AnalysisManager
from prunepass.pm.instruments import Instrument, TimePasses, VerifyIR
from prunepass.pm.passes import AnalysisPass, Pass, TransformPass, expand
from prunepass.pm.pipeline import format_pipeline, parse_pipeline
from prunepass.record import Record


class PassManager:
    def __init__(self, passes: Sequence[Pass] | str = (),
                 instruments: Sequence[Instrument] | None = None) -> None:
        # named pipelines (prune-channels, mask) are expanded to the passes they stand for;
        # ``given`` keeps the pipeline as written
        self.given = passes if isinstance(passes, str) else format_pipeline(list(passes))
        self.passes: list[Pass] = parse_pipeline(passes) if isinstance(passes, str) \
            else expand(list(passes))
        self.instruments: list[Instrument] = (
            list(instruments) if instruments is not None else [TimePasses(), VerifyIR()])

    @classmethod
    def parse(cls, text: str, **kw: Any) -> "PassManager":
        return cls(parse_pipeline(text), **kw)

    def add(self, p: Pass) -> "PassManager":
        self.passes.append(p)
        return self

    @property
    def pipeline(self) -> str:
        """The expanded pipeline, every option of every pass spelled out."""
        return format_pipeline(self.passes, full=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PassManager) and self.passes == other.passes

    def __repr__(self) -> str:
        return f"PassManager({format_pipeline(self.passes)!r})"

    def run(self, model: ModelAdapter, am: AnalysisManager | None = None,
            progress: bool = False) -> Record:
        am = am or AnalysisManager(model)
        record = Record.start(model, self.pipeline, am, given=self.given)
        steps = self.passes
        if progress:
            from prunepass.progress import bar
            steps = bar(steps, desc="passes", unit="pass", leave=False)
        for p in steps:
            entry: dict[str, Any] = {"pass": p.name, "kind": p.kind, "options": p.opts}
            for ins in self.instruments:
                ins.before(p, am)
            if isinstance(p, AnalysisPass):
                am.run(p)
            elif isinstance(p, TransformPass):
                result = p.run(model.graph, am)
                am.invalidate(result.preserved)
                if am.plan is not None and not result.preserved.preserves("channel-groups"):
                    am.plan, am.plan_dropped_by = None, p.name  # its classes are stale
                keep = result.changes.pop("keep", None)
                if keep:
                    record.add_keep(keep)
                entry["changes"] = result.changes
            for ins in reversed(self.instruments):
                ins.after(p, am, entry)
            record.passes.append(entry)
        record.finish(model, am)
        return record
