"""remove-blocks: depth pruning equals replacing the removed blocks by the identity; block
influence picks the block that changes the residual stream least."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass.errors import PipelineError, PlanError, PrunepassError


class Block(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.scale = scale

    def forward(self, x):
        return x + self.scale * self.fc(self.norm(x))


class Stack(nn.Module):
    def __init__(self, scales=(1.0, 1e-3, 0.5)) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Block(s) for s in scales)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.out(h)


X = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(0))


def test_influence_is_one_minus_cosine_and_the_least_influential_goes():
    torch.manual_seed(0)
    model = Stack().eval()
    res = prunepass.prune(model, (X,), "remove-blocks<count=1>,dce")
    blocks = res.record.step("remove-blocks")["blocks"]
    assert [b["scope"] for b in blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    with torch.no_grad():
        h = model.inp(X)
        for b, got in zip(model.blocks, blocks):
            nxt = b(h)
            want = 1 - torch.nn.functional.cosine_similarity(h, nxt, dim=-1).mean()
            assert got["influence"] == pytest.approx(float(want), abs=1e-5)
            h = nxt
    assert [b["removed"] for b in blocks] == [False, True, False]
    # the user's class comes back with two blocks, equal to the model with an identity
    assert type(res.model) is Stack and len(res.model.blocks) == 2
    ref = copy.deepcopy(model)
    ref.blocks[1] = nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(res.model(X).numpy(), ref(X).numpy(), atol=1e-6)


def test_llama_layers_removed_equal_identity_layers_and_the_config_follows():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96,
                                   num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=12)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (1, 10))
    res = prunepass.prune(model, (ids,), "remove-blocks<ratio=0.5>,dce",
                          calibration=(torch.randint(0, 100, (4, 10)),))
    removed = res.record.step("remove-blocks")["removed"]
    assert len(removed) == 2 and all(s.startswith("model.layers.") for s in removed)
    assert res.record.output["returned"] == "own-class", res.record.output
    assert res.model.config.num_hidden_layers == 2
    assert res.record.output["config"]["proved"] == "shapes and outputs"

    class Identity(nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states
    ref = copy.deepcopy(model)
    for scope in removed:
        ref.model.layers[int(scope.rsplit(".", 1)[1])] = Identity()
    with torch.no_grad():
        assert torch.allclose(res.model(ids).logits, ref(ids).logits, atol=1e-6)
    # consecutive blocks: the second one's input is the first one's
    two = prunepass.prune(model, (ids,), "remove-blocks<scopes=[model.layers.1,"
                          "model.layers.2]>,dce")
    ref = copy.deepcopy(model)
    ref.model.layers[1], ref.model.layers[2] = Identity(), Identity()
    with torch.no_grad():
        assert torch.allclose(two.model(ids).logits, ref(ids).logits, atol=1e-6)
    # the KV cache is indexed by the renumbered layers
    assert [layer.self_attn.layer_idx for layer in res.model.model.layers] == [0, 1]
    assert res.model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 13)


def test_resnet_blocks_with_identity_shortcuts_only():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    res = prunepass.prune(model, (x,), "remove-blocks<count=2>,dce", check_numerics=True)
    blocks = res.record.step("remove-blocks")["blocks"]
    # the first block of layer2..4 changes shape through its downsample: not removable
    assert [b["scope"] for b in blocks] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1",
                                            "layer4.1"]
    assert res.record.output["returned"] == "own-class"
    assert sum(len(getattr(res.model, f"layer{i}")) for i in range(1, 5)) == 6


@pytest.mark.parametrize("pipeline, error, words", [
    ("remove-blocks", PipelineError, "give count, ratio or scopes"),
    ("remove-blocks<scopes=[blocks.7]>", PlanError, r"blocks.7 is not a removable residual "
                                                    r"block of this model \(it has \['blocks.0'"),
    ("remove-blocks<count=4>", PlanError, "4 blocks asked, the model has 3"),
])
def test_bad_requests(pipeline, error, words):
    torch.manual_seed(0)
    with pytest.raises(error, match=words):
        prunepass.prune(Stack().eval(), (X,), pipeline)


def test_onnx_models_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    torch.onnx.export(Stack().eval(), (X,), str(path), dynamo=False)
    with pytest.raises(PrunepassError, match="onnx frontend cannot remove blocks"):
        prunepass.prune(str(path), (X.numpy(),), "remove-blocks<count=1>")


def test_post_norm_bert_layers_go_whole_and_equal_identity_layers():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    res = prunepass.prune(model, (ids,), "remove-blocks<count=1>,dce")
    blocks = res.record.step("remove-blocks")["blocks"]
    # the layer is the unit, not its attention and MLP residuals (post-norm: LN(x + f(x)))
    assert [b["scope"] for b in blocks] == [f"encoder.layer.{i}" for i in range(3)]
    gone = int(res.record.step("remove-blocks")["removed"][0].rsplit(".", 1)[1])
    assert res.record.output["returned"] == "own-class"
    assert len(res.model.encoder.layer) == 2 and res.model.config.num_hidden_layers == 2

    class Identity(nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states
    ref = copy.deepcopy(model)
    ref.encoder.layer[gone] = Identity()
    with torch.no_grad():
        np.testing.assert_allclose(res.model(ids).last_hidden_state.numpy(),
                                   ref(ids).last_hidden_state.numpy(), atol=1e-5)
