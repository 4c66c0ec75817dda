"""MetaSchedule tuning: a database on disk reused by a second, similarly pruned model; an
interrupted run keeps what it measured; a corrupt database is moved aside. A tiny MLP (three
kernels, one of them a reshape whose search space has a single candidate) and two trials per
kernel keep this to about a minute on two idle cores."""
from __future__ import annotations

import os
import re
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1' xgboost-cpu")

import prunepass  # noqa: E402
from prunepass.backends.tvm import (CorruptDatabaseWarning, TuningInterrupted,  # noqa: E402
                                    compile_model, lower_model, prepare, resolve_target,
                                    tune_model)
from prunepass.backends.tvm.cost_model import COST_MODEL, open_cost_model  # noqa: E402
from prunepass.backends.tvm.database import (RECORDS, WORKLOADS, database_dir,  # noqa: E402
                                             measured_per_workload, open_database)
from prunepass.testing import randomize  # noqa: E402

TRIALS_PER_KERNEL = 2
X = (torch.randn(2, 16, generator=torch.Generator().manual_seed(0)),)



@pytest.fixture(autouse=True)
def _bars_shown(monkeypatch):  # noqa: ANN001, ANN202
    """These tests read the tuning bar on stderr, which is no terminal under pytest."""
    monkeypatch.setenv("PRUNEPASS_PROGRESS", "1")

def pruned_mlp(seed: int) -> nn.Module:
    """16 -> 16 -> 4, pruned to 16 -> 8 -> 4, then flattened: every seed gives the same kernel
    shapes."""
    model = randomize(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4),
                                    nn.Flatten(0)).eval(), seed)
    return prunepass.prune(model, X, "prune-channels<ratio=0.5>,dce").model.eval()


def record_count(folder: Path) -> int:
    return len((folder / RECORDS).read_text().splitlines())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, Path]:
    """A database tuned once for the pruned MLP (shared: tuning is the slow part)."""
    root = tmp_path_factory.mktemp("tuning")
    compiled = compile_model(pruned_mlp(0), X, "x86", root / "first", database=root / "db",
                             max_trials_per_task=TRIALS_PER_KERNEL, trials=1, progress=False)
    report = compiled.tuning
    assert len(report.tasks) == 3 and report.tuned == report.tasks and report.reused == []
    # The reshape has one candidate only: its search ends after one measurement.
    assert report.measured == TRIALS_PER_KERNEL * 2 + 1
    return root / "db", database_dir(root / "db", resolve_target("x86"))


def test_a_kernel_with_nothing_left_to_try_ends_at_once_and_the_bar_ends_full(tmp_path,
                                                                             capfd):
    # MetaSchedule's own search goes on for four empty rounds (a whole evolution each) after
    # the reshape's single schedule is measured; ours ends the kernel at the first, and the
    # bar's total drops by the trials it will not take.
    spec = resolve_target("x86")
    mod = prepare(lower_model(pruned_mlp(0), X).mod, spec)
    capfd.readouterr()
    _, report = tune_model(mod, spec, tmp_path, trials=1,
                           max_trials_per_task=TRIALS_PER_KERNEL, progress=True)
    assert report.measured == TRIALS_PER_KERNEL * 2 + 1
    assert f"{report.measured}/{report.measured} " in capfd.readouterr().err
    logs = [p.read_text() for p in (database_dir(tmp_path, spec) / "logs").iterdir()]
    assert any("Sending 1 sample(s) to builder" in log for log in logs)
    assert sum(log.count("Sending 0 sample(s) to builder") for log in logs) == 0


def test_second_run_on_a_similarly_pruned_model_measures_nothing(tuned, tmp_path):
    database, folder = tuned
    before = record_count(folder)
    model = pruned_mlp(seed=1)  # other weights, other channels kept, same shapes
    compiled = compile_model(model, X, "x86", tmp_path, database=database,
                             max_trials_per_task=TRIALS_PER_KERNEL, trials=1, progress=False)
    assert compiled.tuning.measured == 0
    # The reshape counts as tuned although it has fewer than TRIALS_PER_KERNEL measurements.
    assert compiled.tuning.tuned == [] and len(compiled.tuning.reused) == 3
    assert record_count(folder) == before
    with torch.no_grad():
        ref = model(*X).numpy()
    np.testing.assert_allclose(compiled.load()(*X)[0], ref, rtol=1e-4, atol=1e-4)


def test_modules_tuned_together_share_their_kernels(tmp_path):
    spec = resolve_target("x86")
    mods = [prepare(lower_model(pruned_mlp(seed), X).mod, spec) for seed in (0, 1)]
    wider = prepare(lower_model(nn.Sequential(nn.Linear(16, 12), nn.ReLU()).eval(), X).mod,
                    spec)
    _, report = tune_model(mods, spec, tmp_path, trials=0, progress=False)
    assert len(report.tasks) == 3  # the same shapes: each kernel once
    _, report = tune_model([*mods, wider], spec, tmp_path, trials=0, progress=False)
    assert len(report.tasks) == 4  # the wider layer's matmul is another kernel


