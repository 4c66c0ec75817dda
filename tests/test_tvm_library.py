"""TVM library kernels (prunepass.backends.tvm.library): the Relax rewrite of matmuls and convs
into prunepass.blas.* calls, the extension built against OpenBLAS from PyPI, artifacts that
load in a fresh process, and the errors for a missing compiler, BLAS or library."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

from tvm import relax  # noqa: E402

from prunepass.backends.tvm import library  # noqa: E402
from prunepass.backends.tvm.errors import LibraryError, ToolchainError  # noqa: E402
from prunepass.backends.tvm.lower import lower_model  # noqa: E402
from prunepass.backends.tvm.targets import host_cpu  # noqa: E402

TARGET = {"kind": "llvm", "mcpu": None, "num-cores": 1}


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory):
    try:
        library.find_compiler()
    except ToolchainError as err:
        pytest.skip(f"no C++ compiler to build the library kernels: {err}")
    path = library.build_extension(tmp_path_factory.mktemp("ext"), "openblas")
    library.load_extension(path)
    return path


def target():
    return tvm.target.Target({**TARGET, "mcpu": host_cpu()})


def inference_form(mod):
    """What compile.prepare does before its layout conversion: where offload_dense runs."""
    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings(),
                                     relax.transform.FoldConstant()])(mod)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 96), nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _mixed_module():
    """dense + bias, dense, a float16 dense, a dynamic-batch dense, and q @ k^T."""
    rng = np.random.default_rng(0)
    const = lambda *shape, dtype="float32": relax.const(rng.standard_normal(shape).astype(dtype))
    bb = relax.BlockBuilder()
    from tvm.ir.prim.expr import Var
    n = Var("n", "int64")
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    x16 = relax.Var("x16", relax.TensorType((4, 8), "float16"))
    xd = relax.Var("xd", relax.TensorType((n, 8), "float32"))
    q = relax.Var("q", relax.TensorType((2, 4, 8), "float32"))
    k = relax.Var("k", relax.TensorType((2, 4, 8), "float32"))
    with bb.function("main", [x, x16, xd, q, k]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(relax.op.matmul(x, const(8, 16)), const(16)))
            y = bb.emit(relax.op.matmul(h, const(16, 4)))
            y16 = bb.emit(relax.op.matmul(x16, const(8, 4, dtype="float16")))
            yd = bb.emit(relax.op.matmul(xd, const(8, 4)))
            kt = bb.emit(relax.op.permute_dims(k, [0, 2, 1]))
            s = bb.emit(relax.op.matmul(q, kt))
            out = bb.emit_output(relax.Tuple([y, y16, yd, s]))
        bb.emit_func_output(out)
    return bb.get()


def test_rewrite_counts_and_what_stays_in_tvm():
    report = library.OffloadReport()
    mod = library.offload_dense(_mixed_module(), report=report)
    assert report.offloaded == ["matmul_bias (4, 8)x(8, 16)", "matmul (4, 16)x(16, 4)",
                                "matmul_nt (2, 4, 8)x(2, 8, 4)"]
    assert report.kept == ["matmul (4, 8)x(8, 4): a has dtype float16",
                           "matmul (n, 8)x(8, 4): a has a dynamic shape"]
    assert library.required_libraries(mod) == ["prunepass.blas.matmul",
                                               "prunepass.blas.matmul_bias",
                                               "prunepass.blas.matmul_nt"]
    # the transposed k feeds the GEMM directly: no permute_dims is left for q @ k^T
    assert "permute_dims" not in mod.script()

    dense_only = library.OffloadReport()
    library.offload_dense(_mixed_module(), ("dense",), report=dense_only)
    assert len(dense_only.offloaded) == 2
    assert "matmul (2, 4, 8)x(2, 8, 4): kind matmul not asked for" in dense_only.kept


def test_torch_and_onnx_linear_patterns_are_offloaded():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    torch.manual_seed(0)
    report = library.OffloadReport()
    library.offload_dense(inference_form(lower_model(MLP().eval(), (torch.randn(3, 64),)).mod),
                          report=report)
    assert report.offloaded == ["matmul_bias (3, 64)x(64, 96)", "matmul_bias (3, 96)x(96, 10)"]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype("float32"), n)
               for n, s in (("W", (4, 8)), ("B", (4,)), ("W2", (4, 3)))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    report = library.OffloadReport()
    library.offload_dense(lower_model(model).mod, report=report)
    assert report.offloaded == ["matmul_bias (5, 8)x(8, 4)", "matmul (5, 4)x(4, 3)"]


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np, tvm
    from tvm import relax
    from prunepass.backends.tvm import library
    folder, lonely = sys.argv[1], sys.argv[2]
    out = {}
    try:  # the linked model without the library beside it: the loader names the library
        tvm.runtime.load_module(lonely + "/model.so")
    except Exception as err:
        out["lonely"] = str(err).splitlines()[0]
    unlinked = tvm.runtime.load_module(folder + "/unlinked.so")
    out["required"] = library.required_libraries(unlinked)
    try:
        library.check_loaded(out["required"], folder + "/libprunepass_blas.so")
    except library.LibraryError as err:
        out["check"] = str(err)
    try:
        relax.VirtualMachine(unlinked, tvm.cpu())
    except Exception as err:
        out["vm"] = str(err).splitlines()[0]
    x = tvm.runtime.tensor(np.load(folder + "/x.npy"))
    vm = relax.VirtualMachine(tvm.runtime.load_module(folder + "/model.so"), tvm.cpu())
    out["linked"] = vm["main"](x).numpy().tolist()
    library.check_loaded(out["required"], folder + "/libprunepass_blas.so")  # now registered
    out["unlinked"] = relax.VirtualMachine(unlinked, tvm.cpu())["main"](x).numpy().tolist()
    print(json.dumps(out))
""")


