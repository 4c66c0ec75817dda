"""The pruned model comes back as the user's own class: real layers of the pruned widths,
updated number attributes, the same outputs as the pruned graph, their inputs (keywords),
their save formats; the graph module with a reason where the class cannot take it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import prunepass
from prunepass.errors import TraceError
from prunepass.testing import randomize

transformers = pytest.importorskip("transformers")


def graph_outputs(res, inputs):
    """The pruned graph module's outputs on ``inputs`` (the route results took before)."""
    gm = res.adapter.materialize()
    with torch.no_grad():
        out = gm(**inputs) if isinstance(inputs, dict) else gm(*inputs)
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def own_outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def assert_same(a, b, tol=1e-5):
    assert len(a) >= len(b) > 0
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert float((x - y).abs().max()) <= tol * max(float(y.abs().max()), 1e-12)


def tiny_llama(**kw):
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, **kw)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


IDS = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))


def test_resnet_comes_back_as_resnet_with_real_layers():
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18().eval(), seed=1)
    x = torch.randn(2, 3, 64, 64)
    res = prunepass.prune(model, (x,))
    pruned = res.model
    assert type(pruned) is torchvision.models.ResNet and pruned is not model
    conv = pruned.layer1[0].conv1
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 32 and conv.in_channels == 32
    assert conv.weight.shape == (32, 32, 3, 3)
    assert pruned.layer1[0].bn1.num_features == 32 and isinstance(pruned.fc, nn.Linear)
    assert pruned.fc.in_features == pruned.fc.weight.shape[1] == 256
    assert res.record.output["returned"] == "own-class"
    assert "layer1.0.conv1.out_channels: 64 -> 32" in res.record.output["updated"]
    assert_same(own_outputs(pruned, (x,)), graph_outputs(res, (x,)))
    # the caller's model is untouched and shares no storage with the result
    assert model.layer1[0].conv1.weight.shape == (64, 64, 3, 3)
    theirs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not theirs & {p.untyped_storage().data_ptr() for p in pruned.parameters()}


def small_timm_vit(fused_attn: bool):  # noqa: ANN201
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                          num_heads=4, num_classes=10).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused_attn
    return randomize(model, seed=3)


def test_timm_vit_number_attributes_follow():
    # timm's unfused attention multiplies by its own self.scale: the class keeps the scale
    model = small_timm_vit(fused_attn=False)
    x = torch.randn(2, 3, 32, 32)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,exact-only=true>,dce")
    pruned = res.model
    assert type(pruned) is type(model), res.record.output
    attn = pruned.blocks[0].attn
    assert attn.head_dim == 8 and attn.num_heads == 4 and attn.attn_dim == 32
    assert attn.qkv.out_features == 96 and attn.proj.in_features == 32
    assert pruned.blocks[0].mlp.fc1.out_features == 128
    assert_same(own_outputs(pruned, (x,)), graph_outputs(res, (x,)))


def test_fused_qkv_attention_keeps_its_scale_in_the_class():
    # fused: scaled_dot_product_attention without scale=, i.e. 1/sqrt(the pruned head dim);
    # the class gets its queries scaled by sqrt(8/16), which gives the original logits
    model = small_timm_vit(fused_attn=True)
    x = torch.randn(2, 3, 32, 32)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,exact-only=true>,dce")
    out = res.record.output
    assert out["returned"] == "own-class", out
    assert "blocks.0.attn.qkv: queries scaled by sqrt(8/16) for the class's own 1/sqrt(head " \
        "dim)" in out["updated"]
    assert_same(own_outputs(res.model, (x,)), graph_outputs(res, (x,)))
    # the graph keeps its own tensors: the scaling went to the class's copies only
    graph_qkv = res.adapter.gm.get_parameter("blocks.0.attn.qkv.weight")
    assert graph_qkv is not res.model.blocks[0].attn.qkv.weight


