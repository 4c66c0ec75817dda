"""Channel schedules with fine-tuning, the default training loop, and the sensitivity
analysis."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import prunepass
from prunepass.demo import DigitsCNN, accuracy, digits_data, train
from prunepass.errors import PipelineError
from prunepass.passes.analysis.sensitivity import EvaluationError
from prunepass.pm import AnalysisManager
from prunepass.search.recovery import (ChannelSchedule, classification_trainer,
                                       prune_with_recovery, schedule_amount)


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits_data()
    model = DigitsCNN(16)
    train(model, xtr, ytr, 3)
    return model, (xtr, ytr, xte, yte)


def test_schedule_amounts():
    assert ChannelSchedule("one-shot", 0.6, steps=5).amounts() == [0.6]
    it = ChannelSchedule("iterative", 0.75, steps=2).amounts()
    assert it == pytest.approx([0.5, 0.75])  # each step keeps the same fraction: 1/2, 1/2
    poly = ChannelSchedule("polynomial", 0.8, steps=4, power=3).amounts()
    assert poly == pytest.approx([0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3),
                                  0.8 * (1 - 0.25 ** 3), 0.8])
    steps = [b - a for a, b in zip([0.0] + poly, poly)]
    assert all(x > y for x, y in zip(steps, steps[1:]))  # large steps first
    assert schedule_amount("iterative", 0, 3, 0.5) == 0.0
    for bad, words in ((dict(kind="cubic"), "schedule kind"),
                       (dict(final=1.0), "0 <= initial <= final < 1"),
                       (dict(initial=0.5, final=0.2), "0 <= initial <= final < 1"),
                       (dict(steps=0), "steps must be >= 1"),
                       (dict(budget="flops"), "schedule budget")):
        with pytest.raises(PipelineError, match=words):
            ChannelSchedule(**bad)


def test_iterative_recovery_composes_a_reappliable_record(digits):
    model, (xtr, ytr, xte, yte) = digits
    calls = []
    trainer = classification_trainer((xtr, ytr), progress=False)

    def train_fn(module, epochs):
        calls.append(epochs)
        trainer(module, epochs)

    sched = ChannelSchedule("iterative", 0.5, steps=3, epochs=1)
    res = prune_with_recovery(model, (xte[:1],), sched, train_fn,
                              evaluate=lambda m: accuracy(m, xte, yte), progress=False)
    assert calls == [1, 1, 1]
    macs = [h["macs"] for h in res.history]
    assert macs[0] > macs[1] > macs[2] == res.record.cost_after["macs"]
    shapes = {k: list(v.shape) for k, v in res.model.state_dict().items()}
    assert shapes["conv1.weight"][0] == 8 and shapes["conv2.weight"][0] == 16  # half kept
    assert shapes["fc1.weight"][0] == 64 and shapes["fc2.weight"] == [10, 64]
    assert res.history[-1]["score"] > 90
    # the composed record re-applies to a fresh model: same structure, same MACs
    again = prunepass.apply_record(DigitsCNN(16), (xte[:1],), res.record)
    assert {k: list(v.shape) for k, v in again.model.state_dict().items()} == shapes
    assert again.record.cost_after["macs"] == res.record.cost_after["macs"]
    assert model.conv1.weight.shape[0] == 16  # the input model is untouched


def test_polynomial_macs_schedule_tracks_its_budget(digits):
    model, (_, _, xte, _) = digits
    sched = ChannelSchedule("polynomial", 0.6, steps=2, epochs=0, budget="macs")
    res = prune_with_recovery(model, (xte[:1],), sched, None, progress=False)
    dense = res.record.cost_before["macs"]
    for h, amount in zip(res.history, sched.amounts()):
        assert h["options"]["target-macs"] == f"{(1 - amount) * dense:.9g}"
        assert 0.9 * (1 - amount) * dense <= h["macs"] <= (1 - amount) * dense
    with pytest.raises(PipelineError, match="the schedule sets the amount; remove ratio"):
        prune_with_recovery(model, (xte[:1],), sched, options={"ratio": 0.3})
    with pytest.raises(PipelineError, match="has no option 'colour'"):
        prune_with_recovery(model, (xte[:1],), sched, options={"colour": 1})


def test_classification_trainer_lowers_the_loss_on_tensors_and_loaders():
    torch.manual_seed(0)
    xtr, ytr, _, _ = digits_data()
    x, y = xtr[:256], ytr[:256]
    for data in ((x, y), [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]):
        model = DigitsCNN(8)
        model.eval()
        with torch.no_grad():
            before = F.cross_entropy(model(x), y).item()
        classification_trainer(data, lr=3e-3, progress=False)(model, 10)
        assert not model.training
        with torch.no_grad():
            assert F.cross_entropy(model(x), y).item() < 0.5 * before


def test_sensitivity_matches_pruning_each_group_alone(digits):
    model, (_, _, xte, yte) = digits
    evaluate = lambda m: accuracy(m, xte, yte)  # noqa: E731
    adapter = prunepass.load(model, (xte[:1],))
    am = AnalysisManager(adapter, evaluate=evaluate)
    sens = am.get("sensitivity", ratios=[0.5, 0.25])
    assert sens.ratios == [0.25, 0.5]
    assert [g.name for g in sens.groups] == ["conv1.weight", "conv2.weight", "fc1.weight"]
    assert sens.dense_score == pytest.approx(evaluate(model))
    g = sens.by_name()["conv2.weight"]
    one = prunepass.prune(adapter.clone(), None,
                          "prune-channels<ratio=0,group-ratios=[conv2.weight:0.5]>")
    assert g.drops[0.5] == pytest.approx(sens.dense_score - evaluate(one.model))
    assert g.macs[0.5] == one.record.cost_after["macs"] < g.macs[0.25] < sens.dense_macs
    assert g.drop_at(0.375) == pytest.approx((g.drops[0.25] + g.drops[0.5]) / 2)
    assert "conv2.weight" in sens.table() and sens.to_dict()["groups"][1]["drops"]["0.5"] \
        == g.drops[0.5]
    with pytest.raises(PipelineError, match="needs an evaluation function"):
        AnalysisManager(adapter).get("sensitivity")
    with pytest.raises(PipelineError, match=r"every ratio must be in \(0, 1\)"):
        am.get("sensitivity", ratios=[0.5, 1.5])
    with pytest.raises(EvaluationError, match="evaluate returned nan on group conv1.weight"):
        calls = iter([1.0, float("nan")])
        AnalysisManager(adapter, evaluate=lambda m: next(calls)).get("sensitivity")