def test_offloaded_mlp_equals_torch_after_export_and_reload_in_a_fresh_process(extension,
                                                                               tmp_path):
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(2, 7, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    report = library.OffloadReport()
    mod = library.offload_dense(inference_form(lower_model(model, (x,)).mod), report=report)
    assert len(report.offloaded) == 2 and report.kept == []
    executable = tvm.compile(mod, target=target())
    folder, lonely = tmp_path / "model", tmp_path / "lonely"
    folder.mkdir()
    executable.export_library(str(folder / "model.so"), options=library.link_options(extension))
    executable.export_library(str(folder / "unlinked.so"))
    copies = library.bundle(extension, folder)
    assert [p.name for p in copies] == ["libprunepass_blas.so", "libscipy_openblas.so"]
    lonely.mkdir()
    shutil.copy(folder / "model.so", lonely / "model.so")
    np.save(folder / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", FRESH, str(folder), str(lonely)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "libprunepass_blas.so: cannot open shared object file" in out["lonely"]
    assert out["required"] == ["prunepass.blas.matmul_bias"]
    assert str(folder / "libprunepass_blas.so") in out["check"]
    assert "load_extension" in out["check"]
    assert "prunepass.blas.matmul_bias" in out["vm"]  # TVM's own error names only the function
    for key in ("linked", "unlinked"):
        np.testing.assert_allclose(np.array(out[key]), expected, atol=1e-4, rtol=0)


def test_conv2d_offload_matches_torch_and_grouped_conv_stays(extension):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 15, 13)
    with torch.no_grad():
        expected = model(x).numpy()
    report = library.OffloadReport()
    mod = library.offload_dense(inference_form(lower_model(model, (x,)).mod), report=report)
    assert [line.split()[0] for line in report.offloaded] == ["conv2d_bias", "conv2d_bias"]
    assert len(report.kept) == 1 and report.kept[0].endswith("groups=2")
    vm = relax.VirtualMachine(tvm.compile(mod, target=target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("library_threads", [0, 2])
def test_batched_broadcast_kernels_equal_numpy(extension, library_threads):
    import tvm_ffi
    fn = lambda name: tvm_ffi.get_global_func("prunepass.blas." + name)  # noqa: E731
    fn("use_library_threads")(library_threads)
    rng = np.random.default_rng(1)
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a, dtype="float32"))  # noqa: E731
    try:
        for sa, sb, nt in [((3, 1, 5, 7), (1, 2, 7, 33), False), ((12, 9, 16), (12, 9, 16), True),
                           ((1, 5, 7), (4, 7, 3), False)]:
            a, b = rng.standard_normal(sa), rng.standard_normal(sb)
            bias = rng.standard_normal(sb[-2] if nt else sb[-1])
            expected = a @ (np.swapaxes(b, -1, -2) if nt else b) + bias
            out = t(np.zeros(expected.shape))
            fn("matmul_nt_bias" if nt else "matmul_bias")(t(a), t(b), t(bias), out)
            np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, rtol=1e-5)
    finally:
        fn("use_library_threads")(0)
    with pytest.raises(Exception, match="shape mismatch"):
        fn("matmul")(t(np.zeros((2, 3))), t(np.zeros((4, 5))), t(np.zeros((2, 5))))


def test_missing_function_error_names_the_library(extension, tmp_path):
    with pytest.raises(LibraryError, match="prunepass.blas.nothing, provided by the library "
                       + str(tmp_path / "libprunepass_blas.so")):
        library.check_loaded(["prunepass.blas.matmul", "prunepass.blas.nothing"],
                             tmp_path / "libprunepass_blas.so")
    with pytest.raises(LibraryError, match="do not exist; build them"):
        library.load_extension(tmp_path / "absent.so")


def test_build_errors_name_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(ToolchainError, match="needs a C\\+\\+ compiler.*apt-get install g\\+\\+"):
        library.build_extension(tmp_path)
    monkeypatch.delenv("CXX")
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)  # import fails
    with pytest.raises(LibraryError, match="pip install scipy-openblas32"):
        library.find_blas("openblas")
    with pytest.raises(LibraryError, match="pip install onednn-devel-cpu-gomp"):
        library.find_blas("onednn", dnnl_prefix=tmp_path)
    with pytest.raises(LibraryError, match="unknown library backend 'mkl'"):
        library.find_blas("mkl")