class SplitHeads(nn.Module):
    """q, k and v from separate layers, attention at the default scale of the head dim."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, 16
        self.q, self.k, self.v = (nn.Linear(32, 32) for _ in range(3))
        self.out = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def test_attention_default_scale_is_named_when_the_class_cannot_keep_it():
    model = randomize(SplitHeads().eval(), seed=5)
    x = torch.randn(2, 5, 32)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,exact-only=true>,dce")
    out = res.record.output
    assert out["returned"] == "graph-module"
    assert "keeps attention's original scale" in out["reason"] and "1/sqrt(16)" in out["reason"]
    with torch.no_grad():
        np.testing.assert_allclose(res.model(x).numpy(), graph_outputs(res, (x,))[0].numpy())


def test_bert_keyword_inputs():
    model = tiny_bert()
    inputs = {"input_ids": IDS.repeat(2, 1),
              "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    res = prunepass.prune(model, inputs)
    pruned = res.model
    assert type(pruned) is transformers.BertModel, res.record.output
    hidden = pruned.embeddings.word_embeddings.embedding_dim
    att = pruned.encoder.layer[0].attention.self
    assert att.query.out_features == 32 and att.attention_head_size == 8
    assert pruned.encoder.layer[0].intermediate.dense.out_features == 64
    assert_same(own_outputs(pruned, inputs), graph_outputs(res, inputs))
    # other batch and sequence lengths run: the class computes its shapes itself
    with torch.no_grad():
        out = pruned(input_ids=torch.randint(0, 100, (3, 5))).last_hidden_state
    assert out.shape == (3, 5, hidden)


def test_llama_default_config_traces_and_generates():
    model = tiny_llama()
    assert model.config.use_cache  # the default: its output holds a DynamicCache
    res = prunepass.prune(model, {"input_ids": IDS})
    pruned = res.model
    out = res.record.output
    assert type(pruned) is transformers.LlamaForCausalLM, out
    assert any("use_cache" in n for n in out["notes"])
    assert pruned.config.use_cache and model.config.use_cache
    attn = pruned.model.layers[0].self_attn
    assert attn.head_dim == 8 and attn.k_proj.out_features == 16  # 2 key/value heads x 8
    assert attn.q_proj.out_features == 32  # grouped-query attention: 4 query heads x 8
    assert_same(own_outputs(pruned, {"input_ids": IDS}), graph_outputs(res, {"input_ids": IDS}))
    gen = pruned.generate(IDS, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 12)
    # its KV cache works: greedy decoding with and without it agrees
    again = pruned.generate(IDS, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(gen, again)


def test_save_pretrained_round_trip_where_the_config_can_say_it(tmp_path):
    model = tiny_llama()
    res = prunepass.prune(model, {"input_ids": IDS},
                          "prune-channels<ratio=0.5,ignore=[*self_attn*]>,dce")
    assert res.record.output["config"] == {"updated": {"intermediate_size": [128, 64]},
                                           "proved": "shapes and outputs"}
    res.model.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.intermediate_size == 64 and model.config.intermediate_size == 128
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, res.model(IDS).logits)


def test_config_left_alone_where_it_cannot_describe_the_model():
    # a pruned head dim: a fresh model would recompute rotary frequencies and the scale
    res = prunepass.prune(tiny_llama(), {"input_ids": IDS},
                          "prune-channels<ratio=0.5,exact-only=true>,dce")
    cfg = res.record.output["config"]
    assert "not_updated" in cfg and "record route" in cfg["not_updated"]
    assert res.model.config.head_dim == 16 and res.model.config.intermediate_size == 128


HEAD_DIM = 16  # a module-level number: no attribute of the model holds it


class GlobalHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 3 * 2 * HEAD_DIM)
        self.out = nn.Linear(2 * HEAD_DIM, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, 2 * HEAD_DIM))


def test_missing_number_attribute_falls_back_to_graph_module():
    model = GlobalHeads().eval()
    x = torch.randn(2, 5, 32)
    res = prunepass.prune(model, (x,))
    out = res.record.output
    assert out["returned"] == "graph-module" and isinstance(res.model, torch.fx.GraphModule)
    assert "GlobalHeads.forward() fails on the pruned sizes" in out["reason"]
    assert "no number attribute held" in out["reason"] and "16 -> 8" in out["reason"]
    assert res.model.get_parameter("qkv.weight").shape == (48, 32)
    with torch.no_grad():
        assert res.model(x).shape == (2, 5, 32)
    assert model.qkv.weight.shape == (96, 32)  # the input model is unchanged
    from prunepass.report import format_record
    assert "graph module" in format_record(res.record)


def test_in_place_prunes_the_callers_model():
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18().eval(), seed=1)
    x = torch.randn(2, 3, 64, 64)
    expected = prunepass.prune(model, (x,)).model
    res = prunepass.prune(model, (x,), in_place=True)
    assert res.model is model and model.layer1[0].conv1.out_channels == 32
    assert model.layer1[0].conv1.weight.shape == (32, 32, 3, 3)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))


def test_reload_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = randomize(torchvision.models.mobilenet_v3_small().eval(), seed=4)
    x = torch.randn(2, 3, 64, 64)
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.4>,dce")
    res.record.save(tmp_path / "record.json")
    torch.save(res.model.state_dict(), tmp_path / "pruned.pt")
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", res.model(x).numpy())
    script = textwrap.dedent(f"""
        import json, numpy as np, torch, torchvision, prunepass
        model = torchvision.models.mobilenet_v3_small().eval()
        model.load_state_dict(torch.load({str(tmp_path / 'dense.pt')!r}))
        x = torch.load({str(tmp_path / 'x.pt')!r})
        res = prunepass.apply_record(model, (x,), {str(tmp_path / 'record.json')!r})
        res.model.load_state_dict(torch.load({str(tmp_path / 'pruned.pt')!r}))
        with torch.no_grad():
            out = res.model(x).numpy()
        expected = np.load({str(tmp_path / 'expected.npy')!r})
        print(json.dumps({{"cls": type(res.model).__name__,
                          "err": float(np.abs(out - expected).max())}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cls"] == "MobileNetV3" and got["err"] <= 1e-5


def test_exported_program_and_its_module_are_accepted():
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18().eval(), seed=1)
    x = torch.randn(2, 3, 64, 64)
    want = prunepass.prune(model, (x,)).model
    ep = torch.export.export(model, (x,))
    for given, inputs in ((ep, None), (ep.module(), (x,))):
        res = prunepass.prune(given, inputs)
        assert res.record.output["returned"] == "graph-module"
        assert "no class of its own" in res.record.output["reason"]
        with torch.no_grad():
            assert torch.allclose(res.model(x), want(x), rtol=1e-5, atol=1e-6)
    assert model.layer1[0].conv1.weight.shape == (64, 64, 3, 3)


class Anchors(nn.Module):
    """A detection head that reads its strides out of a buffer with .item()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)
        self.register_buffer("stride", torch.tensor([8.0, 16.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(torch.relu(self.conv(x)))
        return y * torch.full((1, 4, 1, 1), self.stride[1])


def test_scalar_read_from_a_constant_tensor_is_a_constant():
    model = Anchors().eval()
    x = torch.randn(2, 3, 16, 16)
    res = prunepass.prune(model, (x,))
    assert any("16.0" in n for n in res.record.output["notes"])
    assert res.model.conv.out_channels == 4
    assert_same(own_outputs(res.model, (x,)), graph_outputs(res, (x,)))


@pytest.mark.parametrize("inputs, words", [
    ({"input": IDS}, ["keyword 'input'", "does not take", "input_ids"]),
    ({1: IDS}, ["key 1", "not a parameter name"]),
    (((IDS,), {"input_ids": IDS}), ["do not match", "multiple values"]),
])
def test_inputs_that_do_not_fit_forward(inputs, words):
    with pytest.raises(TraceError) as e:
        prunepass.prune(tiny_bert(), inputs)
    for w in words:
        assert w in str(e.value)


def test_args_and_kwargs_pair():
    model = tiny_bert()
    mask = torch.ones(2, 8, dtype=torch.long)
    ids = IDS.repeat(2, 1)
    res = prunepass.prune(model, ((ids,), {"attention_mask": mask}))
    assert type(res.model) is transformers.BertModel
    assert_same(own_outputs(res.model, {"input_ids": ids, "attention_mask": mask}),
                graph_outputs(res, {"input_ids": ids, "attention_mask": mask}))


class UnknownOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        return {"y": self.l(x), "cache": object()}


def test_refusal_names_the_output_type():
    with pytest.raises(TraceError, match="output of UnknownOutput.forward.. holds <class "
                                         "'object'>") as e:
        prunepass.prune(UnknownOutput(), (torch.randn(2, 4),))
    assert "control flow" not in str(e.value)


def test_head_dims_of_one_attention_module_keep_one_count():
    # q/k head dims (paired by rotary embeddings) and v's are separate groups: at 0.3 they
    # would keep 12 and 11 channels, which no single head_dim can describe
    model = tiny_llama()
    pipe = "prune-channels<ratio=0.3,exact-only=true>,dce"
    res = prunepass.prune(model, {"input_ids": IDS}, pipe)
    attn = res.model.model.layers[1].self_attn
    assert res.record.output["returned"] == "own-class", res.record.output
    assert attn.head_dim == 10 and attn.k_proj.out_features == attn.v_proj.out_features == 20
    assert any(g.get("tied_to") for g in res.record.groups)
    assert_same(own_outputs(res.model, {"input_ids": IDS}),
                graph_outputs(res, {"input_ids": IDS}))
    untied = prunepass.prune(model, {"input_ids": IDS},
                             pipe.replace("exact-only=true", "exact-only=true,tie-sizes=false"))
    out = untied.record.output
    assert out["returned"] == "graph-module"
    assert "self_attn: 16 -> 11" in out["reason"]


def test_bfloat16_model_comes_back_as_its_class():
    model = tiny_llama().to(torch.bfloat16)
    res = prunepass.prune(model, {"input_ids": IDS})
    assert res.record.output["returned"] == "own-class", res.record.output
    assert res.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert res.record.output["max_rel_error_vs_graph"] == 0.0


class FrozenWidth(nn.Module):
    """Its width is a read-only property: the attribute cannot follow the pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)

    @property
    def hidden(self) -> int:
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)).view(x.shape[0], self.hidden))


