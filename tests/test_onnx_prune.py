"""Pruning torch models exported to ONNX, as ONNX, checked in onnxruntime.

For each model and exporter (dynamo=True through onnxscript, and the legacy dynamo=False
exporter): pruning nothing changes nothing; pruning equals zeroing the same channels in
the original ONNX model (relative error <= 1e-5); zeroing shifted channels does not
(negative control); the pruned file passes onnx.checker and runs in onnxruntime."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from prunepass.frontends.onnx import OnnxModel
from prunepass.numerics import relative_error
from prunepass.passes.pipelines.prune_channels import plan_for
from prunepass.pm import AnalysisManager, PassManager
from prunepass.testing import randomize


class ConvNet(torch.nn.Module):
    """conv+bn+relu, depthwise conv+bn+hardswish, residual add, concat, flatten+linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(16)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.b2 = torch.nn.BatchNorm2d(16)
        self.c3 = torch.nn.Conv2d(16, 8, 1)
        self.c4 = torch.nn.Conv2d(16, 12, 1)
        self.fc = torch.nn.Linear(20 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.nn.functional.hardswish(self.b2(self.dw(y))) + y
        y = torch.cat([self.c3(y), torch.sigmoid(self.c4(y))], 1)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 2)
        return self.fc(y.flatten(1))


class AttentionBlock(torch.nn.Module):
    """A pre-norm transformer block: multi-head attention (4 heads) and an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(32)
        self.mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(32)
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.mha(y, y, y, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class Extras(torch.nn.Module):
    """Ops beyond plain CNNs: group norm, transposed conv, instance norm, resize to a
    size, split (chunk), slice, softmax over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.gn = torch.nn.GroupNorm(4, 16)
        self.up = torch.nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.inorm = torch.nn.InstanceNorm2d(12, affine=True)
        self.c2 = torch.nn.Conv2d(12, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(4, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.gn(self.c1(x)))
        y = self.inorm(self.up(y))
        y = torch.nn.functional.interpolate(y, size=(8, 8), mode="nearest")
        a, b = self.c2(y).chunk(2, dim=1)
        y = a * torch.sigmoid(b)
        y = y[:, :, 1:-1, 1:-1]
        return torch.softmax(self.c3(y), dim=1)


def _tv(name: str):  # noqa: ANN202
    return lambda: torchvision.models.get_model(name, weights=None)


MODELS = {
    "convnet": (ConvNet, (1, 3, 8, 8)),
    "attention": (AttentionBlock, (2, 5, 32)),
    "extras": (Extras, (1, 3, 8, 8)),
    "resnet18": (_tv("resnet18"), (1, 3, 64, 64)),
    "mobilenet_v2": (_tv("mobilenet_v2"), (1, 3, 64, 64)),
}
# groups each model must prune with exact-only (all but those pinned by the outputs or
# normalised across channels): a floor that catches a rule silently pinning everything
MIN_EXACT_GROUPS = {"convnet": 3, "attention": 2, "extras": 2, "resnet18": 12,
                    "mobilenet_v2": 25}
EXPORTERS = ("dynamo", "legacy")


def export(name: str, exporter: str, folder: Path, dynamic_batch: bool = False) -> Path:
    make, shape = MODELS[name]
    model = randomize(make().eval(), seed=1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    path = folder / f"{name}_{exporter}{'_dyn' if dynamic_batch else ''}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dyn = ({0: torch.export.Dim("batch", max=64)},) if dynamic_batch else None
            torch.onnx.export(model, (torch.cat([x, x]) if dynamic_batch else x,), str(path),
                              dynamo=True, dynamic_shapes=dyn, verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}} if dynamic_batch else None)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("onnx_models")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if (name, exporter) not in cache:
            cache[(name, exporter)] = export(name, exporter, folder)
        return cache[(name, exporter)]
    return get


def _ort(model: onnx.ModelProto, xs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})


CASES = [(n, e) for n in MODELS for e in EXPORTERS]


