"""The prune plan and the small passes around it: each pass alone (plan in, plan out), a
user's own pass between selection and removal, hw-round refining a budget, named
pipelines and their expansion, records written before the plan passes existed."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prunepass
from prunepass.errors import PipelineError
from prunepass.numerics import relative_error
from prunepass.plan import PrunePlan, RefinePass
from prunepass.pm import REGISTRY, AnalysisManager, PassManager, register
from prunepass.testing import randomize

FIXTURES = Path(__file__).parent / "fixtures"
X = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


class Block(nn.Module):
    """The model of fixtures/record_before_plans.json (made with the same seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = y + self.c2(torch.relu(self.c1(y)))
        return self.head(y.mean((2, 3)))


def block() -> nn.Module:
    torch.manual_seed(0)
    return randomize(Block().eval(), 0)


def session(check_numerics: bool = False) -> AnalysisManager:
    return AnalysisManager(prunepass.load(block(), X), check_numerics=check_numerics)


def run(am: AnalysisManager, text: str):  # noqa: ANN201
    return PassManager(text).run(am.model, am)


def sizes(plan: PrunePlan) -> dict[int, int]:
    """Kept channels per group of 16 or 24 channels (stem/bn/c2/head and c1)."""
    return {g.size: plan.kept(g) for g in plan.groups if g.prunable.any()}


# -- each pass alone -------------------------------------------------------------------
def test_score_channels_opens_a_plan_with_the_importance_scores():
    am = session()
    run(am, "score-channels<importance=l1>")
    plan = am.plan
    assert isinstance(plan, PrunePlan) and not plan.selected and not plan.removed.any()
    assert np.array_equal(plan.scores, am.get("importance", criterion="l1", seed=0))
    with pytest.raises(PipelineError, match="a plan is already open"):
        run(am, "score-channels")


def test_limit_channels_sets_what_every_selection_keeps_to():
    am = session()
    run(am, "score-channels,limit-channels<round-to=8,ignore=[c1]>")
    lim = am.plan.limits
    assert (lim.round_to, lim.ignore, lim.min_channels) == (8, ["c1"], 1)
    run(am, "select-channels<ratio=0.7>")
    assert sizes(am.plan) == {16: 8, 24: 24}  # 16 * 0.3 = 4.8 -> 8; c1 ignored


def test_select_channels_keeps_the_highest_scores_of_each_group():
    am = session()
    run(am, "score-channels,select-channels<ratio=0.5>")
    plan = am.plan
    assert sizes(plan) == {16: 8, 24: 12}
    for g in plan.groups:
        gone, kept = plan.scores[g.classes][plan.removed[g.classes]], \
            plan.scores[g.classes][~plan.removed[g.classes]]
        if len(gone):
            assert gone.max() <= kept.min()
    summary = {g["channels"]: g for g in plan.summary()}
    assert summary[24]["decided_by"] == ["select-channels"]  # the default ratio is 0.5


def test_select_budget_meets_its_target_with_the_least_pruning():
    am = session()
    dense = am.get("cost").totals["macs"]
    rec = run(am, "score-channels,select-budget<target-macs=0.5x>")
    budget = am.plan.notes["budget"]
    assert budget["achieved"] <= 0.5 * dense == pytest.approx(budget["target"])
    assert budget["achieved"] >= 0.45 * dense  # the least pruning, within the search's 1%+
    assert rec.step("select-budget")["budget"] == budget


def test_select_threshold_takes_every_channel_below_it():
    am = session()
    run(am, "score-channels")
    scores = am.plan.scores
    t = float(np.median(scores[scores > 0]))
    run(am, f"select-threshold<threshold={t}>")
    plan = am.plan
    for g in plan.groups:
        if g.prunable.all():
            low = scores[g.classes] < t
            assert np.array_equal(plan.removed[g.classes], low) or low.all()


def test_remove_channels_applies_the_plan_equal_to_masking_and_ends_it():
    am = session(check_numerics=True)
    run(am, "score-channels,select-channels<ratio=0.5>")
    keep = am.plan.keep()
    masked = am.model.clone()
    masked.apply_keep(keep, "mask")
    rec = run(am, "remove-channels")
    assert am.plan is None
    assert relative_error(am.model.run(), masked.run()) <= 1e-5
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    assert am.model.state_array("c1.weight").shape == (12, 8, 3, 3)


def test_mask_channels_zeroes_the_plan_and_keeps_shapes():
    am = session()
    run(am, "score-channels,select-channels<ratio=0.5>")
    keep = am.plan.keep()
    expected = am.model.clone()
    expected.apply_keep(keep, "mask")
    dense = am.model.run()
    run(am, "mask-channels")
    assert am.plan is None
    assert am.model.state_array("c1.weight").shape == (24, 16, 3, 3)
    assert relative_error(am.model.run(), expected.run()) == 0.0
    assert relative_error(am.model.run(), dense) > 1e-3


class _SnapToFour:
    """A channel-latency table whose staircase steps at multiples of four."""

    def snap_many(self, requests, **kw):  # noqa: ANN001, ANN003, ANN201
        return [min(g.size, -(-k // 4) * 4) for g, k in requests]


def _stub_table(am: AnalysisManager, monkeypatch) -> None:  # noqa: ANN001
    real = am.get
    monkeypatch.setattr(am, "get", lambda name, **o: _SnapToFour() if name == "channel-latency"
                        else real(name, **o))


def test_hw_round_moves_a_selection_onto_the_staircase(monkeypatch):
    am = session()
    _stub_table(am, monkeypatch)
    run(am, "score-channels,select-channels<ratio=0.3>")
    assert sizes(am.plan) == {16: 11, 24: 17}
    run(am, "hw-round<backend=ort>")
    assert sizes(am.plan) == {16: 12, 24: 20}
    g = {s["channels"]: s for s in am.plan.summary()}[24]
    assert g["requested"] == 17
    assert g["decided_by"] == ["select-channels<ratio=0.3>", "hw-round"]


def test_hw_round_refining_a_budget_searches_again_and_still_meets_it(monkeypatch):
    am = session()
    _stub_table(am, monkeypatch)
    dense = am.get("cost").totals["macs"]
    run(am, "score-channels,select-budget<target-macs=0.6x>")
    before = am.plan.notes["budget"]
    run(am, "hw-round")
    after = am.plan.notes["budget"]
    assert after["achieved"] <= 0.6 * dense and before["achieved"] <= 0.6 * dense
    assert after["evaluations"] >= 2  # the search ran again, snapping every candidate
    for g in am.plan.groups:
        if g.prunable.any():
            assert am.plan.kept(g) % 4 == 0 or am.plan.kept(g) == g.size
    rec = run(am, "remove-channels")
    assert rec.step("remove-channels")["budget"] == after


def test_hw_check_keeps_the_faster_plan(monkeypatch):
    from prunepass.passes.plan import hw_check
    am = session()
    _stub_table(am, monkeypatch)
    monkeypatch.setattr(hw_check, "time_plans", lambda model, keeps, *a, **k: {
        "snapped": [2.0] * 5, "asked": [1.0] * 5})
    run(am, "score-channels,select-channels<ratio=0.3>,hw-round")
    rec = run(am, "hw-check")
    assert rec.step("hw-check")["hw_check"]["kept"] == "asked"
    assert sizes(am.plan) == {16: 11, 24: 17}  # hw-round's move undone


# -- a user's own pass ----------------------------------------------------------------
class KeepEvenChannels(RefinePass):
    """Channels at even positions of a group are never removed."""
    name = "keep-even-channels"

    def refine(self, plan: PrunePlan, removed: np.ndarray) -> np.ndarray:
        for g in plan.groups:
            removed[g.classes[0::2]] = False
        return removed


@pytest.fixture
def keep_even():  # noqa: ANN201
    register(KeepEvenChannels)
    yield KeepEvenChannels
    del REGISTRY[KeepEvenChannels.name]


def test_a_users_pass_between_select_and_remove(keep_even):
    model = block()
    res = prunepass.prune(model, X, "score-channels,select-channels<ratio=0.5>,"
                          "keep-even-channels,remove-channels,dce", check_numerics=True)
    step = res.record.step("remove-channels")
    assert step["max_rel_error_vs_masked"] <= 1e-5
    kept = res.record.keep["c1.weight"]["0"]
    assert all(i in kept for i in range(0, 24, 2)) and len(kept) >= 12
    assert {g["name"]: g["decided_by"] for g in step["groups"]}["c1.weight[0]"] == [
        "select-channels", "keep-even-channels"]
    assert isinstance(res.model, Block)  # the user's class comes back
    with torch.no_grad():
        assert res.model(*X).shape == (2, 10)


def test_a_users_pass_needs_a_selection_before_it(keep_even):
    with pytest.raises(PipelineError, match="keep-even-channels needs a selection"):
        prunepass.prune(block(), X, "score-channels,keep-even-channels,remove-channels")


# -- named pipelines ------------------------------------------------------------------
PIPELINES = [
    "prune-channels", "prune-channels<ratio=0.3,round-to=8>,dce",
    "prune-channels<target-macs=0.5x,hw-round=ort,hw-trials=2>",
    "prune-channels<ratio=0.2,hw-round=tvm,hw-check=false,ignore=[fc,head*]>",
    "fold-bn,mask<sparsity=0.4>", "mask<granularity=weight,sparsity=0.3,scope=global>",
    "mask<threshold=0.2,importance=l1>", "apply-record<path=r.json>,dce",
]


@pytest.mark.parametrize("text", PIPELINES)
def test_the_expanded_pipeline_parses_back_to_the_same_pass_manager(text, capsys):
    from prunepass.cli import main
    assert main(["passes", "--expand", text]) == 0
    printed = capsys.readouterr().out.strip()
    assert PassManager(printed) == PassManager(text)
    assert PassManager(printed).pipeline == printed
    assert "prune-channels" not in printed and "mask<" not in printed


def test_the_record_keeps_every_option_defaults_included():
    rec = prunepass.prune(block(), X, "prune-channels<round-to=4>").record
    assert "select-channels<ratio=0.5,scope=local,group-ratios=[]>" in rec.pipeline
    assert "round-to=4" in rec.pipeline and rec.given == "prune-channels<round-to=4>"


def test_passes_lists_small_passes_and_named_pipelines_with_their_expansion(capsys):
    from prunepass.cli import main
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "plan passes" in out and "named pipelines" in out
    assert "= score-channels,limit-channels,select-channels,remove-channels" in out


def test_small_passes_are_small():
    """No pass file over 200 lines; no pass but a named pipeline with more than 8 options."""
    root = Path(prunepass.passes.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
        if any(c.name in {cls.__name__ for cls in REGISTRY.values()} for c in classes):
            assert len(path.read_text().splitlines()) <= 200, path
    for name, cls in REGISTRY.items():
        if cls.kind != "pipeline":
            assert len(cls.options) <= 8, name


# -- records from before ---------------------------------------------------------------
def test_a_record_written_before_the_plan_passes_still_applies():
    path = FIXTURES / "record_before_plans.json"
    old = json.loads(path.read_text())
    assert old["pipeline"] == "prune-channels<round-to=4>,dce" and "given" not in old
    model = block()
    res = prunepass.apply_record(model, X, str(path), check_numerics=True)
    assert res.record.shapes_after == old["shapes_after"]
    assert res.record.keep == old["keep"]
    assert res.record.step("apply-record")["max_rel_error_vs_masked"] <= 1e-5
    fresh = prunepass.prune(block(), X, "prune-channels<round-to=4>,dce").record
    assert fresh.keep == old["keep"]  # the small passes choose what the old pass chose


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [
    ("remove-channels", ["remove-channels works on a prune plan", "score-channels"]),
    ("score-channels,remove-channels", ["remove-channels needs a selection", "select-channels"]),
    ("score-channels,select-channels,select-budget<target-macs=0.5x>",
     ["the plan already has a selection (select-channels)"]),
    ("score-channels,hw-round", ["hw-round needs a selection"]),
    ("hw-round", ["hw-round works on a prune plan"]),
    ("score-channels,select-channels,hw-check", ["hw-check compares", "put hw-round before"]),
    ("score-channels,select-channels,limit-channels<round-to=4>",
     ["limit-channels comes after the plan's selection"]),
    ("score-channels,select-channels,fold-bn,remove-channels",
     ["fold-bn changed the model after the last plan was made"]),
    ("select-budget", ["give one of target-macs"]),
    ("select-channels<scope=global,group-ratios=[c1.weight:0.3]>", ["give one or the other"]),
])
def test_plan_passes_in_the_wrong_order_say_what_they_need(text, words):
    with pytest.raises(PipelineError) as e:
        prunepass.prune(block(), X, text)
    for w in words:
        assert w in str(e.value), str(e.value)
