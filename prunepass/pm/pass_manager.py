"""PassManager: runs a list of passes over a model, with instruments, and returns a record."""
from __future__ import annotations

from typing import Any, Sequence

from prunepass.frontends.base import ModelAdapter
from prunepass.pm.analysis_manager import AnalysisManager
from prunepass.pm.instruments import Instrument, TimePasses, VerifyIR
from prunepass.pm.passes import AnalysisPass, Pass, TransformPass
from prunepass.pm.pipeline import format_pipeline, parse_pipeline
from prunepass.record import Record


class PassManager:
    def __init__(self, passes: Sequence[Pass] | str = (),
                 instruments: Sequence[Instrument] | None = None) -> None:
        self.passes: list[Pass] = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
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
        return format_pipeline(self.passes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PassManager) and self.passes == other.passes

    def __repr__(self) -> str:
        return f"PassManager({self.pipeline!r})"

    def run(self, model: ModelAdapter, am: AnalysisManager | None = None,
            progress: bool = False) -> Record:
        am = am or AnalysisManager(model)
        record = Record.start(model, self.pipeline, am)
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
                keep = result.changes.pop("keep", None)
                if keep:
                    record.add_keep(keep)
                entry["changes"] = result.changes
            for ins in reversed(self.instruments):
                ins.after(p, am, entry)
            record.passes.append(entry)
        record.finish(model, am)
        return record
