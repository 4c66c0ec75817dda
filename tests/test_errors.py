"""Bad input gets a prunepass error that names the problem; the CLI prints one line."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass import TraceError
from prunepass.cli import main


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value
            return self.fc(x)
        return x


def test_untraceable_model_names_the_model_and_the_fix():
    with pytest.raises(TraceError) as e:
        prunepass.prune(DataDependent(), (torch.randn(2, 4),))
    assert "DataDependent" in str(e.value) and "control flow" in str(e.value)


def test_wrong_example_inputs():
    with pytest.raises(TraceError, match="example_inputs"):
        prunepass.prune(nn.Linear(4, 4), (torch.randn(2, 5),))
    with pytest.raises(TraceError, match="needs example_inputs"):
        prunepass.prune(nn.Linear(4, 4))
    with pytest.raises(TraceError, match="torch.nn.Module"):
        prunepass.prune("not a model", (torch.randn(1),))


@pytest.mark.parametrize("argv, words", [
    (["run", "torchvision:resnet18", "-p", "prune-channels<ratio=1.5>"], ["ratio", "[0.0, 1.0)"]),
    (["run", "torchvision:resnet18", "-p", "fold-bm"], ["unknown pass 'fold-bm'", "fold-bn"]),
    (["run", "torchvision:resnet81"], ["no classifier 'resnet81'", "resnet18"]),
    (["run", "nosuchpackage:make"], ["cannot import 'nosuchpackage'"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,x"], ["input shape"]),
    (["report", "/nonexistent/r.json"], ["does not exist"]),
    (["run", ":make"], ["both parts named"]),
    (["run", "badsyntax:make"], ["badsyntax.py:1: syntax error"]),
    (["run", "badfactories:raises"], ["raises() raised RuntimeError: no weights here"]),
    (["run", "badfactories:needs_args"], ["callable without arguments"]),
    (["run", "badfactories:not_callable"], ["not a function"]),
    (["run", "badimport:make"], ["importing 'badimport' raised ValueError: at import"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p",
      "prune-channels<seed=-1>"], ["seed", "must be >= 0"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p", "apply-record"],
     ["needs path=FILE"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p",
      "apply-record<path=/>"], ["is a folder"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p",
      "prune-channels<group-ratios=[conv1.weight:0.3,layer1.0.conv2.weight:0.5]>"],
     ["already has a ratio"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p",
      "prune-channels<group-ratios=[fc.weight:0.3]>"], ["cannot be pruned"]),
    (["run", "torchvision:resnet18", "-p", "nm-sparsity<n=3,m=2>"], ["need n <= m"]),
    (["run", "torchvision:resnet18", "--input-shape", "1,3,32,32", "-p",
      "sparsity<n=3,m=2>"], ["need n <= m"]),
    (["run", "torchvision:resnet18", "--input-shape", "100000,3,2240,2240"],
     ["GiB as float32", "more than half"]),
    (["run", "torchvision:resnet18", "-p", "prune-channels<ratio=0.5,target-macs=0.5x>"],
     ["ratio and target-macs", "give one"]),
    (["run", "torchvision:resnet18", "-p", "prune-channels<target-macs=1e6,target-energy=2>"],
     ["give one of target-macs"]),
])
def test_cli_errors_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    # model factories of the user's that fail in each way, importable from the folder
    (tmp_path / "badfactories.py").write_text(
        "def raises():\n    raise RuntimeError('no weights here')\n"
        "def needs_args(width):\n    return None\n"
        "not_callable = 3\n")
    (tmp_path / "badsyntax.py").write_text("def make(:\n")
    (tmp_path / "badimport.py").write_text("raise ValueError('at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(argv + (["-q"] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunepass: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err, (w, err)


def test_search_population_must_hold_two(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "torchvision:resnet18", "--population", "1"])
    assert e.value.code == 2
    assert "must be at least 2, got 1" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy ONNX exporter
def test_onnx_opset_beyond_onnxruntime_is_refused(tmp_path):
    import onnx
    src = tmp_path / "m.onnx"
    torch.onnx.export(nn.Linear(4, 4), (torch.randn(1, 4),), str(src), dynamo=False)
    model = onnx.load(str(src))
    model.opset_import[0].version = 99
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(TraceError, match="declares ONNX opset 99; .* handle opsets 7 to"):
        prunepass.prune(str(tmp_path / "future.onnx"))


def _fingerprint(model):  # noqa: ANN001, ANN202
    import hashlib
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest(), [m.training for m in model.modules()]


def test_public_entry_points_leave_the_callers_model_as_it_was(tmp_path):
    import torchvision
    from prunepass.backends.tvm import compile_model
    model = torchvision.models.resnet18(num_classes=4)
    model.train()
    model.layer1.eval()  # a frozen block inside a model in training mode
    x = torch.randn(2, 3, 32, 32)
    before = _fingerprint(model)
    adapter = prunepass.load(model, (x,))
    prunepass.PassManager("fold-bn,prune-channels<ratio=0.5>,dce").run(adapter)
    assert _fingerprint(model) == before, "load + PassManager"
    res = prunepass.prune(model, (x,), "prune-channels<ratio=0.3>,dce")
    assert _fingerprint(model) == before, "prune"
    prunepass.apply_record(model, (x,), res.record)
    assert _fingerprint(model) == before, "apply_record"
    prunepass.search(model, (x,), evaluate=lambda m: 0.5, n_trials=2, population_size=2,
                     progress=False)
    assert _fingerprint(model) == before, "search"
    compile_model(model, (x,), "x86", tmp_path / "tvm", trials=0, progress=False)
    assert _fingerprint(model) == before, "compile"


def test_measuring_leaves_the_callers_model_as_it_was():
    import torchvision
    from prunepass.backends.measure.measure import measure, runner
    model = torchvision.models.resnet18()
    model.train()
    model.bn1.eval()  # frozen batch norm inside a model in training mode
    x = torch.randn(1, 3, 32, 32)
    before = _fingerprint(model)
    for backend in ("torch", "ort"):
        runner(backend, model, (x,))()
        assert _fingerprint(model) == before, backend
    measure("torch", model, (x,), repeats=2, number=1, warmup=1)
    assert _fingerprint(model) == before
    res = prunepass.prune(model, (x,))
    assert _fingerprint(model) == before and res.model.training
