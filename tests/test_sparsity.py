"""Weight masks, N:M sparsity, the sparsity report and schedules, checked numerically."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunepass
from prunepass import PassManager, PipelineError
from prunepass.demo import DigitsCNN
from prunepass.errors import PlanError
from prunepass.frontends.base import ModelAdapter
from prunepass.frontends.torch import TorchModel, weight_masks
from prunepass.passes.analysis.sparsity import format_sparsity, nm_violations, weight_layers
from prunepass.passes.pipelines.mask import Mask
from prunepass.pm import AnalysisManager
from prunepass.schedules import Schedule, Sparsifier, sparsify
from prunepass.testing import randomize

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class MatMulNet(nn.Module):
    """A bare parameter in ``x @ w`` (matmul), a linear, and a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.proj = nn.Module()
        self.proj.w = nn.Parameter(torch.randn(8 * 4 * 4, 32) * 0.1)
        self.fc = nn.Linear(32, 12)

    def forward(self, x):
        h = torch.flatten(F.relu(self.conv(x)), 1)
        return self.fc(F.relu(h @ self.proj.w))


class NoWeights(nn.Module):
    def forward(self, x, y):
        return torch.relu(x @ y)


@pytest.fixture(scope="module")
def cnn() -> TorchModel:
    torch.manual_seed(0)
    return TorchModel.from_module(randomize(DigitsCNN(8)).eval(), (X,))


def weights(adapter: TorchModel) -> dict[str, np.ndarray]:
    return {l.param: adapter.state_array(l.param) for l in weight_layers(adapter.graph)}


def run(adapter: TorchModel, pipeline: str, **kw) -> TorchModel:
    a = adapter.clone()
    PassManager(pipeline).run(a, AnalysisManager(a, **kw))
    return a


def test_local_and_global_reach_the_requested_sparsity(cnn):
    local = weights(run(cnn, "mask<granularity=weight,sparsity=0.6>"))
    for name, w in local.items():
        assert abs((w == 0).mean() - 0.6) <= 0.005, name
    glob = weights(run(cnn, "mask<granularity=weight,sparsity=0.6,scope=global>"))
    zeros = sum((w == 0).sum() for w in glob.values())
    assert abs(zeros / sum(w.size for w in glob.values()) - 0.6) <= 0.005
    per_layer = [(w == 0).mean() for w in glob.values()]
    assert np.std(per_layer) > 0.05  # one ranking across layers: uneven per layer
    # global magnitude: every zeroed weight was smaller than every kept one
    dense = weights(cnn)
    cut = max(np.abs(dense[n][w == 0]).max() for n, w in glob.items())
    assert all(np.abs(dense[n][w != 0]).min() >= cut for n, w in glob.items())


def test_global_respects_max_ratio(cnn):
    glob = weights(run(cnn, "mask<granularity=weight,sparsity=0.8,scope=global,max-ratio=0.85>"))
    assert all((w == 0).mean() <= 0.85 + 1e-9 for w in glob.values())
    total = sum((w == 0).sum() for w in glob.values()) / sum(w.size for w in glob.values())
    assert abs(total - 0.8) <= 0.005


def test_masked_model_equals_dense_model_with_those_weights_zeroed(cnn):
    masked = run(cnn, "mask<granularity=weight,sparsity=0.7,scope=global>")
    masks = masked.weight_masks()
    assert set(masks) == {l.param for l in weight_layers(cnn.graph)}
    zeroed = copy.deepcopy(cnn.materialize())
    with torch.no_grad():
        for name, mk in masks.items():
            p = zeroed.get_parameter(name)
            p.mul_(torch.as_tensor(mk, dtype=p.dtype))
        expected = zeroed(X).numpy()
    got = masked.materialize()(X).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(got - cnn.run()[0]).max() > 1e-3  # masking changed something


