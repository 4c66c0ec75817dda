"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

from prunepass.testing import randomize  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=1))
    return path


def row_notes(r: dict) -> list[str]:
    """The problems every coverage table reports for a model row."""
    note = []
    if r["barriers"]:
        note.append("barriers: " + ",".join(r["barriers"]))
    if not r["shape_ok"]:
        note.append("output shape changed")
    if not r["finite"]:
        note.append("non-finite output")
    return note
