"""Each importance criterion against a value worked out by hand (or, for the Hessian, by
torch autograd one sample at a time) on a two-layer model: fc1 makes 3 channels, fc2 reads
them."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import prunepass
from prunepass.errors import TraceError
from prunepass.pm import AnalysisManager


class TwoLayers(nn.Module):
    def __init__(self, relu: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)
        self.relu = relu

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.relu(h) if self.relu else h)


X = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [2.0, 0.0, 1.0, -1.0]])


def scores(model, criterion, calibration=None, loss_fn=None):
    ad = prunepass.load(model, (X[:1],))
    am = AnalysisManager(ad, calibration=calibration, loss_fn=loss_fn)
    s = am.get("importance", criterion=criterion)
    cls = am.get("channel-groups").classes_of(ad.graph.state["fc1.weight"].name, 0)
    return s[cls]


def seeded(relu=True):
    torch.manual_seed(0)
    return TwoLayers(relu).eval()


def hidden(model):
    with torch.no_grad():
        return torch.relu(model.fc1(X)).double().numpy()


def test_activation_is_mean_abs_of_the_channel():
    m = seeded()
    np.testing.assert_allclose(scores(m, "activation", (X,)), np.abs(hidden(m)).mean(0),
                               rtol=1e-6)


def test_wanda_is_activation_norm_times_column_weight():
    m = seeded()
    h = hidden(m)
    w = m.fc2.weight.detach().double().numpy()
    want = np.sqrt((h * h).sum(0)) * np.abs(w).sum(0)
    np.testing.assert_allclose(scores(m, "wanda", (X,)), want, rtol=1e-6)


def test_flap_is_variance_times_squared_column_norm():
    m = seeded()
    h = hidden(m)
    w = m.fc2.weight.detach().double().numpy()
    want = h.var(0) * (w * w).sum(0)
    np.testing.assert_allclose(scores(m, "flap", (X,)), want, rtol=1e-5, atol=1e-12)


def test_activation_scores_default_to_the_example_inputs():
    m = seeded()
    with torch.no_grad():
        h = torch.relu(m.fc1(X[:1])).double().numpy()
    np.testing.assert_allclose(scores(m, "activation"), np.abs(h).mean(0), rtol=1e-6)


def test_lamp_normalises_by_the_channels_at_least_as_large():
    m = seeded()
    with torch.no_grad():  # squared norms 1, 4, 9 (fc1 rows; nothing else owns the channels)
        m.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]]))
        m.fc1.bias.zero_()
        m.fc2.weight.zero_()
    np.testing.assert_allclose(scores(m, "lamp"), [1 / 14, 4 / 13, 9 / 9], rtol=1e-6)


def test_fpgm_is_summed_distance_to_the_other_filters():
    m = seeded()
    with torch.no_grad():
        m.fc1.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    # |0-1| + |0-3| = 4; |1-0| + |1-3| = 3; |3-0| + |3-1| = 5
    np.testing.assert_allclose(scores(m, "fpgm"), [4, 3, 5], rtol=1e-6)


def test_hessian_is_empirical_fisher_one_sample_at_a_time():
    m = seeded(relu=False)
    loss = lambda out: out.sum()  # noqa: E731
    fisher = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    for i in range(len(X)):
        m.zero_grad()
        loss(m(X[i:i + 1])).backward()
        for n, p in m.named_parameters():
            fisher[n] += p.grad ** 2
    with torch.no_grad():
        p = dict(m.named_parameters())
        want = 0.5 * ((fisher["fc1.weight"] * p["fc1.weight"] ** 2).sum(1)
                      + fisher["fc1.bias"] * p["fc1.bias"] ** 2
                      + (fisher["fc2.weight"] * p["fc2.weight"] ** 2).sum(0))
    np.testing.assert_allclose(scores(m, "hessian", (X,), loss), want.double().numpy(),
                               rtol=1e-5)


def test_new_scores_prune_and_verify_a_transformer_block():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=12)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (1, 8))
    calib = (torch.randint(0, 100, (4, 8)),)
    kept = {}
    for crit in ("wanda", "flap", "activation", "fpgm", "lamp", "hessian"):
        res = prunepass.prune(model, (ids,), f"prune-channels<ratio=0.5,importance={crit},"
                              "unit=heads,ignore=[lm_head*,model.embed*]>",
                              calibration=calib, check_numerics=True)
        up = res.model.model.layers[0].mlp.up_proj
        assert up.out_features == 48
        key = next(k for k in res.record.keep if "up_proj" in k)
        kept[crit] = str(res.record.keep[key])
    assert len(set(kept.values())) > 1  # the criteria do not all choose alike


@pytest.mark.parametrize("calibration, words", [
    ((torch.randn(2, 5),), r"calibration input 0 is torch.float32 \[2, 5\]; the model was "
                           r"traced with torch.float32 \[1, 4\]: only the batch axis"),
    ((X, X), r"calibration inputs are \['input 0', 'input 1'\]"),
    ((X.long(),), r"torch.int64"),
])
def test_calibration_that_does_not_fit_the_model(calibration, words):
    with pytest.raises(TraceError, match=words):
        scores(seeded(), "wanda", calibration)


def test_cli_calibration_file(tmp_path, capsys):
    from prunepass.cli import main
    pt, npz, rep = tmp_path / "calib.pt", tmp_path / "calib.npz", tmp_path / "r.json"
    torch.save((torch.randn(6, 3, 8, 8),), pt)
    np.savez(npz, torch.randn(6, 3, 8, 8).numpy())
    reports = []
    for f in (pt, npz):
        assert main(["run", "tests.rule_models:Residual", "--input-shape", "2,3,8,8", "-q",
                     "-p", "prune-channels<ratio=0.5,importance=wanda>", "--calibration",
                     str(f), "--report", str(rep), "--check-numerics"]) == 0
        reports.append(rep.read_text())
    assert main(["run", "tests.rule_models:Residual", "--input-shape", "2,3,8,8", "-q",
                 "-p", "prune-channels<ratio=0.5,importance=wanda>", "--calibration",
                 str(tmp_path / "missing.pt")]) != 0
    assert "--calibration" in capsys.readouterr().err
    torch.save((torch.randn(6, 3, 9, 9),), pt)
    assert main(["run", "tests.rule_models:Residual", "--input-shape", "2,3,8,8", "-q",
                 "-p", "prune-channels<ratio=0.5,importance=wanda>", "--calibration",
                 str(pt)]) != 0
    assert "only the batch axis (0) may differ" in capsys.readouterr().err


@pytest.mark.parametrize("criterion", ["activation", "wanda", "flap"])
def test_onnx_activation_scores_equal_torch(tmp_path, criterion):
    m = seeded()
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (X,), str(path), dynamo=False, input_names=["x"])
    ad = prunepass.load(str(path), (X.numpy(),))
    am = AnalysisManager(ad, calibration=(X.numpy(),))
    s = am.get("importance", criterion=criterion)
    got = s[am.get("channel-groups").classes_of(ad.graph.state["fc1.weight"].name, 0)]
    np.testing.assert_allclose(got, scores(m, criterion, (X,)), rtol=1e-5, atol=1e-12)
