"""Failure classes found on real models (issue: every model people bring), each on a small
model built here: the right groups, the right labels, pruned == zeroed where exact."""
from __future__ import annotations

import torch
from torch import nn

import prunepass
from prunepass.pm import AnalysisManager
from prunepass.testing import randomize


class TransposedWeightMLP(nn.Module):
    """Linear layers written as ``x @ self.weight.T`` (Falcon-style code)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 16))
        self.w2 = nn.Parameter(torch.randn(16, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1.T) @ self.w2.T


def test_a_weight_used_through_dot_T_is_a_linear_layer_not_a_silent_barrier():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    model = randomize(TransposedWeightMLP().eval())
    am = AnalysisManager(prunepass.load(model, (x,)))
    graph = am.graph
    matmuls = [n for n in graph.nodes if n.op == "matmul"]
    assert len(matmuls) == 2 and all(len(n.inputs) == 2 for n in matmuls)
    cg = am.get("channel-groups")
    assert cg.barriers == []
    hidden = [g for g in cg.groups if g.size == 32]
    assert len(hidden) == 1 and hidden[0].prunable.all() and hidden[0].exact.all()
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert res.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    assert tuple(res.model.w1.shape) == (16, 16) and tuple(res.model.w2.shape) == (16, 16)
    with torch.no_grad():
        assert res.model(x).shape == (4, 16)


def test_a_call_the_frontend_cannot_read_is_a_reported_barrier(monkeypatch):
    from prunepass.frontends.torch import aten_map, to_ir
    real = aten_map.canonicalize

    def failing(node):  # noqa: ANN001, ANN202
        if "relu" in str(node.target):
            raise KeyError("an argument the frontend does not know")
        return real(node)
    monkeypatch.setattr(to_ir, "canonicalize", failing)
    torch.manual_seed(0)
    model = randomize(TransposedWeightMLP().eval())
    cg = AnalysisManager(prunepass.load(model, (torch.randn(4, 16),))).get("channel-groups")
    (barrier,) = cg.barriers
    assert "relu" in barrier["op"] and "could not be read" in barrier["why"]
    assert "an argument the frontend does not know" in barrier["why"]
    assert not any(g.prunable.any() for g in cg.groups if g.size == 32)  # pinned, not lost


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x))).mean((2, 3))


def _onnx_with_input_dims(tmp_path, dims):  # noqa: ANN001, ANN202
    import onnx
    path = tmp_path / "m.onnx"
    torch.onnx.export(randomize(SmallConvNet().eval()), (torch.randn(1, 3, 16, 16),), str(path),
                      dynamo=True, external_data=False)
    m = onnx.load(str(path))
    for d, new in zip(m.graph.input[0].type.tensor_type.shape.dim, dims):
        d.Clear()
        if isinstance(new, int):
            d.dim_value = new
        else:
            d.dim_param = new
    out = tmp_path / "sym.onnx"
    onnx.save(m, str(out))
    return out


def test_an_onnx_input_with_symbolic_sizes_takes_what_the_graph_fixes(tmp_path):
    import pytest
    from prunepass.errors import TraceError
    path = _onnx_with_input_dims(tmp_path, ["N", "C", 16, 16])
    adapter = prunepass.load(str(path), None)
    assert adapter.graph.inputs[0].shape == (1, 3, 16, 16)  # batch 1, channels from conv c1
    res = prunepass.prune(str(path), None, "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert res.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    path = _onnx_with_input_dims(tmp_path, ["N", "C", "H", "W"])
    with pytest.raises(TraceError) as e:
        prunepass.load(str(path), None)
    msg = str(e.value)
    assert "H (axis 2), W (axis 3)" in msg and "--input-shape 1,3,H,W" in msg
    import numpy as np
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    assert prunepass.load(str(path), (x,)).graph.inputs[0].shape == (2, 3, 12, 12)


def _shared_initializer_model(tie_weights: bool = False):  # noqa: ANN202
    """Two parallel convs after a stem whose zero biases (and, with ``tie_weights``, whose
    random weights) are one initializer, as torch's legacy exporter merges them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def init(name, a):  # noqa: ANN001, ANN202
        return numpy_helper.from_array(np.asarray(a, np.float32), name)
    w = rng.standard_normal((8, 8, 3, 3)) * 0.2
    inits = [init("stem.w", rng.standard_normal((8, 3, 3, 3)) * 0.3),
             init("stem.b", rng.standard_normal(8) * 0.1),
             init("zeros", np.zeros(8)), init("a.w", w),
             init("b.w", w if tie_weights else rng.standard_normal((8, 8, 3, 3)) * 0.2),
             init("head.w", rng.standard_normal((16, 4)) * 0.3)]
    b_weight = "a.w" if tie_weights else "b.w"
    nodes = [helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["s"], pads=[1] * 4),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "a.w", "zeros"], ["ya"], pads=[1] * 4),
             helper.make_node("Conv", ["r", b_weight, "zeros"], ["yb"], pads=[1] * 4),
             helper.make_node("Relu", ["ya"], ["ra"]), helper.make_node("Relu", ["yb"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["c"], axis=1),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "head.w"], ["y"])]
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_initializers_the_exporter_merged_are_unshared_real_ties_stay(tmp_path):
    import onnx
    path = tmp_path / "shared.onnx"
    onnx.save(_shared_initializer_model(), str(path))
    adapter = prunepass.load(str(path), None)
    cg = AnalysisManager(adapter).get("channel-groups")
    sizes = sorted(g.size for g in cg.groups if g.prunable.any())
    assert sizes == [8, 8, 8]  # stem, a and b: three groups, not a and b coupled by "zeros"
    res = prunepass.prune(str(path), None, "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert res.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5
    assert res.record.output["notes"] == [
        "initializer zeros was shared by layers the exporter merged: unshared"]
    # a tensor with varied values read by two layers is a real tie: it stays one
    onnx.save(_shared_initializer_model(tie_weights=True), str(path))
    cg = AnalysisManager(prunepass.load(str(path), None)).get("channel-groups")
    assert sorted(g.size for g in cg.groups if g.prunable.any()) == [8, 8]


class BoxHead(nn.Module):
    """A detector's box branch: 16 distribution bins per side, softmax over the bins, then
    a fixed projection (a YOLO DFL), beside a layer-normalised feature branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.box = nn.Conv2d(8, 16, 1)
        self.proj = nn.Conv2d(16, 1, 1, bias=False)
        self.feat = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.out = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.stem(x))
        bins = torch.softmax(self.box(y), dim=1)
        pooled = y.mean((2, 3))
        return self.proj(bins), self.out(self.norm(self.feat(pooled)))


def test_a_softmax_over_channels_is_left_alone_unless_asked_and_labelled():
    torch.manual_seed(0)
    model, x = randomize(BoxHead().eval()), torch.randn(1, 3, 8, 8)
    cg = AnalysisManager(prunepass.load(model, (x,))).get("channel-groups")
    kinds = {g.size: g.approximate for g in cg.groups if g.prunable.any()}
    assert kinds == {8: [], 16: ["distribution"], 12: ["statistic"]}
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce")
    pruned = {g["channels"]: g for g in res.record.step("remove-channels")["groups"]}
    assert sorted(pruned) == [8, 12]  # the layer-norm hidden size goes; the 16 bins stay
    assert pruned[12]["approximate"] == ["statistic"] and res.model.box.out_channels == 16
    from prunepass.report import format_plan, format_record
    assert "1 where norm statistics span the channels" in format_record(res.record)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,distributions=true>,dce")
    assert res.model.box.out_channels == 8
    assert "softmax is over" in format_record(res.record) and "8*" in format_plan(res.record)


class WSConvNet(nn.Module):
    """A weight-standardised convolution (NF-nets, BiT): its weight is normalised over its
    fan-in inside forward, with batch_norm(weight.reshape(1, out, -1), training=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.ws = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.ws.weight
        w = torch.nn.functional.batch_norm(w.reshape(1, w.shape[0], -1), None, None,
                                           training=True, momentum=0.0, eps=1e-5).reshape_as(w)
        y = torch.relu(self.stem(x))
        y = torch.relu(torch.nn.functional.conv2d(y, w, self.ws.bias, padding=1))
        return self.head(y).mean((2, 3))


def test_a_weight_normalised_over_its_fan_in_makes_those_channels_approximate():
    torch.manual_seed(0)
    model, x = randomize(WSConvNet().eval()), torch.randn(2, 3, 8, 8)
    cg = AnalysisManager(prunepass.load(model, (x,))).get("channel-groups")
    by_size = {g.size: g for g in cg.groups if g.prunable.any()}
    assert by_size[8].approximate == ["statistic"]  # the ws conv's fan-in
    assert any("batch-norm statistics computed from this tensor" in r
               for r in by_size[8].reasons)
    assert by_size[12].approximate == []  # its outputs: removing one equals zeroing it
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,exact-only=true>,dce",
                          check_numerics=True)
    step = res.record.step("remove-channels")
    assert [g["channels"] for g in step["groups"]] == [12]
    assert step["max_rel_error_vs_masked"] <= 1e-5


def test_a_detector_prunes_its_traceable_part_and_takes_it_back():
    """A detector's post-processing is data-dependent (torch.export cannot trace it whole):
    prune the backbone and neck with their own example input and put them back."""
    import torchvision
    torch.manual_seed(0)
    det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None).eval()
    randomize(det)
    image = torch.rand(3, 320, 320)
    x = det.transform([image])[0].tensors  # what the backbone sees: normalised and batched
    res = prunepass.prune(det.backbone, (x,), "prune-channels<ratio=0.3>,dce",
                          check_numerics=True)
    step = res.record.step("remove-channels")
    assert step["max_rel_error_vs_masked"] <= 1e-5 and step["groups_pruned"] >= 20
    assert res.record.cost_after["macs"] < 0.6 * res.record.cost_before["macs"]
    assert type(res.model) is type(det.backbone)  # BackboneWithFPN, narrower inside
    features = res.model(x)
    assert all(f.shape[1] == det.backbone.out_channels for f in features.values())
    det.backbone = res.model
    with torch.no_grad():
        out = det([image])[0]
    assert set(out) == {"boxes", "labels", "scores"} and out["boxes"].shape[1] == 4


