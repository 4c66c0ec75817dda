"""Transformer units: whole heads and key/value groups (unit=heads), one count per kind of
layer (uniform-layers). Every prune runs with check_numerics: pruned equals zeroed."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunepass
from prunepass.errors import PlanError
from prunepass.pm import AnalysisManager

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(0))
KEEP_EMBEDDINGS = "ignore=[lm_head*,*embed*,*shared*,wte*,wpe*]"


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def llama(layers=2):
    # 8 query heads over 4 key/value heads of 16: every number distinct from the others
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96,
                                   num_hidden_layers=layers, num_attention_heads=8,
                                   num_key_value_heads=4, head_dim=16)
    return _seeded(lambda: transformers.LlamaForCausalLM(cfg))


def bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=96)
    return _seeded(lambda: transformers.BertModel(cfg))


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4,
                                  n_positions=32)
    return _seeded(lambda: transformers.GPT2LMHeadModel(cfg))


def t5():
    cfg = transformers.T5Config(vocab_size=100, d_model=48, d_kv=16, d_ff=96, num_layers=2,
                                num_heads=4)
    return _seeded(lambda: transformers.T5Model(cfg))


def _inputs(name):
    return ((IDS,), {"decoder_input_ids": IDS}) if name == "t5" else (IDS,)


def _prune(model, inputs, opts):
    return prunepass.prune(model, inputs, f"prune-channels<{opts},{KEEP_EMBEDDINGS}>,dce",
                           check_numerics=True)


# (model, parameter of a query projection, of a key projection, head_dim, query heads per
# key/value head)
CASES = {
    "llama": (llama, "model.layers.{}.self_attn.q_proj.weight",
              "model.layers.{}.self_attn.k_proj.weight", 16, 2),
    "bert": (bert, "encoder.layer.{}.attention.self.query.weight",
             "encoder.layer.{}.attention.self.key.weight", 16, 1),
    "t5": (t5, "encoder.block.{}.layer.0.SelfAttention.q.weight",
           "encoder.block.{}.layer.0.SelfAttention.k.weight", 16, 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_heads_go_and_pruned_equals_zeroed(name):
    build, q_name, k_name, head_dim, rep = CASES[name]
    model = build()
    res = _prune(model, _inputs(name), "ratio=0.5,unit=heads")
    assert res.record.output["returned"] == "own-class", res.record.output
    params = dict(res.model.named_parameters())
    before = dict(model.named_parameters())
    for layer in (0, 1):
        q, k = params[q_name.format(layer)], params[k_name.format(layer)]
        heads_q, heads_k = q.shape[0] // head_dim, k.shape[0] // head_dim
        assert q.shape[0] == heads_q * head_dim and k.shape[0] == heads_k * head_dim
        # half the key/value groups go, each with its query heads
        assert heads_k == before[k_name.format(layer)].shape[0] // head_dim // 2
        assert heads_q == rep * heads_k
    # the pruned model is the user's class and runs on other lengths
    longer = torch.randint(0, 100, (2, 7))
    args = ((longer,), {"decoder_input_ids": longer}) if name == "t5" else ((longer,), {})
    out = res.model(*args[0], **args[1])
    assert out[0].shape[:2] == (2, 7)


def test_gqa_groups_are_one_class_each_with_their_query_heads():
    ad = prunepass.load(llama(), (IDS,))
    cg = AnalysisManager(ad).get("channel-groups", unit="heads")
    attn = [g for g in cg.groups if g.producers[0][0].endswith("q_proj.weight")]
    assert len(attn) == 2
    for g in attn:
        assert g.size == 4  # 4 key/value groups of (2 query heads, 1 key, 1 value head)
        assert sorted(p.split(".")[-2] for p, _ in g.producers) == ["k_proj", "q_proj",
                                                                   "v_proj"]
        assert g.exact.all()
    # with channels as the unit, head_dim is what shrinks (rotary ties q and k across layers)
    cg_channels = AnalysisManager(ad).get("channel-groups")
    assert all(g.size != 4 for g in cg_channels.groups)


def test_llama_config_describes_the_model_with_whole_heads_and_uniform_layers(tmp_path):
    model = llama(layers=3)
    res = _prune(model, (IDS,), "ratio=0.4,scope=global,unit=heads,uniform-layers=true")
    layers = res.model.model.layers
    kv = {layer.self_attn.k_proj.out_features for layer in layers}
    mlp = {layer.mlp.up_proj.out_features for layer in layers}
    assert len(kv) == 1 and len(mlp) == 1, (kv, mlp)
    config = res.record.output["config"]
    assert config.get("proved") == "shapes and outputs", config
    heads = res.model.config.num_key_value_heads
    assert heads * 16 == kv.pop() and res.model.config.num_attention_heads == 2 * heads
    assert res.model.config.intermediate_size == mlp.pop() < 96
    res.model.save_pretrained(tmp_path)
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(IDS).logits, res.model(IDS).logits, atol=1e-5)


def test_without_uniform_layers_global_counts_differ():
    res = _prune(llama(layers=3), (IDS,), "ratio=0.4,scope=global,unit=heads")
    mlp = {layer.mlp.up_proj.out_features for layer in res.model.model.layers}
    assert len(mlp) > 1  # the control for the test above: uniform-layers is what evens them


def test_gpt2_fused_qkv_loses_whole_heads():
    res = _prune(gpt2(), (IDS,), "ratio=0.5,unit=heads")
    assert res.record.output["returned"] == "own-class", res.record.output
    attn = res.model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (64, 3 * 32)  # 2 of 4 heads of 16, for q, k and v
    assert attn.split_size == 32


class Headless(nn.Module):
    """Attention on (batch, tokens, dim): no reshape to heads."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v))


def test_heads_unit_on_attention_without_heads_names_the_layer():
    torch.manual_seed(0)
    with pytest.raises(PlanError, match=r"unit=heads.*no heads axis \(its query is \[2, 5, 16\]"):
        prunepass.prune(Headless().eval(), (torch.randn(2, 5, 16),),
                        "prune-channels<ratio=0.5,unit=heads>")


def test_heads_unit_leaves_models_without_attention_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    a = prunepass.prune(model, (x,), "prune-channels<ratio=0.5,unit=heads>")
    b = prunepass.prune(model, (x,), "prune-channels<ratio=0.5>")
    assert a.record.keep == b.record.keep and a.model[0].out_channels == 8


def test_record_of_heads_and_blocks_reapplies_exactly(tmp_path):
    model = llama(layers=3)
    calib = (torch.randint(0, 100, (4, 10), generator=torch.Generator().manual_seed(1)),)
    res = prunepass.prune(model, (IDS,), "remove-blocks<count=1>,prune-channels<ratio=0.5,"
                          f"unit=heads,importance=wanda,{KEEP_EMBEDDINGS}>,dce",
                          calibration=calib)
    res.record.save(tmp_path / "r.json")
    # no calibration now: the record says which blocks and heads went, nothing is chosen again
    again = prunepass.apply_record(llama(layers=3), (IDS,), str(tmp_path / "r.json"))
    assert again.record.step("remove-blocks")["removed"] == \
        res.record.step("remove-blocks")["removed"]
    assert len(again.model.model.layers) == 2
    with torch.no_grad():
        assert torch.allclose(again.model(IDS).logits, res.model(IDS).logits, atol=1e-6)
