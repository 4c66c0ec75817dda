"""Multi-objective search: the Pareto set is non-dominated and re-applies, failed
evaluations fail only their trial, SQLite studies resume without losing trials, and bad
input gets clear errors."""
from __future__ import annotations

import math

import optuna
import pytest
import torch

import prunepass
from prunepass.demo import DigitsCNN, accuracy, digits_data, train
from prunepass.errors import PipelineError, PlanError
from prunepass.passes.analysis.sensitivity import EvaluationError
from prunepass.search import dominates, hypervolume_2d, non_dominated, search


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits_data()
    model = DigitsCNN(8)
    train(model, xtr[:600], ytr[:600], 2)
    return model, xte[:1], (lambda m: accuracy(m, xte[:200], yte[:200]))


def test_pareto_helpers_on_hand_made_points():
    pts = [(1.0, 90.0), (2.0, 95.0), (2.0, 94.0), (3.0, 95.0), (0.5, 80.0)]
    assert non_dominated(pts, (False, True)) == [0, 1, 4]
    assert dominates((2.0, 95.0), (3.0, 95.0), (False, True))
    assert not dominates((1.0, 90.0), (2.0, 95.0), (False, True))
    # staircase area below reference (4, 70): (4-0.5)*(80-70) + (4-1)*(90-80) + (4-2)*(95-90)
    assert hypervolume_2d(pts, (4.0, 70.0)) == pytest.approx(35 + 30 + 10)
    assert hypervolume_2d([(5.0, 99.0)], (4.0, 70.0)) == 0.0  # beyond the reference
    assert hypervolume_2d([], (4.0, 70.0)) == 0.0


def test_pareto_set_is_non_dominated_and_each_record_reapplies(digits, tmp_path):
    model, x, evaluate = digits
    res = search(model, (x,), evaluate, objectives=("accuracy", "macs"), n_trials=14,
                 population_size=6, round_to=(1, 4), progress=False)
    complete = res.trials()
    assert len(complete) == 14 and not res.failed
    values = [(t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["macs"])
              for t in complete]
    assert res.pareto
    for p in res.pareto:
        mine = (p.metrics["accuracy"], p.metrics["macs"])
        assert not any(dominates(v, mine, (True, False)) for v in values)
    # the uniform warm start ran first: every group at 0.25 and at 0.5
    assert set(complete[0].params[k] for k in complete[0].params if k.startswith("ratio:")) \
        == {0.25}
    # other weights: a record carries the structure, not the values; traced once
    fresh = prunepass.load(DigitsCNN(8), (x,))
    for p in res.pareto:
        again = prunepass.apply_record(fresh.clone(), None, p.record)
        assert again.record.cost_after["macs"] == p.metrics["macs"] == \
            p.record.cost_after["macs"]
        assert again.record.cost_after["params"] == p.metrics["params"]
    assert res.pareto[0].metrics["macs"] < res.dense["macs"]
    files = res.save(tmp_path)
    assert files["plot"].stat().st_size > 10_000
    rows = files["csv"].read_text().splitlines()
    assert len(rows) == len(res.pareto) + 1
    assert (tmp_path / "records" / f"trial-{res.pareto[0].trial:05d}.json").exists()
    table = res.table()
    assert "dense" in table and "counted from the IR" in table and "modelled" in table


def test_failing_and_nan_evaluations_fail_their_trial_only(digits):
    model, x, evaluate = digits
    calls = {"n": 0}

    def flaky(m):
        calls["n"] += 1  # call 1 scores the dense model, call k + 2 trial k
        if calls["n"] == 3:
            raise RuntimeError("the board went away")
        if calls["n"] == 5:
            return float("nan")
        if calls["n"] == 6:
            return None
        return evaluate(m)

    import prunepass.search  # the package is callable: prunepass.search(...) is search(...)
    res = prunepass.search(model, (x,), flaky, n_trials=8, population_size=4, progress=False)
    assert dict(res.failed) == {
        1: "evaluate raised RuntimeError: the board went away (on trial 1)",
        3: "evaluate returned nan on trial 3",
        4: "evaluate returned None on trial 4; it must return a number (higher is better)"}
    assert len(res.trials("COMPLETE")) == 5
    assert all(math.isfinite(p.metrics["accuracy"]) for p in res.pareto)