class GRNAndShuffle(nn.Module):
    """ConvNeXt-V2's global response norm (written with addcmul), a pixel shuffle
    upsampler, and position arithmetic on integer ids (as Hugging Face masks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.randn(1, 16, 1, 1) * 0.1)
        self.beta = nn.Parameter(torch.randn(1, 16, 1, 1) * 0.1)
        self.up = nn.Conv2d(16, 32, 1)  # 32 = 8 channels x 2 x 2 after pixel_shuffle(2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        gx = torch.norm(y, p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        y = torch.addcmul(self.beta + y, self.gamma, y * nx)
        y = torch.nn.functional.pixel_shuffle(self.up(y), 2)
        positions = torch.cumsum(ids, dim=1) - 1  # mask arithmetic: touches no channel
        return self.head(y).mean((2, 3)) + positions[:, -1:].float()


def test_grn_pixel_shuffle_and_mask_arithmetic_have_rules_not_barriers():
    torch.manual_seed(0)
    model = randomize(GRNAndShuffle().eval())
    inputs = (torch.randn(1, 3, 8, 8), torch.ones(1, 5, dtype=torch.long))
    cg = AnalysisManager(prunepass.load(model, inputs)).get("channel-groups")
    assert cg.barriers == []
    sizes = {g.size: g for g in cg.groups if g.prunable.any()}
    assert set(sizes) == {16, 8}  # pixel_shuffle: up's 32 outputs are 8 classes of 4
    assert sizes[16].approximate == ["statistic"]  # GRN's mean over channels
    res = prunepass.prune(model, inputs, "prune-channels<ratio=0.5,exact-only=true>,dce",
                          check_numerics=True)
    assert res.model.up.out_channels == 16 and res.model.head.in_channels == 4
    assert res.record.step("remove-channels")["max_rel_error_vs_masked"] <= 1e-5


def test_an_onnx_graphsurgeon_graph_goes_in_and_comes_back(tmp_path):
    import numpy as np
    import onnx_graphsurgeon as gs
    import onnxruntime as ort
    import onnx
    path = _onnx_with_input_dims(tmp_path, [1, 3, 16, 16])
    graph = gs.import_onnx(onnx.load(str(path)))
    res = prunepass.prune(graph, None, "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert isinstance(res.model, gs.Graph) and res.record.output["returned"] == "onnx-graphsurgeon"
    convs = [n for n in res.model.nodes if n.op == "Conv"]
    assert [c.inputs[1].shape[0] for c in convs] == [4, 8]  # c1 halved; c2 feeds the output
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(gs.export_onnx(res.model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 8)


class TokenMixer(nn.Module):
    """Conv positions turned into tokens: a token-mixing MLP over H*W (MLP-Mixer), and a
    linear over positions reshaped back to H x W and added to the conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)  # 32 x 32 -> 8 x 8 = 64 positions
        self.tok1, self.tok2 = nn.Linear(64, 32), nn.Linear(32, 64)
        self.ch1, self.ch2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.mix = nn.Linear(64, 64)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.patch(x)
        b, c, h, w = y.shape
        y = y + self.mix(y.reshape(b, c, h * w)).reshape(b, c, h, w)  # positions, not channels
        t = self.conv(y).flatten(2)
        t = t + self.tok2(torch.relu(self.tok1(t)))  # token mixing over positions
        t = t.transpose(1, 2)
        t = t + self.ch2(torch.relu(self.ch1(t)))
        return self.head(t.mean(1))