class ReadOnlyLinear(nn.Linear):
    def __setattr__(self, name: str, value) -> None:  # noqa: ANN001
        if name == "out_features" and hasattr(self, "out_features"):
            raise AttributeError("out_features is fixed")
        super().__setattr__(name, value)


def test_attributes_that_cannot_follow_fall_back_with_the_reason():
    model = FrozenWidth().eval()
    x = torch.randn(3, 8)
    res = prunepass.prune(model, (x,))
    assert res.record.output["returned"] == "graph-module"
    assert "16 -> 8" in res.record.output["reason"]
    model2 = nn.Sequential(ReadOnlyLinear(8, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    res2 = prunepass.prune(model2, (x,))
    out = res2.record.output
    assert out["returned"] == "graph-module"
    assert "0.out_features cannot be set to 8" in out["reason"]
    with torch.no_grad():  # the graph module is the pruned model all the same
        assert res2.model(x).shape == (3, 8)
    assert model2[0].out_features == 16 and model2[0].weight.shape == (16, 8)


def test_multihead_attention_keeps_its_scale_in_the_class():
    # nn.MultiheadAttention scales by 1/sqrt(embed_dim // num_heads) of its own sizes
    model = randomize(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
        mlp_dim=128).eval(), seed=2)
    x = torch.randn(2, 3, 32, 32)
    res = prunepass.prune(model, (x,))
    out = res.record.output
    assert type(res.model) is torchvision.models.VisionTransformer, out
    mha = res.model.encoder.layers[0].self_attention
    assert mha.head_dim == 8 and mha.embed_dim == 32
    assert any("self_attention: queries scaled by sqrt(8/16)" in u for u in out["updated"])
    assert_same(own_outputs(res.model, (x,)), graph_outputs(res, (x,)))
