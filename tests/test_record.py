"""Records: saved as JSON, re-applied to a fresh model, same channels, same outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

import prunepass
from prunepass import PlanError, Record
from prunepass.testing import randomize
from tests.rule_models import ConcatSplit


def test_record_round_trip_and_reapply(tmp_path):
    torch.manual_seed(0)
    model = randomize(torchvision.models.mobilenet_v3_small().eval())
    x = torch.randn(2, 3, 64, 64)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.4,importance=l1>,dce")
    path = tmp_path / "r.json"
    res.record.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "prunepass-record/1"
    assert data["cost_after"]["source"].startswith("counted")
    rec = Record.load(path)
    again = prunepass.apply_record(randomize(torchvision.models.mobilenet_v3_small().eval()),
                                   (x,), rec)
    # fresh random weights differ, but the kept channels are the recorded ones
    shapes = {k: tuple(v.shape) for k, v in res.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.model.state_dict().items()}
    # on the same weights the outputs are identical
    same = prunepass.apply_record(model, (x,), rec)
    with torch.no_grad():
        assert torch.equal(same.model(x), res.model(x))
    assert same.record.keep == rec.keep


def test_two_prune_steps_compose_in_the_record():
    torch.manual_seed(0)
    model = randomize(ConcatSplit().eval())
    x = torch.randn(2, 3, 8, 8)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.3>,prune-channels<ratio=0.3>")
    once = prunepass.apply_record(model, (x,), res.record)
    with torch.no_grad():
        assert torch.equal(once.model(x), res.model(x))


def test_record_of_another_model_is_refused():
    x = torch.randn(1, 3, 8, 8)
    rec = prunepass.prune(ConcatSplit().eval(), (x,), "prune-channels<ratio=0.5>").record
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    with pytest.raises(PlanError, match="names no tensor of this model"):
        prunepass.apply_record(other, (x,), rec)


def test_bad_record_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        Record.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Record.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(PlanError, match="format"):
        Record.load(tmp_path / "old.json")
