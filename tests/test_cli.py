"""The prunepass command end to end."""
from __future__ import annotations

import json

import pytest
import torch

import prunepass
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


def test_calibrate_fits_a_profile_that_predicts_what_it_printed(tmp_path, capsys):
    from prunepass.hardware import load_profile
    from prunepass.passes.analysis.cost import compute_cost
    from prunepass.passes.analysis.energy import compute_energy
    out = tmp_path / "fit.yaml"
    argv = ["calibrate", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--backend",
            "ort", "--ratios", "0.3,0.5", "--threads", "1", "--rounds", "2", "--repeats", "2",
            "-o", str(out), "--force"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {" ".join(line.split()[:-3]): [float(v.rstrip("%")) for v in line.split()[-3:]]
            for line in lines[1:4]}
    assert list(rows) == ["torchvision:resnet18 dense", "torchvision:resnet18 ratio 0.3",
                          "torchvision:resnet18 ratio 0.5"]
    assert all(m > 0 for m, _, _ in rows.values())
    assert "3 runs for 10 coefficients" in lines[-1]
    fitted = load_profile(out)
    assert "calibrated on ort, 1 threads" in fitted.provenance
    assert fitted.extra["latency_model"]["channel_block"] in (1, 4, 8, 16)
    # the energy analysis, given the fitted profile, predicts what the fit printed
    from prunepass.zoo import load_model
    model, inputs = load_model("torchvision:resnet18", "1,3,32,32")
    for variant, pipeline in (("dense", "dce"), ("ratio 0.5", "prune-channels<ratio=0.5>,dce")):
        g = prunepass.prune(model, inputs, pipeline, progress=False).adapter.graph
        predicted_ms = compute_energy(g, compute_cost(g), fitted).totals["latency_s"] * 1e3
        assert predicted_ms == pytest.approx(rows[f"torchvision:resnet18 {variant}"][1],
                                             abs=6e-4)


def test_run_reads_a_pt2_archive_and_writes_onnx(tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    src = tmp_path / "dense.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(src))
    out, rep = tmp_path / "slim.onnx", tmp_path / "r.json"
    assert main(["run", str(src), "-q", "-o", str(out), "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "returned: the pruned graph module, because an ExportedProgram" in text
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    # the same plan as pruning the module itself, which comes back as ResNet
    res = prunepass.prune(model, (x,))
    assert type(res.model) is torchvision.models.ResNet
    with torch.no_grad():
        np.testing.assert_allclose(got, res.model(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option, target, words", [
    ("-o", "{tmp}/m.txt", ["ending in .onnx"]),
    ("-o", "{tmp}", ["is a folder"]),
    ("-o", "{tmp}/afile/m.pt2", ["is a file, not a folder"]),
    ("--report", "{tmp}/model.onnx", ["is the input"]),
    ("--report", "{tmp}/sub/../model.onnx", ["is the input"]),
    ("-o", "{tmp}/hard.onnx", ["is the input"]),
    ("--dump-ir", "{tmp}/afile", ["is a file, not a folder"]),
    ("--plot", "{tmp}/link.onnx", ["is the input"]),
])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy ONNX exporter
def test_bad_outputs_are_refused_before_any_work(tmp_path, capsys, option, target, words):
    import os
    import torchvision
    src = tmp_path / "model.onnx"
    torch.onnx.export(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 32, 32),),
                      str(src), dynamo=False)
    before = src.read_bytes()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "sub").mkdir()
    os.link(src, tmp_path / "hard.onnx")
    os.symlink(src, tmp_path / "link.onnx")
    argv = ["run", str(src), "-q", option, target.format(tmp=tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing traced, pruned or printed
    for w in words:
        assert w in captured.err
    assert src.read_bytes() == before


def test_missing_output_folders_are_created(tmp_path, capsys):
    out, rep = tmp_path / "a" / "b" / "m.pt2", tmp_path / "c" / "r.json"
    assert main(["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-q",
                 "-o", str(out), "--report", str(rep)]) == 0
    assert out.is_file() and rep.is_file()
    assert main(["run", "torchvision:resnet18", "-q", "-o", str(out), "--report",
                 str(out)]) == 2
    assert "name the same file" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    import prunepass.cli as cli

    def broken(args):  # noqa: ANN001, ANN202
        raise KeyError("boom")
    monkeypatch.setattr(cli, "cmd_passes", broken)
    assert main(["passes"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError)" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["passes", "--debug"])


@pytest.mark.parametrize("pipeline, words", [
    ("prune-channels<ratio=0.5,ratio=0.1>", ["'ratio' is given twice"]),
    ("prune-channels<ignore=[fc,[conv1]]>", ["lists do not nest"]),
])
def test_pipeline_mistakes_are_errors(pipeline, words):
    with pytest.raises(prunepass.PipelineError) as e:
        prunepass.parse_pipeline(pipeline)
    for w in words:
        assert w in str(e.value)


def test_compile_names_its_rpc_tracker(capsys):
    assert main(["compile", "torchvision:resnet18", "--rpc-tracker", "127.0.0.1:9"]) == 2
    assert "--rpc-tracker and --rpc-key go together" in capsys.readouterr().err
    assert main(["compile", "torchvision:resnet18", "--rpc-tracker", "nohost", "--rpc-key",
                 "k"]) == 2
    assert "is not host:port" in capsys.readouterr().err


def test_version_help_defaults_and_a_closed_pipe(capsys):
    import subprocess
    import sys
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("prunepass 0.")
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "(default: out/tvm)" in " ".join(capsys.readouterr().out.split())
    # `prunepass passes | head -1`: the reader closes the pipe early, no traceback
    proc = subprocess.run(f"{sys.executable} -m prunepass.cli passes | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("analysis passes") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""


def test_progress_bars_only_where_someone_watches(monkeypatch, capfd):
    from prunepass.progress import bar, shown
    monkeypatch.delenv("PRUNEPASS_PROGRESS", raising=False)
    assert not shown()  # pytest's stderr is no terminal
    list(bar(range(3), desc="quiet"))
    assert "quiet" not in capfd.readouterr().err
    monkeypatch.setenv("PRUNEPASS_PROGRESS", "1")
    list(bar(range(3), desc="forced"))
    assert "forced" in capfd.readouterr().err
    list(bar(range(3), desc="off", enabled=False))
    assert "off" not in capfd.readouterr().err


def test_json_on_stdout(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-q", "--json",
                 "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout holds the JSON document alone
    assert data["written"] == {"report": str(tmp_path / "r.json"), "model": str(out)}
    assert data["cost_after"]["macs"] < data["cost_before"]["macs"]
    assert data["output"]["returned"] == "own-class" and "MACs" in captured.err
    assert main(["report", str(tmp_path / "r.json"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["keep"] == data["keep"]


def test_compile_refuses_bad_tuning_and_target_options_before_any_work(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "torchvision:resnet18", "--tune-minutes", "0"])
    assert "--tune-minutes: must be positive, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compile", "torchvision:resnet18", "--layout", "nhcw"])
    assert "invalid choice: 'nhcw'" in capsys.readouterr().err
    assert main(["compile", "torchvision:resnet18", "--library", "openblas",
                 "--library-ops", "dense,conv3d"]) == 2
    assert "library_ops conv3d unknown: use some of dense, matmul, conv2d" in \
        capsys.readouterr().err
    assert main(["compile", "torchvision:resnet18", "--target", "aarch64", "--library",
                 "openblas"]) == 2
    assert "target 'aarch64' cannot take library='openblas'" in capsys.readouterr().err