class Block(nn.Module):
    """A small transformer block: linear layers (dense) and attention (matmul of two
    activations), a layer norm, a softmax and a residual that stay in TVM."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), \
            nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, -1)
        return x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))


@pytest.fixture(scope="module")
def compiled_block(tmp_path_factory: pytest.TempPathFactory):
    """The block compiled for x86 with the OpenBLAS kernels: (compiled, x, torch's output)."""
    pytest.importorskip("scipy_openblas32", reason="pip install 'prunepass[blas]'")
    try:
        library.find_compiler()
    except ToolchainError as err:
        pytest.skip(f"no C++ compiler to build the library kernels: {err}")
    from prunepass.backends.tvm import compile_model, resolve_target
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    compiled = compile_model(model, (x,), resolve_target("x86", library="openblas"),
                             tmp_path_factory.mktemp("block"), progress=False)
    return compiled, x, expected


def test_x86_target_with_openblas_offloads_matmuls_and_equals_torch(compiled_block, tmp_path):
    from prunepass.backends.tvm import prepare, resolve_target, tune_model
    compiled, x, expected = compiled_block
    np.testing.assert_allclose(compiled.load()(x.numpy())[0], expected, atol=1e-4, rtol=0)
    assert [p.name for p in compiled.library_files] == ["libprunepass_blas.so",
                                                        "libscipy_openblas.so"]
    assert all(p.parent == compiled.library.parent for p in compiled.library_files)
    data = json.loads(compiled.metadata.read_text())["library_kernels"]
    # qkv and proj with their bias; q @ k^T and attention @ v (torch.export writes them as
    # 3-D bmm, k transposed before its reshape)
    assert data["offloaded"] == ["matmul_bias (10, 32)x(32, 96)", "matmul (4, 5, 16)x(4, 16, 5)",
                                 "matmul (4, 5, 5)x(4, 5, 16)", "matmul_bias (10, 32)x(32, 32)"]
    assert data["kept"] == []
    assert data["functions"] == ["prunepass.blas.matmul", "prunepass.blas.matmul_bias"]
    assert data["files"] == ["libprunepass_blas.so", "libscipy_openblas.so"]
    assert data["library"] == data["backend"] == "openblas"

    # the offloaded matmuls are no tuning tasks; the same target without the library has them
    spec = compiled.target
    plain = resolve_target("x86")
    assert spec.key == plain.key  # one tuning database for both
    mod = lower_model(Block().eval(), (x,)).mod
    tasks = tune_model(prepare(mod, spec), spec, tmp_path / "db", trials=0)[1].tasks
    plain_tasks = tune_model(prepare(mod, plain), plain, tmp_path / "db", trials=0)[1].tasks
    assert tasks and not [t for t in tasks if "matmul" in t]
    assert [t for t in plain_tasks if "matmul" in t]


LOAD_COMPILED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from prunepass.backends.tvm import load_compiled
    from prunepass.backends.tvm.errors import LibraryError
    metadata, lonely, x = sys.argv[1:4]
    out = {}
    try:  # the model without the files beside it: the error names the library file
        load_compiled(lonely)
    except LibraryError as err:
        out["lonely"] = str(err)
    out["y"] = load_compiled(metadata)(np.load(x))[0].tolist()
    print(json.dumps(out))
""")


def test_exported_model_loads_with_its_kernels_in_a_fresh_process(compiled_block, tmp_path):
    compiled, x, expected = compiled_block
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(compiled.library, lonely / compiled.library.name)
    shutil.copy(compiled.metadata, lonely / compiled.metadata.name)
    np.save(tmp_path / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", LOAD_COMPILED, str(compiled.metadata),
                           str(lonely / compiled.metadata.name), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"provided by the library {lonely / 'libprunepass_blas.so'}, which is missing" \
        in out["lonely"]
    np.testing.assert_allclose(np.array(out["y"]), expected, atol=1e-4, rtol=0)


def test_library_target_option_errors():
    from prunepass.backends.tvm import TargetError, resolve_target
    with pytest.raises(TargetError, match="target 'aarch64' cannot take library='openblas': "
                       "the library kernels are built for this machine's CPU"):
        resolve_target("aarch64", library="openblas")
    with pytest.raises(TargetError, match="unknown library 'mkl': use one of auto, openblas, "
                       "onednn"):
        resolve_target("x86", library="mkl")
    assert resolve_target("x86").library is None
    # oneDNN takes convolutions by default, on channels-last activations; OpenBLAS does not
    onednn = resolve_target("x86", library="onednn")
    assert onednn.library_ops == ("dense", "matmul", "conv2d") and onednn.layout == "nhwc"
    openblas = resolve_target("x86", library="openblas")
    assert openblas.library_ops == ("dense", "matmul") and openblas.layout == "nchwc"
    assert resolve_target("x86", library="onednn", library_ops=("dense",)).layout == "nchwc"
    with pytest.raises(TargetError, match="layout 'nchwc' with library 'onednn': its "
                       "convolutions take channels-last activations"):
        resolve_target("x86", library="onednn", layout="nchwc")
