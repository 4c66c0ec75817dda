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
])
def test_cli_errors_are_one_line(argv, words, capsys):
    assert main(argv + (["-q"] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunepass: error: ") and err.count("\n") == 1
    for w in words:
        assert w in err, (w, err)


def _fingerprint(model):  # noqa: ANN001, ANN202
    import hashlib
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest(), [m.training for m in model.modules()]


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
