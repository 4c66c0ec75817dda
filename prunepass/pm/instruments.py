"""Instruments observe a pipeline run: timing, IR verification after each transform,
IR dumps before and after each pass."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prunepass.ir.verifier import verify
from prunepass.pm.passes import Pass


class Instrument:
    def before(self, p: Pass, am: Any) -> None:
        pass

    def after(self, p: Pass, am: Any, entry: dict[str, Any]) -> None:
        pass


class TimePasses(Instrument):
    """Wall time of each pass, written to the record as ``seconds`` (measured)."""

    def before(self, p: Pass, am: Any) -> None:
        self._t = time.perf_counter()

    def after(self, p: Pass, am: Any, entry: dict[str, Any]) -> None:
        entry["seconds"] = round(time.perf_counter() - self._t, 4)


class VerifyIR(Instrument):
    """Structural IR verification after every transform."""

    def after(self, p: Pass, am: Any, entry: dict[str, Any]) -> None:
        if p.kind == "transform":
            verify(am.model.graph)
            entry["verified"] = True


class DumpIR(Instrument):
    """Write the IR as text before and after each pass into a folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._i = 0

    def before(self, p: Pass, am: Any) -> None:
        self._i += 1
        (self.folder / f"{self._i:02d}-{p.name}-before.txt").write_text(repr(am.model.graph))

    def after(self, p: Pass, am: Any, entry: dict[str, Any]) -> None:
        (self.folder / f"{self._i:02d}-{p.name}-after.txt").write_text(repr(am.model.graph))
