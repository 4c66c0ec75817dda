"""Pipelines as text and as Python, analysis caching and invalidation, option checking."""
from __future__ import annotations

import pytest
import torch

import prunepass
from prunepass import PassManager, PipelineError
from prunepass.frontends.torch import TorchModel
from prunepass.pm import AnalysisManager, REGISTRY, lookup
from prunepass.passes.transform.dce import DeadCodeElimination
from prunepass.passes.transform.fold_bn import FoldBatchNorm
from prunepass.passes.pipelines.prune_channels import PruneChannels
from tests.rule_models import ConvBnRelu


def test_text_pipeline_equals_python_pipeline():
    text = "fold-bn,channel-groups,prune-channels<ratio=0.5,importance=l1,ignore=[c2,fc*]>,dce"
    built = PassManager([FoldBatchNorm(), lookup("channel-groups")(),
                         PruneChannels(ratio=0.5, importance="l1", ignore=["c2", "fc*"]),
                         DeadCodeElimination()])
    assert PassManager(text) == built
    assert PassManager(built.pipeline) == built  # printing round-trips
    # named pipelines expand; the pipeline run spells out every option, defaults included
    assert built.pipeline == (
        "fold-bn,channel-groups<unit=channels>,"
        "score-channels<importance=l1,seed=0,energy-aware=false,profile=x86-epyc,"
        "unit=channels>,"
        "limit-channels<ignore=[c2,fc*],exact-only=false,round-to=1,min-channels=1,"
        "max-ratio=0.9,tie-sizes=true,distributions=false,uniform-layers=false>,"
        "select-channels<ratio=0.5,scope=local,group-ratios=[]>,remove-channels,dce")
    assert built.given == "fold-bn,channel-groups,prune-channels<importance=l1,ignore=[c2,fc*]>,dce"


@pytest.mark.parametrize("text, words", [
    ("prune-chanels", ["unknown pass 'prune-chanels'", "prune-channels"]),
    ("prune-channels<ratio=abc>", ["option 'ratio'", "expects float", "'abc'"]),
    ("prune-channels<ratio=1.0>", ["option 'ratio'", "[0.0, 1.0)"]),
    ("prune-channels<ratio=-0.1>", ["option 'ratio'", "[0.0, 1.0)"]),
    ("prune-channels<rate=0.5>", ["no option 'rate'", "ratio"]),
    ("prune-channels<ratio=0.5", ["syntax error", "'<'"]),
    ("prune-channels<ratio>", ["syntax error", "key=value"]),
    ("fold-bn,,dce", ["syntax error", "empty pass name"]),
    ("prune-channels<importance=magic>", ["importance", "l1", "taylor"]),
    ("prune-channels<round-to=0>", ["round-to", ">= 1"]),
    ("", ["empty pipeline"]),
])
def test_bad_pipelines_say_what_is_wrong(text, words):
    with pytest.raises(PipelineError) as e:
        PassManager(text)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_python_options_are_checked_too():
    with pytest.raises(PipelineError, match="expects int"):
        PruneChannels(round_to="eight")
    with pytest.raises(PipelineError, match=r"\[0.0, 1.0\)"):
        prunepass.prune(ConvBnRelu(), (torch.randn(1, 3, 8, 8),), "prune-channels<ratio=2>")


def test_analyses_are_cached_and_invalidated():
    a = TorchModel.from_module(ConvBnRelu().eval(), (torch.randn(1, 3, 8, 8),))
    am = AnalysisManager(a)
    PassManager("dce").run(a, am)  # drops the unused num_batches_tracked reads
    cg = am.get("channel-groups")
    assert am.get("channel-groups") is cg
    assert am.computed.count("channel-groups") == 1
    assert PassManager("dce").run(a, am).passes[0]["changes"]["removed_nodes"] == 0
    assert am.get("channel-groups") is cg  # nothing was dead: everything preserved
    PassManager("prune-channels<ratio=0.5>").run(a, am)  # changes shapes: invalidated
    assert am.get("channel-groups") is not cg
    assert am.computed.count("channel-groups") == 2


def test_every_pass_is_listed_with_options(capsys):
    from prunepass.cli import main
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name, cls in REGISTRY.items():
        assert name in out
        for o in cls.options:
            assert f"{o.name}=" in out


def test_record_has_timings_and_verification():
    rec = prunepass.prune(ConvBnRelu().eval(), (torch.randn(1, 3, 8, 8),),
                          "fold-bn,prune-channels<ratio=0.5>,dce").record
    assert [p["pass"] for p in rec.passes] == ["fold-bn", "score-channels", "limit-channels",
                                               "select-channels", "remove-channels", "dce"]
    assert rec.given == "fold-bn,prune-channels<ratio=0.5>,dce"
    assert all(p["seconds"] >= 0 for p in rec.passes)
    assert [p["pass"] for p in rec.passes if p.get("verified")] == [
        "fold-bn", "remove-channels", "dce"]  # plan passes leave the IR as it was
    assert rec.passes[0]["changes"]["folded"] and rec.cost_after["macs"] < rec.cost_before["macs"]
