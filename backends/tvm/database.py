"""The tuning database on disk: MetaSchedule's JSONDatabase, one folder per target, keyed by
workload (the structural hash of each fused kernel), so any model with the same layer shapes,
e.g. a model pruned the same way, reuses what was measured.

A database that cannot be read is moved aside (its readable lines are kept in the fresh one)
and the caller is told: tuning never silently starts from nothing.

Reading one costs about 40 ms per workload here (each is a serialized TIR function that is
parsed and hashed; 17 s for 454), so a process keeps the databases it opened and reads a file
again only when something other than this process changed it."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from prunepass.backends.tvm.errors import CorruptDatabaseWarning
from prunepass.backends.tvm.targets import TargetSpec

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
EXHAUSTED = "exhausted_workloads.json"  # ours, beside MetaSchedule's two files
CPU = "cpu.json"                        # ours: the CPU model and extensions records are for

Stamp = tuple[tuple[int, int], ...]
_OPENED: dict[Path, tuple[Any, Stamp]] = {}  # folder -> (database, its files when last in sync)


def database_dir(root: str | Path, spec: TargetSpec) -> Path:
    """Records only apply to the target they were measured on: one folder per target."""
    return Path(root) / spec.key


def mark_cpu(folder: Path, spec: TargetSpec) -> None:
    """Note beside the records what they were measured on (a folder per key already keeps
    them apart; this lets other CPUs say why they do not use them)."""
    if spec.features and not (folder / CPU).exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CPU).write_text(json.dumps({"key": spec.key, "target": str(spec.target),
                                              "features": list(spec.features)}) + "\n")


def other_cpu_notes(root: str | Path, spec: TargetSpec) -> list[str]:
    """Why the records other CPUs left in the database ``root`` are not applied here."""
    notes = []
    for other in sorted(Path(root).glob("*/" + CPU)):
        if other.parent.name == spec.key:
            continue
        try:
            data = json.loads(other.read_text())
            target, features = str(data["target"]), set(data["features"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not other.parent.name.startswith(spec.key.split("-")[0]):
            continue  # another architecture altogether
        missing = sorted(features - set(spec.features))
        why = (f"this CPU lacks {', '.join(missing)}" if missing
               else f"they were built for another CPU model ({target})")
        notes.append(f"records in {other.parent} were tuned for a CPU with "
                     f"{', '.join(sorted(features)) or 'no vector extensions'}; not applied: "
                     f"{why}")
    return notes


def open_database(folder: str | Path) -> tuple[Any, list[str]]:
    """Open (or create) the JSONDatabase in ``folder``, or return the one this process already
    opened there if its files have not changed since. Returns the database and notes on what
    was repaired, if anything."""
    folder = Path(folder).resolve()
    opened = _OPENED.get(folder)
    if opened is not None and opened[1] == _stamp(folder):
        return opened[0], []
    db, notes = _read_database(folder)
    _OPENED[folder] = (db, _stamp(folder))
    return db, notes


def database_synced(folder: str | Path) -> None:
    """Call after this process wrote to the database in ``folder`` (tuning commits records
    through the open database, which already holds them), so that the next open_database
    keeps it instead of reading the files again."""
    folder = Path(folder).resolve()
    if folder in _OPENED:
        _OPENED[folder] = (_OPENED[folder][0], _stamp(folder))


def _stamp(folder: Path) -> Stamp:
    """Size and modification time of the database files: what changes when anyone writes."""
    stamps = []
    for name in (WORKLOADS, RECORDS):
        try:
            st = (folder / name).stat()
            stamps.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((-1, -1))
    return tuple(stamps)


def _read_database(folder: Path) -> tuple[Any, list[str]]:
    import tvm.s_tir.meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(work_dir=str(folder)), []
    except Exception as err:  # TVM reports parse errors as RuntimeError/ValueError/TVMError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    aside = _move_aside(folder)
    kept = _salvage(aside, folder)
    try:
        db = ms.database.JSONDatabase(work_dir=str(folder))
    except Exception:  # lines that parse as JSON but not as records: start empty
        for name in (WORKLOADS, RECORDS):
            (folder / name).unlink(missing_ok=True)
        kept = 0
        db = ms.database.JSONDatabase(work_dir=str(folder))
    note = (f"tuning database {folder} could not be read ({reason}); moved it to {aside} and "
            f"started a fresh one there with the {kept} record(s) that could still be read")
    warnings.warn(note, CorruptDatabaseWarning, stacklevel=2)
    return db, [note]


def measured_per_workload(db: Any) -> Counter[int]:
    """How many candidates were measured for each workload (by structural hash), failed
    builds and runs included: they were measured, and re-measuring them would fail again."""
    return Counter(workload_hash(r.workload.mod)
                   for r in db.get_all_tuning_records())


def exhausted_workloads(folder: Path) -> set[int]:
    """Workloads whose search space ran out before their share of trials: more trials would
    find nothing new, so they count as tuned whatever the budget (while the database still
    holds records for them)."""
    try:
        return {int(h) for h in json.loads((folder / EXHAUSTED).read_text())}
    except (OSError, ValueError, TypeError):
        return set()  # none recorded yet, or unreadable: such kernels get searched again


def mark_exhausted(folder: Path, hashes: set[int]) -> None:
    known = exhausted_workloads(folder)
    if hashes <= known:
        return
    tmp = folder / (EXHAUSTED + ".tmp")
    tmp.write_text(json.dumps(sorted(str(h) for h in known | hashes)) + "\n")
    tmp.replace(folder / EXHAUSTED)


def workload_hash(mod: Any) -> int:
    import tvm_ffi
    return int(tvm_ffi.structural_hash(mod))


def _move_aside(folder: Path) -> Path:
    aside = Path(tempfile.mkdtemp(prefix=f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}-",
                                  dir=folder))
    for name in (WORKLOADS, RECORDS):
        if (folder / name).exists():
            shutil.move(str(folder / name), str(aside / name))
    return aside


def _salvage(source: Path, folder: Path) -> int:
    """Copy the readable lines of a damaged database (an interrupted write leaves a torn last
    line) into ``folder``, renumbering workloads. Returns the number of records kept."""
    old_to_new: dict[int, int] = {}
    workloads: list[str] = []
    for index, line in enumerate(_lines(source / WORKLOADS)):
        if _parses(line):
            old_to_new[index] = len(workloads)
            workloads.append(line)
    records: list[str] = []
    for line in _lines(source / RECORDS):
        try:
            index, record = json.loads(line)
        except (ValueError, TypeError):
            continue
        if isinstance(index, int) and index in old_to_new:
            records.append(json.dumps([old_to_new[index], record]))
    (folder / WORKLOADS).write_text("".join(w + "\n" for w in workloads))
    (folder / RECORDS).write_text("".join(r + "\n" for r in records))
    return len(records)


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