def test_masks_hold_through_fine_tuning(cnn):
    module = run(cnn, "mask<granularity=weight,sparsity=0.5,importance=taylor>",
                 calibration=(X,)).materialize()
    masks = weight_masks.read(module)
    start = {n: getattr(*_holder(module, n)).detach().clone() for n in masks}
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
    module.train()
    y = torch.randint(0, 10, (4,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(module(X), y).backward()
        opt.step()
    for n, mk in masks.items():
        w = getattr(*_holder(module, n)).detach()
        assert torch.all(w[~torch.as_tensor(mk)] == 0), n  # zeros stay zero
        assert not torch.equal(w, start[n]), n  # the others trained


def _holder(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, leaf = name.rsplit(".", 1)
    return module.get_submodule(prefix), leaf


def test_nm_blocks_are_valid_and_skipped_layers_reported():
    torch.manual_seed(0)
    model = MatMulNet().eval()
    x = torch.randn(2, 8, 4, 4)
    res = prunepass.prune(model, (x,), "nm-sparsity<n=2,m=4>")
    ch = res.record.passes[0]["changes"]
    assert ch["verified_nm"] and ch["skipped"] == []
    layers = {l.param: l for l in weight_layers(res.adapter.graph)}
    assert layers["proj.w"].op == "matmul" and layers["proj.w"].axis == 0  # x @ w reduces over rows
    assert layers["conv.weight"].axis == 1
    for name, l in layers.items():
        w = res.adapter.state_array(name)
        assert nm_violations(w, 2, 4, l.axis) == 0, name
        assert (w == 0).mean() == 0.5, name  # random weights: exactly 2 of 4 zeroed
        # negative control: the same zeros along another axis do not form 2:4 blocks
        other = next(a for a in range(w.ndim) if a != l.axis and w.shape[a] % 4 == 0)
        assert nm_violations(w, 2, 4, other) > 0, name
    # conv1 of the digits CNN has one input channel: skipped, reported, the rest done
    res = prunepass.prune(DigitsCNN(8).eval(), (X,), "nm-sparsity")
    ch = res.record.passes[0]["changes"]
    assert [s["param"] for s in ch["skipped"]] == ["conv1.weight"]
    assert "not a multiple of m=4" in ch["skipped"][0]["why"]
    assert res.adapter.state_array("conv1.weight").all()


def test_nm_keeps_the_largest_of_each_block():
    lin = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., -5, 2, 0.5, 3, 3.5, -4, 0.1],
                                       [9., 8, 7, 6, -1, 2, -3, 4]]))
    res = prunepass.prune(nn.Sequential(lin), (torch.randn(2, 8),), "nm-sparsity<n=2,m=4>")
    np.testing.assert_array_equal(res.adapter.state_array("0.weight"),
                                  [[0, -5, 2, 0, 0, 3.5, -4, 0], [9, 8, 0, 0, 0, 0, -3, 4]])


def test_threshold_and_taylor_and_alias(cnn):
    a = run(cnn, "mask<granularity=weight,threshold=0.05>")
    for name, w in weights(cnn).items():
        got = a.state_array(name)
        assert np.array_equal(got == 0, np.abs(w) < 0.05), name
    # mask<sparsity=x> at channel granularity is mask<ratio=x>: the same pass
    assert PassManager("mask<sparsity=0.3>") == PassManager("mask<ratio=0.3>")
    assert "select-channels<ratio=0.3," in PassManager("mask<sparsity=0.3>").pipeline
    assert Mask(granularity="weight", importance="magnitude") == Mask(granularity="weight")


def test_channel_threshold_masks_the_channels_scoring_below_it():
    from tests.rule_models import ConvBnRelu
    torch.manual_seed(0)
    a = TorchModel.from_module(randomize(ConvBnRelu()).eval(), (torch.randn(2, 3, 8, 8),))
    am = AnalysisManager(a)
    cg, scores = am.get("channel-groups"), am.get("importance", criterion="l1")
    prunable = np.concatenate([g.classes[g.prunable] for g in cg.groups])
    t = float(np.median(scores[prunable]))
    rec = PassManager(f"mask<threshold={t},importance=l1>").run(a, am)
    removed = rec.step("mask-channels")["removed_classes"]
    assert removed == int((scores[prunable] < t).sum()) > 0
    assert a.run()[0].shape == (2, 8, 8, 8)  # shapes kept: channels zeroed, not removed


def test_weight_masks_compose_with_channel_pruning_fold_and_dce(cnn):
    a = run(cnn, "mask<granularity=weight,sparsity=0.5>")
    zeros = {n: int((w == 0).sum()) for n, w in weights(a).items()}
    b = a.clone()
    rec = PassManager("prune-channels<ratio=0.5>,fold-bn,dce").run(
        b, AnalysisManager(b, check_numerics=True))
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    masks = b.weight_masks()
    for n, w in weights(b).items():
        assert masks[n].shape == w.shape and np.all(w[~masks[n]] == 0), n
        assert 0 < (w == 0).sum() <= zeros[n]
    out = b.materialize()(X)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert weight_masks.read(b.materialize()).keys() == masks.keys()


def test_sparsity_report_counts_and_sizes(cnn):
    a = run(cnn, "mask<granularity=weight,sparsity=0.75,scope=global>,nm-sparsity")
    r = AnalysisManager(a).get("sparsity")
    arrays = {n: a.state_array(n) for n in a.graph.state if a.graph.state[n].kind == "param"}
    assert r.totals["params"] == sum(x.size for x in arrays.values())
    assert r.totals["effective_params"] == sum(np.count_nonzero(x) for x in arrays.values())
    by = {l.param: l for l in r.layers}
    assert by["conv1.weight"].nm is None and by["fc1.weight"].nm is True
    assert all(l.masked for l in r.layers)
    assert r.sizes["dense"] == 4 * r.totals["params"]
    assert r.sizes["zip"] < 0.6 * r.sizes["dense"]  # 75% zeros deflate well
    w = a.state_array("fc1.weight")
    assert r.sizes["bitmask"] < r.sizes["dense"] and np.count_nonzero(w) * 4 + w.size // 8 \
        <= r.sizes["bitmask"]
    text = format_sparsity(r)
    assert "fc1.weight" in text and "effective (non-zero)" in text
    dense = AnalysisManager(cnn).get("sparsity")
    assert dense.totals["weight_sparsity"] == 0 and dense.sizes["zip"] > 0.85 * dense.sizes["dense"]


