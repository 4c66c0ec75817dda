"""MetaSchedule's cost model, kept beside the tuning database and carried from one tuning run
to the next.

MetaSchedule starts every tuning call with a fresh XGBoost model, which answers with random
scores until it holds 100 measurements. At the budgets a small machine affords (8 trials per
kernel, a handful of kernels per call) that is never reached: the evolutionary search is a
random search. Kept on disk, the model has seen every schedule measured for this target, and
its features (per buffer store: loop extents, vector widths, arithmetic intensity) carry over
to kernels of other shapes, so a new kernel's first batch is already ranked. A database
without a saved model trains one from its records once."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prunepass.backends.tvm.database import workload_hash
from prunepass.backends.tvm.errors import CorruptDatabaseWarning

COST_MODEL = "cost_model.tar"  # XGBModel.save's format: the booster and its training data
_LOADED: dict[Path, tuple[Any, int]] = {}  # folder -> (model, mtime of the file it matches)


def open_cost_model(folder: Path, db: Any, target: Any,
                    progress: bool = False) -> tuple[Any, list[str]]:
    """The cost model saved in ``folder``, or one trained on ``db``'s records when none was
    saved (or the saved one cannot be read). Returns the model and notes on what was done."""
    import tvm.s_tir.meta_schedule as ms

    path = folder / COST_MODEL
    loaded = _LOADED.get(folder.resolve())
    if loaded is not None and path.exists() and loaded[1] == path.stat().st_mtime_ns:
        return loaded[0], []  # what this process saved last: no need to read it back
    model = ms.cost_model.XGBModel()
    if path.exists():
        try:
            with _xgboost_format_notes_hidden():
                model.load(str(path))
            model.last_train_size = model.data_size  # trained on all of it: retrain on growth
            _LOADED[folder.resolve()] = (model, path.stat().st_mtime_ns)
            return model, []
        except Exception as err:  # a torn tar, numpy or xgboost refusing the file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            note = (f"tuning cost model {path} could not be read ({reason}); "
                    f"training a new one on the database's records")
            warnings.warn(note, CorruptDatabaseWarning, stacklevel=2)
            model = ms.cost_model.XGBModel()
            return model, [note, *_train_on_records(model, db, target, progress)]
    return model, _train_on_records(model, db, target, progress)


def save_cost_model(model: Any, folder: Path) -> None:
    """Write the model next to the database (a temporary file renamed into place, so a run
    killed while saving leaves the previous model)."""
    if not model.data_size:
        return
    tmp = folder / (COST_MODEL + ".tmp")
    with _xgboost_format_notes_hidden():
        model.save(str(tmp))
    os.replace(tmp, folder / COST_MODEL)
    _LOADED[folder.resolve()] = (model, (folder / COST_MODEL).stat().st_mtime_ns)


@contextmanager
def _xgboost_format_notes_hidden() -> Iterator[None]:
    """XGBModel names its booster file model.bin; xgboost notes on every save and load that
    it picked its UBJSON format for that name, which is what it should do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(UBJSON|Unknown file format)",
                                category=UserWarning)
        yield


def _train_on_records(model: Any, db: Any, target: Any, progress: bool) -> list[str]:
    """Feed every successful record of ``db`` to ``model``, one batch per workload as the
    tuner would have when they were measured, and train once at the end."""
    import tvm.s_tir.meta_schedule as ms
    from prunepass.progress import bar

    by_workload: dict[int, tuple[Any, list[Any]]] = {}
    for record in db.get_all_tuning_records():
        if record.run_secs:  # failed builds and runs have no cost to learn from
            by_workload.setdefault(workload_hash(record.workload.mod),
                                   (record.workload, []))[1].append(record)
    if not by_workload:
        return []
    model.last_train_size = float("inf")  # update() retrains once data grew by a fifth of it
    batches = bar(by_workload.values(), desc="training the tuning cost model", unit="kernel",
                  enabled=progress)
    for index, (workload, records) in enumerate(batches):
        if index == len(by_workload) - 1:
            model.adaptive_training = False  # the last batch trains on everything
        context = ms.TuneContext(mod=workload.mod, target=target, num_threads=1)
        model.update(context, [r.as_measure_candidate() for r in records],
                     [ms.runner.RunnerResult(run_secs=r.run_secs, error_msg=None)
                      for r in records])
    model.adaptive_training = True
    return [f"trained the tuning cost model on {model.data_size} measured schedules of "
            f"{len(by_workload)} kernels from the database"]