def test_positions_turned_into_tokens_are_not_a_channel_group():
    torch.manual_seed(0)
    model, x = randomize(TokenMixer().eval()), torch.randn(1, 3, 32, 32)
    cg = AnalysisManager(prunepass.load(model, (x,))).get("channel-groups")
    prunable = sorted((g.size, g.producers[0][0]) for g in cg.groups if g.prunable.any())
    # the tokens' hidden layer (32) is a group; the 64 positions (mix, tok2) are not
    assert prunable == [(16, "conv.weight"), (16, "patch.weight"), (24, "ch1.weight"),
                        (32, "tok1.weight")]
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert res.record.output["returned"] == "own-class"
    assert res.model.tok1.out_features == 16 and res.model.mix.out_features == 64
    with torch.no_grad():
        assert res.model(x).shape == (1, 5)


class Unfolder(nn.Module):
    """MobileViT's unfolding: (B, C, H, W) -> (B*C*nh, ph, nw, pw) -> ... -> back, where the
    batch is symbolic, so the first size is the product s0*C*nh."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(4, 4)  # mixes the pixels of a 2 x 2 patch
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        b, c, h, w = y.shape
        p = y.reshape(b * c * (h // 2), 2, w // 2, 2).transpose(1, 2)
        p = self.mix(p.reshape(b * c * (h // 2), w // 2, 4))
        p = p.reshape(b * c * (h // 2), w // 2, 2, 2).transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.relu(p + y))


def test_a_symbolic_product_with_a_channel_count_is_rewritten():
    torch.manual_seed(0)
    model, x = randomize(Unfolder().eval()), torch.randn(1, 3, 8, 8)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    step = res.record.step("remove-channels")
    assert [g["channels"] for g in step["groups"]] == [8] and step["groups"][0]["kept"] == 4
    assert step["max_rel_error_vs_masked"] <= 1e-5
    graph_module = res.adapter.materialize()  # the batch stays symbolic in the graph
    x3 = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(graph_module(x3), res.model(x3), atol=1e-5)
        assert res.model.stem.out_channels == 4


def test_mixture_of_experts_neurons_are_pruned_in_every_expert():
    transformers = __import__("pytest").importorskip("transformers")
    cfg = transformers.MixtralConfig(vocab_size=100, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (1, 8))
    cg = AnalysisManager(prunepass.load(model, (ids,))).get("channel-groups")
    experts = [g for g in cg.groups if "experts" in g.name]
    # the experts' intermediate neurons: one group, through the grouped matmul (no barrier)
    assert [(g.name, g.size, bool(g.prunable.all())) for g in experts] == \
        [("model.layers.0.mlp.experts.gate_up_proj[1]", 48, True)]
    assert not cg.barriers
    res = prunepass.prune(model, (ids,), "prune-channels<ratio=0.5,ignore=[lm_head*,"
                          "model.embed*]>,dce", check_numerics=True)
    assert res.record.output["returned"] == "own-class", res.record.output
    e = res.model.model.layers[0].mlp.experts
    assert e.gate_up_proj.shape == (4, 48, 32) and e.down_proj.shape == (4, 32, 24)
    assert res.model(torch.randint(0, 100, (2, 5))).logits.shape == (2, 5, 100)


class Recurrent(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.rnn = getattr(nn, mode)(16, 12, num_layers=2, batch_first=True,
                                     bidirectional=True)
        self.out = nn.Linear(24, 4)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.out(y)


def test_recurrent_layers_take_pruned_inputs_and_keep_their_hidden_units():
    for mode in ("LSTM", "GRU"):
        torch.manual_seed(0)
        model, x = Recurrent(mode).eval(), torch.randn(2, 5, 8)
        cg = AnalysisManager(prunepass.load(model, (x,))).get("channel-groups")
        assert [(g.name, g.size, int(g.prunable.sum())) for g in cg.groups] == \
            [("inp.weight[0]", 16, 16), ("out.weight[0]", 4, 0)], mode
        res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>", check_numerics=True)
        assert type(res.model) is Recurrent and res.model.rnn.input_size == 8
        assert res.model.rnn.hidden_size == 12
        assert res.model(torch.randn(3, 7, 8)).shape == (3, 7, 4)


class ChannelsLast(nn.Module):
    """x.permute(0, 2, 3, 1) -> LayerNorm / Linear -> permute back, with a per-channel scale
    and bias broadcast against the permuted tensor and a (C, 1, 1) layer scale after."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.randn(c))
        self.shift = nn.Parameter(torch.randn(1, 1, 1, c))
        self.gamma = nn.Parameter(torch.randn(c, 1, 1))
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(y))))
        y = (y * self.scale + self.shift).permute(0, 3, 1, 2)
        return self.head(x + self.gamma * y)


def test_channels_last_blocks_with_broadcast_scales_prune_and_verify():
    torch.manual_seed(0)
    # 16 channels on an 16x16 map: a broadcast that took spatial axes for channels would
    # find equal sizes and pass unnoticed before pruning
    model, x = ChannelsLast().eval(), torch.randn(2, 3, 16, 16)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>,dce", check_numerics=True)
    assert res.record.output["returned"] == "own-class"
    assert res.model.fc1.out_features == 32 and res.model.conv.out_channels == 8
    assert res.model.scale.shape == (8,) and res.model.gamma.shape == (8, 1, 1)
    assert res.model(torch.randn(1, 3, 24, 24)).shape == (1, 4, 24, 24)
