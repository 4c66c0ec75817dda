"""Property-based fuzzing of what users hand prunepass: pipeline text, record files, ONNX
bytes. Each case ends in a prunepass error or a correct result; never another exception,
never a changed input. Bounded: a fixed number of examples per property, no deadline."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass import PrunepassError, Record

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


X = torch.randn(2, 3, 8, 8)
MODEL = Tiny().eval()
STATE = copy.deepcopy(MODEL.state_dict())


def unchanged(model: nn.Module) -> bool:
    return all(torch.equal(v, STATE[k]) for k, v in model.state_dict().items())


def outcome(run, done: str) -> None:  # noqa: ANN001
    """``run()`` ends in a prunepass error or a model that runs; the input model is intact."""
    try:
        result = run()
    except PrunepassError as e:
        event(f"refused: {type(e).__name__}")
    else:
        event(done)
        with torch.no_grad():
            assert result.model(X).shape == (2, 4)
    assert unchanged(MODEL)


PASSES = ["prune-channels", "mask", "fold-bn", "dce", "nm-sparsity", "apply-record", "shapes",
          "cost", "importance", "bogus"]
OPTIONS = ["ratio", "importance", "scope", "round-to", "min-channels", "ignore", "seed",
           "exact-only", "group-ratios", "n", "m", "granularity", "sparsity", "path", "x"]
VALUES = ["0", "0.5", "1", "-1", "1e9", "nan", "true", "l2", "taylor", "[conv*]", "[a,[b]]",
          "[conv.weight:0.5]", "[conv.weight:2]", "", "[", "global", "weight", "/"]


@st.composite
def pipelines(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(PASSES))
        opts = [f"{draw(st.sampled_from(OPTIONS))}={draw(st.sampled_from(VALUES))}"
                for _ in range(draw(st.integers(0, 3)))]
        items.append(name + (f"<{','.join(opts)}>" if opts else ""))
    text = ",".join(items)
    if draw(st.booleans()):  # and some raw damage
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(["<", ">", ",", "=", "[", "]", " "])) + \
            text[pos:]
    return text


@FUZZ
@given(pipelines())
def test_pipelines_give_a_result_or_a_prunepass_error(text):
    outcome(lambda: prunepass.prune(MODEL, (X,), text), "pruned")


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(inner, max_size=3),
                     st.dictionaries(st.text(max_size=5), inner, max_size=3))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats()
                    | st.text(max_size=5), _containers, max_leaves=6)


@pytest.fixture(scope="module")
def good_record(tmp_path_factory):  # noqa: ANN201
    rec = prunepass.prune(MODEL, (X,), "prune-channels<ratio=0.5>,dce").record
    path = tmp_path_factory.mktemp("rec") / "good.json"
    rec.save(path)
    return json.loads(path.read_text())


@FUZZ
@given(st.data())
def test_records_give_a_result_or_a_prunepass_error(good_record, tmp_path_factory, data):
    rec = copy.deepcopy(good_record)
    where = data.draw(st.sampled_from(["top", "keep", "axis", "shapes"]))
    value = data.draw(JSON)
    if where == "top":
        rec[data.draw(st.sampled_from(sorted(rec) + ["extra"]))] = value
    elif where == "keep":
        rec["keep"][data.draw(st.sampled_from(sorted(rec["keep"])))] = value
    elif where == "axis":
        name = data.draw(st.sampled_from(sorted(rec["keep"])))
        rec["keep"][name][data.draw(st.sampled_from(["0", "1", "9", "-1"]))] = value
    else:
        rec["shapes_before"][data.draw(st.sampled_from(sorted(rec["shapes_before"])))] = value
    path = tmp_path_factory.mktemp("fuzz") / "r.json"
    path.write_text(json.dumps(rec))
    outcome(lambda: prunepass.apply_record(MODEL, (X,), Record.load(path)), "applied")


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory):  # noqa: ANN201
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(MODEL, (X,), str(path), dynamo=False)
    return path.read_bytes()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_onnx_files_give_a_result_or_a_prunepass_error(onnx_bytes, tmp_path_factory,
                                                                data):
    raw = bytearray(onnx_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "zero"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "zero":
            raw[i] = 0
        else:
            del raw[i:]
            if not raw:
                break
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(bytes(raw))
    try:
        prunepass.prune(str(path), None, "prune-channels<ratio=0.5>,dce")
    except PrunepassError as e:
        event(f"refused: {type(e).__name__}")
    else:
        event("pruned")
    assert path.read_bytes() == bytes(raw)
