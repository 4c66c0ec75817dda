"""TVM library kernels built against oneDNN (prunepass.backends.tvm.library, backend onednn):
convolutions on NHWC through oneDNN's primitive with batch norm, activations and residual
adds fused, weights packed at build time; artifacts that load in a fresh process; the error
for weights packed for another CPU.

A process holds one build of the library kernels, and this suite's other tests load the
OpenBLAS one: everything oneDNN runs in child processes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                    "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

from prunepass.backends.tvm import library  # noqa: E402
from prunepass.backends.tvm.errors import LibraryError, ToolchainError  # noqa: E402

COMPILE = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, torch.nn as nn
    from prunepass.backends.tvm import compile_model, resolve_target

    class Net(nn.Module):
        '''Every pattern the rewrite fuses, and some it must not.'''
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.conv_a = nn.Conv2d(16, 16, 3, padding=1)
            self.bn_a = nn.BatchNorm2d(16)
            self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
            self.bn_dw = nn.BatchNorm2d(16)
            self.grouped = nn.Conv2d(16, 24, 1, groups=4)
            self.wide = nn.Conv2d(24, 8, (1, 3), stride=(1, 2), padding=(0, 1))
            self.bn_w = nn.BatchNorm2d(8)
            self.se = nn.Conv2d(8, 8, 1)
            self.conv_b = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(self.bn_a(self.conv_a(x)) + x)        # residual add, then ReLU
            x = nn.functional.relu6(self.bn_dw(self.dw(x)))     # depthwise, dilated, ReLU6
            x = torch.sigmoid(self.grouped(x))                  # grouped, not depthwise
            x = nn.functional.silu(self.bn_w(self.wide(x)))        # SiLU
            x = x * torch.sigmoid(self.se(x.mean((2, 3), keepdim=True)))  # squeeze-excite
            y = self.conv_b(x)
            x = y * torch.sigmoid(y)                            # SiLU written out
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    for m in model.modules():  # batch norms that do something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 19, 17)
    with torch.no_grad():
        expected = model(x).numpy()
    out_dir = sys.argv[1]
    spec = resolve_target("x86", library="onednn")
    compiled = compile_model(model, (x,), spec, out_dir, progress=False)
    got = compiled.load()(x.numpy())[0]
    np.save(out_dir + "/x.npy", x.numpy()); np.save(out_dir + "/expected.npy", expected)

    # the same call with a format hash another CPU's kernel would have
    import tvm, tvm_ffi
    from prunepass.backends.tvm.library.conv_offload import FUNCTION
    conv = tvm_ffi.get_global_func(FUNCTION)
    plan = tvm_ffi.get_global_func("prunepass.blas.dnnl_conv2d_plan")
    params = [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    floats, fmt_hash, kernel = plan(tvm_ffi.Shape([1, 4, 4, 8]), 8, tvm_ffi.Shape(params)).split()
    t = lambda *s: tvm.runtime.tensor(np.zeros(s, np.float32))
    params[11] = int(fmt_hash) + 1
    try:
        conv(t(1, 4, 4, 8), t(int(floats)), t(8), tvm_ffi.Shape(params), t(1, 4, 4, 8))
        wrong_hash = None
    except Exception as err:
        wrong_hash = str(err)
    print(json.dumps({"layout": spec.layout, "ops": list(spec.library_ops),
                      "max_error": float(np.abs(got - expected).max()),
                      "offloaded": compiled.offload.offloaded, "kept": compiled.offload.kept,
                      "files": [p.name for p in compiled.library_files],
                      "kernels": compiled.kernels, "wrong_hash": wrong_hash,
                      "metadata": str(compiled.metadata)}))
""")

LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from prunepass.backends.tvm import load_compiled
    folder = sys.argv[1]
    y = load_compiled(folder + "/model.json")(np.load(folder + "/x.npy"))[0]
    print(json.dumps({"max_error": float(np.abs(y - np.load(folder + "/expected.npy")).max())}))
""")


def child(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    try:
        library.find_compiler()
        library.find_blas("onednn")
    except (ToolchainError, LibraryError) as err:
        pytest.skip(f"cannot build the oneDNN library kernels: {err}")
    out = tmp_path_factory.mktemp("onednn")
    return child(COMPILE, str(out)), out


def test_convolutions_fuse_what_follows_and_equal_torch(compiled):
    result, _ = compiled
    assert result["layout"] == "nhwc" and result["ops"] == ["dense", "matmul", "conv2d"]
    assert result["max_error"] < 1e-4
    convs = [line for line in result["offloaded"] if line.startswith("dnnl_conv2d")]
    assert len(convs) == 7
    stem, conv_a, dw, grouped, wide, se, conv_b = convs
    # batch norm (decomposed: subtract, divide, multiply, add) folded, ReLU a post-op
    assert "stride 2x2 +subtract +divide +multiply +add +relu [" in stem
    # bias, its own batch norm, then the residual add and the ReLU after it
    assert "+add +subtract +divide +multiply +add +add +relu [" in conv_a
    assert "groups 16" in dw and dw.split("[")[0].endswith("+maximum +minimum ")
    assert "*(8, 24, 1, 3) stride 1x2 +add +subtract +divide +multiply +add +silu [" in wide
    assert "(2, 1, 1, 8)*(8, 8, 1, 1) stride 1x1 +add +sigmoid [" in se
    assert conv_b.split("[")[0].endswith("+add +silu ")
    # a grouped convolution that is not depthwise goes NHWC too; the sigmoid after it
    # follows a bias add, so it is fused as well
    assert "*(24, 4, 1, 1) groups 4 stride 1x1 +add +sigmoid [" in grouped
    assert result["kept"] == []
    assert [line.split()[0] for line in result["offloaded"]].count("matmul_bias") == 1
    assert result["kernels"] == ["prunepass.blas.dnnl_conv2d", "prunepass.blas.matmul_bias"]
    assert result["files"] == ["libprunepass_blas.so", "libdnnl.so.3"]


def test_exported_model_loads_with_bundled_onednn_in_a_fresh_process(compiled):
    _, out = compiled
    assert child(LOAD, str(out))["max_error"] < 1e-4


def test_weights_packed_for_another_cpu_are_refused(compiled):
    result, _ = compiled
    assert "packed for another CPU" in result["wrong_hash"]
    assert "compile the model again on this CPU" in result["wrong_hash"]