@pytest.mark.parametrize("name,exporter", CASES)
def test_pruning_equals_masking(exported, name: str, exporter: str) -> None:  # noqa: ANN001
    path = exported(name, exporter)
    original = onnx.load(str(path))
    a = OnnxModel.load(path)
    xs = list(a.example_inputs)
    dense = _ort(original, xs)
    # pruning nothing: a plan keeping every index rewrites nothing and changes nothing
    plan = plan_for(AnalysisManager(a), exact_only=True)
    groups, keep = plan.summary(), plan.keep()
    everything = {k: np.arange(_size(a, k)) for k in keep}
    untouched = a.clone()
    untouched.apply_keep(everything, "remove")
    same = a.run()
    assert relative_error(same, dense) <= 1e-6  # the adapter runs what the file holds
    assert all(np.array_equal(u, s) for u, s in zip(untouched.run(), same))
    # pruning equals masking the same channels of the original model
    assert sum(g["kept"] < g["channels"] for g in groups) >= MIN_EXACT_GROUPS[name]
    masked = a.clone()
    masked.apply_keep(keep, "mask")
    reference = masked.run()
    pruned = a.clone()
    pruned.apply_keep(keep, "remove")
    pruned.erase_dead()
    out_model = pruned.materialize()
    onnx.checker.check_model(out_model, full_check=True)
    out = _ort(out_model, xs)
    assert [o.shape for o in out] == [d.shape for d in dense]
    assert relative_error(out, reference) <= 1e-5
    assert out_model.ByteSize() < 0.8 * original.ByteSize()
    assert [o.version for o in out_model.opset_import] == \
        [o.version for o in original.opset_import]
    # negative control: zeroing other channels than the removed ones gives other outputs
    sizes = {k: _size(a, k) for k in keep}
    shifted = {k: (idx + 1) % sizes[k] for k, idx in keep.items()}
    wrong = a.clone()
    wrong.apply_keep(shifted, "mask")
    assert relative_error(out, wrong.run()) > 1e-2


def _size(a: OnnxModel, key: tuple[str, int]) -> int:
    return next(v for v in a.graph.values() if v.name == key[0]).shape[key[1]]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_attention_heads_are_pruned(exported, exporter: str) -> None:  # noqa: ANN001
    """The head dimension is pruned inside every head: q, k and v projections shrink
    together (32*3 -> 16*3 outputs), the out projection's inputs follow."""
    a = OnnxModel.load(exported("attention", exporter))
    rec = PassManager("prune-channels<ratio=0.5,exact-only=true>,dce").run(
        a, AnalysisManager(a, check_numerics=True))
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    changed = {tuple(b): tuple(c) for _, b, c in rec.layers()}
    qkv = (32, 96) if (32, 96) in changed else (96, 32)
    assert changed[qkv] == ((32, 48) if qkv == (32, 96) else (48, 32))
    assert changed[(32, 32)] in ((32, 16), (16, 32))  # out projection: inputs halved
    assert rec.cost_after["macs"] < 0.75 * rec.cost_before["macs"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fold_bn_then_prune(tmp_path: Path, exporter: str) -> None:
    """Exporters fold batch norms themselves unless told not to; then fold-bn does."""
    model = randomize(ConvNet().eval(), seed=2)
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, optimize=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=False)
    a = OnnxModel.load(path, [x.numpy()])
    assert sum(n.op == "batchnorm" for n in a.graph.nodes) == 2
    dense = a.run()
    rec = PassManager("fold-bn,prune-channels<ratio=0.5>,dce").run(
        a, AnalysisManager(a, check_numerics=True))
    assert len(rec.passes[0]["changes"]["folded"]) == 2
    assert sum(n.op == "batchnorm" for n in a.graph.nodes) == 0
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    with torch.no_grad():
        assert relative_error(dense, [model(x).numpy()]) <= 1e-5
    onnx.checker.check_model(a.materialize(), full_check=True)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_batch_survives_pruning(tmp_path: Path, exporter: str) -> None:
    path = export("convnet", exporter, tmp_path, dynamic_batch=True)
    a = OnnxModel.load(path)
    assert a.graph.inputs[0].dynamic_axes == (0,)
    PassManager("prune-channels<ratio=0.5>,dce").run(a, AnalysisManager(a,
                                                                        check_numerics=True))
    pruned = a.materialize()
    x3 = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = _ort(pruned, [x3])[0]
    assert out.shape == (3, 10) and np.isfinite(out).all()


