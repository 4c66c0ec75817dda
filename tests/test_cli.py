"""The prunepass command end to end."""
from __future__ import annotations

import json

import pytest
import torch

from prunepass.cli import main


def test_run_writes_model_and_record_and_prints_the_table(tmp_path, capsys):
    out, rep = tmp_path / "m.pt2", tmp_path / "r.json"
    argv = ["run", "torchvision:resnet18", "--input-shape", "1,3,64,64", "-q",
            "-p", "fold-bn,prune-channels<ratio=0.5,round-to=8>,dce", "-o", str(out),
            "--report", str(rep)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "params" in text and "groups pruned 12/13" in text
    assert "barriers: none" in text
    rec = json.loads(rep.read_text())
    assert rec["cost_after"]["macs"] < 0.3 * rec["cost_before"]["macs"]
    kept = rec["keep"]["layer1.0.conv1.weight"]["0"]
    assert len(kept) == 32 and len(kept) % 8 == 0
    pruned = torch.export.load(str(out)).module()
    assert pruned(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    # the record re-applies from the command line and gives the same shapes
    out2 = tmp_path / "m2.pt2"
    assert main(["run", "torchvision:resnet18", "--input-shape", "1,3,64,64", "-q",
                 "--record", str(rep), "-o", str(out2)]) == 0
    a = {k: v.shape for k, v in torch.export.load(str(out)).state_dict.items()}
    b = {k: v.shape for k, v in torch.export.load(str(out2)).state_dict.items()}
    assert a == b
    assert main(["report", str(rep)]) == 0
    assert "layer4.0.conv2.weight" in capsys.readouterr().out


def test_groups_lists_groups_and_barriers(capsys):
    assert main(["groups", "torchvision:shufflenet_v2_x0_5", "--input-shape", "1,3,64,64"]) == 0
    text = capsys.readouterr().out
    assert "channel groups in torchvision:shufflenet_v2_x0_5" in text
    assert "stage2.0.branch1.2.weight[0]" in text


def test_run_a_module_factory(capsys):
    assert main(["run", "tests.rule_models:Residual", "--input-shape", "2,3,8,8", "-q",
                 "-p", "prune-channels<ratio=0.5>"]) == 0
    assert "groups pruned 1/2" in capsys.readouterr().out
    assert main(["run", "tests.rule_models:Residual", "-q"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_bench_alternates_dense_and_pruned_on_each_backend(capsys):
    argv = ["bench", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--backends",
            "torch,ort", "-p", "prune-channels<ratio=0.5>,dce", "--rounds", "2",
            "--repeats", "2", "--threads", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 alternating rounds x 2 samples" in lines[0]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    for backend in ("torch", "ort"):
        dense, pruned = float(rows[backend, "dense"][0]), float(rows[backend, "pruned"][0])
        assert dense > 0 and pruned > 0
        ratio = float(rows[backend, "speedup"][0].rstrip("x"))
        assert ratio == pytest.approx(dense / pruned, rel=0.5)  # median of per-round ratios