def test_interrupted_tuning_keeps_what_it_measured(tmp_path):
    import tvm.s_tir.meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class CtrlC(ms.measure_callback.PyMeasureCallback):
        """Sends this process SIGINT, as Ctrl-C would, once a matmul's batch is measured."""

        def apply(self, task_scheduler, task_id, candidates, builds, runs) -> None:
            if len(runs) == TRIALS_PER_KERNEL:
                os.kill(os.getpid(), signal.SIGINT)

    spec = resolve_target("x86")
    mod = prepare(lower_model(pruned_mlp(0), X).mod, spec)
    folder = database_dir(tmp_path, spec)
    with pytest.raises(TuningInterrupted, match="kept in") as err:
        tune_model(mod, spec, tmp_path, trials=1, max_trials_per_task=TRIALS_PER_KERNEL,
                   callbacks=[CtrlC()], progress=False)
    # One matmul's batch, and the reshape's if the scheduler measured it first.
    assert err.value.measured in (TRIALS_PER_KERNEL, TRIALS_PER_KERNEL + 1)
    assert record_count(folder) == err.value.measured
    # The next run finishes the job: the measured matmul is reused; the other matmul is
    # tuned, and so is the reshape, whose search was cut short before it could end.
    _, report = tune_model(mod, spec, tmp_path, trials=1,
                           max_trials_per_task=TRIALS_PER_KERNEL, progress=False)
    assert len(report.reused) == 1 and len(report.tuned) == 2
    assert report.measured == TRIALS_PER_KERNEL + 1
    _, report = tune_model(mod, spec, tmp_path, trials=1,
                           max_trials_per_task=TRIALS_PER_KERNEL, progress=False)
    assert report.measured == 0 and len(report.reused) == 3


def test_torn_database_is_moved_aside_and_its_readable_records_kept(tuned, tmp_path):
    _, folder = tuned
    spec = resolve_target("x86")
    copy = database_dir(tmp_path, spec)
    shutil.copytree(folder, copy)
    good = record_count(copy)
    with open(copy / RECORDS, "a") as f:
        f.write('[0, ["torn by a kill in the middle of a wri')  # an interrupted append
    mod = prepare(lower_model(pruned_mlp(0), X).mod, spec)
    with pytest.warns(CorruptDatabaseWarning, match="moved it to"):
        _, report = tune_model(mod, spec, tmp_path, trials=1,
                               max_trials_per_task=TRIALS_PER_KERNEL, progress=False)
    assert report.notes and f"{good} record(s)" in report.notes[0]
    assert report.measured == 0  # the salvaged records still count as tuned
    aside = [p for p in copy.iterdir() if p.name.startswith("corrupt-")]
    assert len(aside) == 1 and (aside[0] / RECORDS).read_text().endswith("a wri")


def test_garbage_database_starts_fresh_beside_the_old_one(tmp_path):
    spec = resolve_target("x86")
    folder = database_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    (folder / WORKLOADS).write_text('{"not": "a workload"\n')
    (folder / RECORDS).write_text("garbage\n")
    mod = prepare(lower_model(pruned_mlp(0), X).mod, spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = tune_model(mod, spec, tmp_path, trials=0, progress=False)
    assert any(issubclass(w.category, CorruptDatabaseWarning) for w in caught)
    assert "0 record(s)" in report.notes[0]
    assert (folder / RECORDS).read_text() == ""
    assert [p.name.startswith("corrupt-") for p in folder.iterdir() if p.is_dir()] == [True]


def test_a_database_is_read_once_per_process_until_another_writer_changes_it(tuned, tmp_path,
                                                                            capfd):
    _, folder = tuned
    spec = resolve_target("x86")
    copy = database_dir(tmp_path, spec)
    shutil.copytree(folder, copy)
    first, _ = open_database(copy)
    assert open_database(copy)[0].same_as(first)
    before = len(first)
    # Tuning one more trial per kernel writes through the open database: still no re-read.
    mod = prepare(lower_model(pruned_mlp(0), X).mod, spec)
    capfd.readouterr()
    db, report = tune_model(mod, spec, tmp_path, trials=1,
                            max_trials_per_task=TRIALS_PER_KERNEL + 1, progress=True)
    assert report.measured > 0 and db.same_as(first)
    # The bar counts the candidates built: every one of them was measured.
    assert f"{report.measured}/{report.measured} " in capfd.readouterr().err
    assert open_database(copy)[0].same_as(first) and len(first) == before + report.measured
    # Another process appends a record: the files changed, so they are read again.
    line = (copy / RECORDS).read_text().splitlines()[0]
    with open(copy / RECORDS, "a") as f:
        f.write(line + "\n")
    fresh, _ = open_database(copy)
    assert not fresh.same_as(first) and len(fresh) == before + report.measured + 1


def successful_records(folder: Path) -> int:
    import json
    return sum(bool(json.loads(line)[1][1]) for line in
               (folder / RECORDS).read_text().splitlines())  # [workload, [trace, run_secs, ...]]


def test_the_cost_model_is_kept_beside_the_database(tuned, tmp_path):
    _, folder = tuned
    spec = resolve_target("x86")
    # Saved by the fixture's tuning run, holding every schedule it measured.
    model, notes = open_cost_model(folder, open_database(folder)[0], spec.target)
    assert (folder / COST_MODEL).exists() and notes == []
    assert model.data_size == successful_records(folder) > 0
    # A database without one trains one from its records, once.
    copy = database_dir(tmp_path, spec)
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(COST_MODEL))
    model, notes = open_cost_model(copy, open_database(copy)[0], spec.target)
    assert model.data_size == successful_records(folder) and model.booster is not None
    assert "trained the tuning cost model on" in notes[0]
    # A file that cannot be read is replaced the same way, and the caller is told.
    (copy / COST_MODEL).write_bytes(b"not a tar")
    with pytest.warns(CorruptDatabaseWarning, match="could not be read"):
        model, notes = open_cost_model(copy, open_database(copy)[0], spec.target)
    assert model.data_size == successful_records(folder) and len(notes) == 2