def test_schedules():
    poly = Schedule("polynomial", final=0.8, steps=4, every=10, start=5)
    assert [t for t, _ in poly.plan()] == [5, 15, 25, 35]
    expect = [0.8 - 0.8 * (1 - k / 4) ** 3 for k in range(1, 5)]
    np.testing.assert_allclose([s for _, s in poly.plan()], expect)
    it = Schedule("iterative", final=0.875, steps=3)
    np.testing.assert_allclose([s for _, s in it.plan()], [0.5, 0.75, 0.875])
    assert Schedule("one-shot", final=0.6).plan() == [(0, 0.6)]
    with pytest.raises(PipelineError, match="final"):
        Schedule("iterative", final=1.0)
    with pytest.raises(PipelineError, match="kind"):
        Schedule("cubic", final=0.5)


def test_sparsify_prunes_on_schedule_and_keeps_zeros():
    torch.manual_seed(0)
    model = DigitsCNN(8)
    y = torch.randint(0, 10, (4,))
    opt: dict = {}
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def train_step(module, t):
        o = opt.setdefault("opt", torch.optim.Adam(module.parameters(), lr=1e-2))
        module.train()
        o.zero_grad()
        F.cross_entropy(module(X), y).backward()
        o.step()

    sp = sparsify(model, (X,), train_step, Schedule("polynomial", final=0.7, steps=3, every=2),
                  total_steps=7, scope="global")
    reached = [h["weight_sparsity"] for h in sp.history]
    assert [h["step"] for h in sp.history] == [0, 2, 4]
    assert reached == sorted(reached) and abs(reached[-1] - 0.7) <= 0.005
    masks = weight_masks.read(sp.module)
    for n, mk in masks.items():
        w = getattr(*_holder(sp.module, n)).detach().numpy()
        assert np.all(w[~mk] == 0), n
    # masks were added around the same Parameter objects: the optimiser still trains them
    assert {id(p) for p in opt["opt"].param_groups[0]["params"]} == \
        {id(p) for p in sp.module.parameters()}
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(PipelineError, match="sets granularity"):
        Sparsifier(model, (X,), Schedule(), mask_options={"granularity": "channel"})


def test_onnx_export_keeps_the_zeros(cnn, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch's ONNX exporter
    module = run(cnn, "nm-sparsity").materialize()
    path = weight_masks.export_onnx(module, (X,), tmp_path / "m.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert (inits["fc1.weight"] == 0).mean() == 0.5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input0": X.numpy()})[0]
    np.testing.assert_allclose(got, module(X).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert weight_masks.read(module)  # exporting baked a copy, not the module
    with pytest.raises(PlanError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        weight_masks.to_semi_structured(module)


@pytest.mark.parametrize("pipeline, words", [
    ("mask<granularity=weight,sparsity=1.0>", ["option 'sparsity'", "[0.0, 1.0)"]),
    ("mask<granularity=weight,sparsity=-0.1>", ["option 'sparsity'", "[0.0, 1.0)"]),
    ("nm-sparsity<n=4,m=2>", ["n=4", "m=2", "n <= m"]),
    ("mask<granularity=weight,ratio=0.5>", ["'ratio'", "granularity=channel", "sparsity"]),
    ("mask<granularity=weight,importance=bn-scale>", ["bn-scale", "taylor"]),
    ("mask<granularity=weight,sparsity=0.95,scope=global>", ["max-ratio 0.9"]),
    ("mask<granularity=weight,threshold=0.1,sparsity=0.5>", ["either threshold"]),
    ("mask<ratio=0.2,sparsity=0.3>", ["alias"]),
])
def test_bad_options_name_the_problem(pipeline, words):
    with pytest.raises(PipelineError) as e:
        PassManager(pipeline)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_models_without_weights_or_blocks_name_the_layer():
    x, y = torch.randn(3, 4), torch.randn(4, 5)
    with pytest.raises(PlanError, match=r"no conv/linear/matmul layer.*\(matmul\)"):
        prunepass.prune(NoWeights(), (x, y), "mask<granularity=weight>")
    with pytest.raises(PlanError, match=r"weight: reduction dimension 3 .*multiple of m=4"):
        prunepass.prune(nn.Linear(3, 4), (torch.randn(2, 3),), "nm-sparsity")
    with pytest.raises(PlanError, match="ignore"):
        prunepass.prune(nn.Linear(4, 4), (torch.randn(2, 4),),
                        "mask<granularity=weight,ignore=[weight]>")
    # a parameter of the top-level module: named, with the two ways out
    with pytest.raises(PlanError, match=r"'weight'.*top-level.*nn.Sequential.*ignore=\[weight\]"):
        prunepass.prune(nn.Linear(4, 4), (torch.randn(2, 4),), "mask<granularity=weight>")

    class Other(ModelAdapter):  # a frontend without weight masks (ONNX, for now)
        frontend = "other"
        clone = state_array = state_gradients = apply_keep = fold_batchnorms = None
        erase_dead = run = materialize = example_inputs = None

    with pytest.raises(PlanError, match="not supported by the other frontend"):
        Other().set_weight_masks({"w": np.ones(2, bool)})
