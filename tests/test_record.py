"""Records: saved as JSON, re-applied to a fresh model, same channels, same outputs."""
from __future__ import annotations

import json

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
    with pytest.raises(PlanError, match="made on another model .ConcatSplit, 8 tensors; "
                                        "this one has 2.: the model lacks a.weight"):
        prunepass.apply_record(other, (x,), rec)


def test_record_of_a_model_with_overlapping_names_is_refused():
    # resnet34 has every tensor name of resnet18's first blocks, with the same shapes
    x = torch.randn(1, 3, 32, 32)
    rec = prunepass.prune(torchvision.models.resnet18().eval(), (x,)).record
    with pytest.raises(PlanError, match="the record does not know layer1.2"):
        prunepass.apply_record(torchvision.models.resnet34().eval(), (x,), rec)


def _good_record(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    rec = prunepass.prune(ConcatSplit().eval(), (x,), "prune-channels<ratio=0.5>").record
    rec.save(tmp_path / "good.json")
    return json.loads((tmp_path / "good.json").read_text())


def _with(data, path, value):  # noqa: ANN001, ANN202
    data = json.loads(json.dumps(data))
    *keys, last = path
    node = data
    for k in keys:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize("edit, words", [
    (lambda d: [d], "must be a JSON object"),
    (lambda d: "a string", "must be a JSON object"),
    (lambda d: None, "must be a JSON object"),
    (lambda d: _with(d, ["pipeline"], _DELETE), "lacks the field 'pipeline'"),
    (lambda d: _with(d, ["surprise"], 1), "unknown field 'surprise'"),
    (lambda d: _with(d, ["keep"], [1, 2]), "field 'keep' must be a JSON object"),
    (lambda d: _with(d, ["keep", "a.weight"], [0, 1]), "must map axes to index lists"),
    (lambda d: _with(d, ["keep", "a.weight", "0"], [0, 999]), "beyond the axis's"),
    (lambda d: _with(d, ["keep", "a.weight", "0"], [0, 2**40]), "list of channel indices"),
    (lambda d: _with(d, ["keep", "a.weight", "0"], [0.5]), "list of channel indices"),
    (lambda d: _with(d, ["keep", "a.weight", "0"], [2, 1]), "sorted and without repeats"),
    (lambda d: _with(d, ["keep", "a.weight", "0"], []), "non-empty"),
    (lambda d: _with(d, ["keep", "a.weight", "7"], [0]), "names axis '7'"),
    (lambda d: _with(d, ["keep", "a.weight", "x"], [0]), "names axis 'x'"),
    (lambda d: _with(d, ["shapes_before", "a.weight"], "big"), "list of sizes"),
])
def test_malformed_records_name_the_field(tmp_path, edit, words):
    bad = edit(_good_record(tmp_path))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanError) as e:
        Record.load(tmp_path / "bad.json")
    assert words in str(e.value)


def test_record_files_that_are_not_text_or_files(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(PlanError, match="not UTF-8"):
        Record.load(tmp_path / "bin.json")
    with pytest.raises(PlanError, match="is a folder"):
        Record.load(tmp_path)


def test_bad_record_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        Record.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Record.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(PlanError, match="format"):
        Record.load(tmp_path / "old.json")


def test_torch_record_on_the_onnx_export_of_another_model_is_refused(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    rec = prunepass.prune(torchvision.models.resnet18().eval(), (x,)).record
    torch.onnx.export(torchvision.models.resnet34().eval(), (x,), str(tmp_path / "m.onnx"),
                      dynamo=True, external_data=False)
    with pytest.raises(PlanError, match="made on another model .* does not know layer1.2"):
        prunepass.apply_record(str(tmp_path / "m.onnx"), None, rec)