class SDPA(torch.nn.Module):
    """Fused qkv projection, heads split by reshape, scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)
        self.out = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


def test_onnx_attention_op(tmp_path: Path) -> None:
    """Opset 23's Attention op: heads keep their count, the head size is pruned, and the
    default scale 1/sqrt(head size) is pinned to the original head size."""
    model = randomize(SDPA().eval(), seed=3)
    path = tmp_path / "sdpa.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 5, 32),), str(path), dynamo=True,
                          opset_version=23, verbose=False)
    a = OnnxModel.load(path)
    att = [n for n in a.graph.nodes if n.op == "attention"]
    assert len(att) == 1 and att[0].inputs[0].shape == (2, 4, 5, 8)
    rec = PassManager("prune-channels<ratio=0.5,exact-only=true>,dce").run(
        a, AnalysisManager(a, check_numerics=True))
    assert rec.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    att = [n for n in a.graph.nodes if n.op == "attention"][0]
    assert att.inputs[0].shape == (2, 4, 5, 4)
    node = a.model.graph.node[a.node_index[att.name]]
    scale = [x.f for x in node.attribute if x.name == "scale"]
    assert scale and abs(scale[0] - 8 ** -0.5) < 1e-7


def test_record_reapplies_to_a_fresh_copy(exported, tmp_path: Path) -> None:  # noqa: ANN001
    import prunepass
    path = exported("convnet", "legacy")
    first = prunepass.prune(OnnxModel.load(path), pipeline="prune-channels<ratio=0.5>,dce")
    assert first.record.frontend == "onnx" and first.record.keep
    first.record.save(tmp_path / "rec.json")
    again = prunepass.apply_record(OnnxModel.load(path), None, str(tmp_path / "rec.json"))
    assert again.record.keep == first.record.keep
    assert relative_error(again.adapter.run(), first.adapter.run()) == 0.0
    assert isinstance(again.model, onnx.ModelProto)


def test_cli_prunes_an_onnx_file_and_never_overwrites_it(tmp_path, capsys):
    import torch
    import torchvision
    from prunepass.cli import main
    src = tmp_path / "m.onnx"
    torch.onnx.export(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 32, 32),),
                      str(src), dynamo=False)
    before = src.read_bytes()
    out = tmp_path / "slim.onnx"
    assert main(["run", str(src), "-q", "-p", "prune-channels<ratio=0.5>,dce", "-o", str(out),
                 "--check-numerics"]) == 0
    text = capsys.readouterr().out
    assert "(onnx)" in text and "groups pruned" in text
    assert out.stat().st_size < 0.4 * len(before)
    assert main(["run", str(src), "-q", "-o", str(src)]) == 2
    captured = capsys.readouterr()
    assert "is the input" in captured.err
    assert captured.out == ""  # refused before any pruning or report
    assert src.read_bytes() == before


def test_a_torch_record_applies_to_the_onnx_export(tmp_path):
    """The record is keyed by parameter names, which the dynamo exporter keeps: pruning the
    torch model and re-applying its record to the ONNX export give the same channels."""
    import torch
    import torchvision

    import prunepass
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 64, 64)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.4>,dce")
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True, external_data=False)
    again = prunepass.apply_record(str(tmp_path / "m.onnx"), None, res.record)
    shared = [k for k in again.record.shapes_after if res.record.shapes_after.get(k)]
    assert len(shared) > 40
    assert all(again.record.shapes_after[k] == res.record.shapes_after[k] for k in shared)
    assert again.record.cost_after["macs"] == res.record.cost_after["macs"]