def test_sqlite_study_resumes_after_an_interrupt(digits, tmp_path):
    model, x, evaluate = digits
    url = f"sqlite:///{tmp_path / 'study.db'}"
    calls = {"n": 0}

    def interrupted(m):
        calls["n"] += 1
        if calls["n"] == 5:  # dense + trials 0, 1, 2 done: Ctrl-C in trial 3
            raise KeyboardInterrupt
        return evaluate(m)

    kw = dict(n_trials=7, population_size=4, storage=url, study_name="s", progress=False)
    with pytest.raises(KeyboardInterrupt):
        search(model, (x,), interrupted, **kw)
    study = optuna.load_study(study_name="s", storage=url)
    done = {t.number: (t.params, t.values) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(done) == [0, 1, 2]
    assert study.trials[3].state == optuna.trial.TrialState.FAIL
    assert study.trials[3].user_attrs["fail_reason"] == "interrupted"
    res = search(model, (x,), evaluate, **kw)  # the same call resumes
    trials = res.study.trials
    assert len(trials) == 7 and len(res.trials("COMPLETE")) == 6
    for n, (params, values) in done.items():  # nothing finished was lost or redone
        assert trials[n].params == params and trials[n].values == values
    with pytest.raises(PlanError, match="different objectives"):
        search(model, (x,), evaluate, objectives=("accuracy", "params"), **kw)


def test_constraints_hold_on_the_pareto_set_and_infeasible_ones_are_refused(digits):
    model, x, evaluate = digits
    res = search(model, (x,), evaluate, objectives=("accuracy", "energy"),
                 constraints={"latency_ms": "0.6x", "accuracy_drop": 30}, n_trials=10,
                 population_size=5, progress=False)
    assert res.pareto
    for p in res.pareto:
        assert p.metrics["latency_ms"] <= 0.6 * res.dense["latency_ms"] + 1e-12
        assert p.metrics["accuracy"] >= res.dense["accuracy"] - 30
    assert "roofline" in res.sources["latency_ms"]
    assert res.sources["energy_mj"].startswith("modelled")
    with pytest.raises(PlanError, match="macs <= 10 cannot be met"):
        search(model, (x,), evaluate, constraints={"macs": 10}, n_trials=2, progress=False)


def test_measured_latency_replaces_the_model(digits):
    model, x, _ = digits
    from prunepass.api import load
    from prunepass.pm import AnalysisManager

    def fake_clock(m):  # seconds: 1 ns per MAC, so the "measurement" is checkable
        return AnalysisManager(load(m, (x,))).get("cost").totals["macs"] * 1e-9

    res = search(model, (x,), objectives=("latency", "params"), measure_latency=fake_clock,
                 n_trials=4, population_size=4, progress=False)
    assert res.sources["latency_ms"] == "measured by measure_latency()"
    for t in res.trials():
        m = t.user_attrs["metrics"]
        assert m["latency_ms"] == pytest.approx(m["macs"] * 1e-6)


def test_bad_input_is_refused_clearly(digits):
    model, x, evaluate = digits
    with pytest.raises(PipelineError, match="unknown objective 'speed'"):
        search(model, (x,), evaluate, objectives=("accuracy", "speed"))
    with pytest.raises(PipelineError, match="ratio, round-to are chosen by the search"):
        search(model, (x,), evaluate, options={"ratio": 0.3, "round-to": 8})
    with pytest.raises(PipelineError, match="need evaluate=fn"):
        search(model, (x,), objectives=("accuracy", "macs"))
    with pytest.raises(PipelineError, match="no channel group is produced by 'conv9.weight'"):
        search(model, (x,), evaluate, groups=["conv9.weight"])
    with pytest.raises(PipelineError, match="cannot be pruned"):
        search(model, (x,), evaluate, groups=["fc2.weight"])
    with pytest.raises(PipelineError, match="unknown constraint 'fps'"):
        search(model, (x,), evaluate, constraints={"fps": 30})
    with pytest.raises(PipelineError, match="energy needs a profile in pJ"):
        search(model, (x,), evaluate, objectives=("accuracy", "energy"),
               profile="eyeriss-relative")
    with pytest.raises(EvaluationError, match="evaluate raised ZeroDivisionError.*dense"):
        search(model, (x,), lambda m: 1 / 0)
