"""TVM backend: lowering (torch.export and ONNX routes), builds for x86, aarch64 and CUDA, and
the errors bad input gets. Tiny models; no tuning here (see test_tvm_tune.py)."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

import prunepass  # noqa: E402
from prunepass.backends.tvm import (BackendError, TargetError, ToolchainError,  # noqa: E402
                                    UnsupportedOpError, compile_model, load_compiled,
                                    lower_model, resolve_target)
from prunepass.backends.measure.torch_export import export_onnx  # noqa: E402
from prunepass.testing import randomize  # noqa: E402
from tests.rule_models import ResidualNet  # noqa: E402

EM_AARCH64 = 183
EM_CUDA = 190


@pytest.fixture(scope="module")
def pruned() -> tuple[nn.Module, tuple[torch.Tensor]]:
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    model = randomize(ResidualNet().eval())
    result = prunepass.prune(model, x, "prune-channels<ratio=0.5>,dce")
    return result.model.eval(), x


def _reference(model: nn.Module, x: tuple[torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return model(*x).numpy()


def test_pruned_model_is_smaller(pruned):
    model, _ = pruned
    conv_weights = [p for p in model.parameters() if p.dim() == 4]
    assert len(conv_weights) == 3 and all(w.shape[0] == 8 for w in conv_weights)


@pytest.mark.parametrize("route", ["torch", "onnx"])
def test_llvm_build_matches_torch(pruned, route, tmp_path):
    model, x = pruned
    compiled = compile_model(model, x, "x86", tmp_path, route=route)
    out = compiled.load()(*x)
    ref = _reference(model, x)
    assert out[0].shape == ref.shape
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-4)
    assert compiled.route == route
    # The artifact is self-describing: a fresh load from its JSON gives the same numbers.
    again = load_compiled(compiled.metadata)(*x)
    np.testing.assert_array_equal(again[0], out[0])


def test_onnx_file_route_matches_torch(pruned, tmp_path):
    model, x = pruned
    path = export_onnx(model, x, tmp_path / "pruned.onnx")
    compiled = compile_model(path, None, "x86", tmp_path / "out")
    np.testing.assert_allclose(compiled.load()(x[0].numpy())[0], _reference(model, x),
                               rtol=1e-4, atol=1e-4)
    assert [i.shape for i in compiled.inputs] == [(1, 3, 16, 16)]


def test_lowering_binds_parameters(pruned):
    model, x = pruned
    lowered = lower_model(model, x)
    # Only the image is an input: every weight is a bound constant.
    assert [p.name for p in lowered.mod["main"].params] == [lowered.inputs[0].name]
    assert model.training is False


def test_aarch64_build_is_an_aarch64_shared_object(pruned, tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.fail("aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu")
    model, x = pruned
    compiled = compile_model(model, x, "aarch64", tmp_path)
    header = compiled.library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # 64-bit
    assert struct.unpack_from("<H", header, 18)[0] == EM_AARCH64
    assert json.loads(compiled.metadata.read_text())["target"]["name"] == "aarch64"
    with pytest.raises(BackendError, match="no cpu device|cannot load"):
        compiled.load()  # an aarch64 library cannot run on this x86 host


def test_aarch64_build_runs_on_an_emulated_aarch64_device(pruned, tmp_path):
    """The cross-compiled library, run by the aarch64 TVM runtime under qemu-user behind an
    RPC tracker, gives torch's answer; its latency is measured there (the emulator's)."""
    from prunepass.backends.tvm import LocalRPCPool, load_library, measure_compiled, \
        request_session
    from prunepass.backends.tvm.emulate import check_emulator
    try:
        check_emulator()
    except ToolchainError as err:
        pytest.fail(f"{err} (make test builds it)")
    model, x = pruned
    with torch.no_grad():
        reference = model(*x).numpy()
    compiled = compile_model(model, x, "aarch64", tmp_path)
    with LocalRPCPool(key="aarch64-qemu", emulate="aarch64", timeout_s=240) as pool:
        remote = load_library(compiled.library, "cpu", compiled.inputs,
                              request_session(pool.tracker))
        out = remote(*x)
        del remote  # ends the session: the server takes one at a time
        np.testing.assert_allclose(out[0], reference, rtol=1e-4, atol=1e-4)
        stats = measure_compiled(compiled, x, repeats=3, number=1, warmup=1, rpc=pool.tracker)
        assert stats.backend == "tvm@aarch64-qemu" and stats.median_ms > 0
    with pytest.raises(ToolchainError, match="aarch64-sysroot.sh"):
        check_emulator(tmp_path / "no-sysroot")


@pytest.mark.parametrize("arch,sm", [("sm_80", 80), ("sm_90", 90)])
def test_cuda_build_has_device_code_without_a_gpu(pruned, tmp_path, arch, sm):
    model, x = pruned
    compiled = compile_model(model, x, f"cuda:{arch}", tmp_path)
    library = compiled.library.read_bytes()
    assert library.count(b'extern "C" __global__') >= 3  # one kernel per fused op at least
    (cubin_path,) = compiled.device_code
    cubin = cubin_path.read_bytes()
    assert cubin[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", cubin, 18)[0] == EM_CUDA
    # CUDA 12.8+ cubins carry the SM version in bits 8-15 of e_flags.
    assert (struct.unpack_from("<I", cubin, 48)[0] >> 8) & 0xFF == sm


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'riscv'.*x86, aarch64, cuda"):
        resolve_target("riscv")
    with pytest.raises(TargetError, match="sm_80"):
        resolve_target("cuda:ampere")


def test_missing_cross_compiler_says_how_to_install_it(pruned, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-gcc on it
    model, x = pruned
    with pytest.raises(ToolchainError, match="apt-get install gcc-aarch64-linux-gnu"):
        compile_model(model, x, "aarch64", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # failed before any work


class Lgamma(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x) + 1


def test_op_the_torch_frontend_lacks_is_named_with_another_route():
    with pytest.raises(UnsupportedOpError, match=r"lgamma.*route='onnx'") as err:
        lower_model(Lgamma(), (torch.rand(2, 3) + 1,))
    assert err.value.ops == ["lgamma.default"]


def test_op_the_onnx_frontend_lacks_is_named_with_another_route(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(proto, path)
    with pytest.raises(UnsupportedOpError, match=r"FancyOp.*route='torch'"):
        lower_model(path)


def test_unreadable_onnx_file_is_a_backend_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00not an onnx file")
    with pytest.raises(BackendError, match="broken.onnx"):
        lower_model(path)


def test_a_model_tvm_cannot_build_is_a_backend_error(pruned):
    from tvm import relax
    from prunepass.backends.tvm.compile import build, prepare
    spec = resolve_target("x86", layout="nchw")
    mod = prepare(lower_model(*pruned).mod, spec)
    # Relax alone has no lowering for a convolution in a blocked layout (prepare gives it
    # one when the target's layout is nchwc): the build fails in codegen.
    blocked = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW8c", "OIHW8i8o"]})(mod)
    with pytest.raises(BackendError, match=r"could not build the model for x86: .*conv2d"):
        build(blocked, spec)


def test_wrong_input_shape_is_refused(pruned, tmp_path):
    model, x = pruned
    run = compile_model(model, x, "x86", tmp_path).load()
    with pytest.raises(BackendError, match=r"float32\[1, 3, 16, 16\].*\[1, 3, 8, 8\]"):
        run(np.zeros((1, 3, 8, 8), np.float32))


def test_dynamic_onnx_batch_is_fixed_by_example_inputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(BackendError, match="x have dynamic dimensions; pass example inputs"):
        lower_model(path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    compiled = compile_model(path, (x,), "x86", tmp_path / "out")
    assert compiled.inputs[0].shape == (5, 4)
    np.testing.assert_allclose(compiled.load()(x)[0], x @ weight, rtol=1e-5, atol=1e-5)


def test_tuning_a_target_this_machine_cannot_run_needs_a_device(pruned, tmp_path):
    model, x = pruned
    with pytest.raises(TargetError, match=r"aarch64 measures on the device: pass an RPC"):
        compile_model(model, x, "aarch64", tmp_path, trials=8)