def test_pooling_kernels_tune_without_warnings_and_match_torch(tmp_path, capfd):
    # TOPI's pooling blocks ask for schedule rules TVM 0.27 does not register; MetaSchedule
    # warned about each through the progress bar. Registered, they schedule the same way.
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.AvgPool2d(2)).eval(), 0)
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    capfd.readouterr()
    compiled = compile_model(model, x, "x86", tmp_path / "out", database=tmp_path / "db",
                             max_trials_per_task=1, trials=1, progress=False)
    assert {"max_pool2d", "avg_pool2d"} <= set(compiled.tuning.tasks)
    assert compiled.tuning.measured == len(compiled.tuning.tasks)
    assert "Unknown schedule rule" not in capfd.readouterr().err
    with torch.no_grad():
        ref = model(*x).numpy()
    np.testing.assert_allclose(compiled.load()(*x)[0], ref, rtol=1e-4, atol=1e-4)


def conv_net() -> nn.Module:
    """Two convolutions: search spaces too large to run out within the budgets below."""
    return randomize(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(1)).eval(), 0)


def test_time_budget_is_kept_and_measured_kernels_are_not_tuned_again(tmp_path):
    from prunepass.backends.tvm.tune import import_tensor_intrinsics
    import_tensor_intrinsics()  # once per process (10-60 s): not what this test times
    x = (torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)),)
    spec = resolve_target("x86")
    mod = prepare(lower_model(conv_net(), x).mod, spec)
    _, report = tune_model(mod, spec, tmp_path, minutes=0.6, progress=False)
    assert report.measured >= 8  # at least one batch
    # every batch is started only with time left for it: the call ends within its budget
    # (the second allows for the timer's granularity and the final bookkeeping)
    assert report.seconds <= 37
    measured = measured_per_workload(open_database(database_dir(tmp_path, spec))[0])
    done = sum(1 for count in measured.values() if count)
    assert 0 < done <= len(report.tasks)
    if done < len(report.tasks):
        assert f"before {len(report.tasks) - done} of {len(report.tasks)} kernels" in \
            report.notes[-1]
    _, again = tune_model(mod, spec, tmp_path, minutes=0.15, progress=False)
    assert len(again.reused) == done and len(again.tuned) == len(report.tasks) - done
    after = measured_per_workload(open_database(database_dir(tmp_path, spec))[0])
    assert all(after[key] == count for key, count in measured.items() if count)


def test_records_of_another_cpu_are_not_applied_and_the_report_says_why(tuned, tmp_path):
    database, folder = tuned
    shutil.copytree(database, tmp_path / "db")
    here = resolve_target("x86")
    # the same machine as a CPU without its widest extension (a VM that hides it)
    widest = next(f for f in ("avx512f", "avx2", "avx") if f in here.features)
    narrower = tuple(f for f in here.features if f != widest and not f.startswith(widest[:6]))
    other = resolve_target("x86", features=narrower)
    assert other.key != here.key
    model = pruned_mlp(0)
    compiled = compile_model(model, X, other, tmp_path / "out", database=tmp_path / "db",
                             progress=False)
    report = compiled.tuning
    assert report.reused == [] and report.measured == 0
    assert any(re.search(f"not applied: this CPU lacks .*{widest}", note) for note in report.notes)
    assert f"-{widest}" in str(other.target)
    with torch.no_grad():
        ref = model(*X).numpy()
    np.testing.assert_allclose(compiled.load()(*X)[0], ref, rtol=1e-4, atol=1e-4)
