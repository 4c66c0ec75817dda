"""The default CPU schedule of kernels no tuning record covers (parallel, vectorized along the
contiguous axis, a concatenation cut per input) and the fast transcendental functions: the
schedules have the loops they promise, compute what the unscheduled kernels compute, and a
model built with them equals torch. Seconds each."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

from tvm import te, topi  # noqa: E402

from prunepass.backends.tvm import compile_model, resolve_target  # noqa: E402
from prunepass.backends.tvm.default_schedule import schedule_cpu_default  # noqa: E402
from prunepass.backends.tvm.fast_math import fast_math  # noqa: E402
from prunepass.testing import randomize  # noqa: E402

VECTOR_BITS = 512  # 16 float32 lanes; LLVM legalizes the vectors on a narrower CPU


def _run(func, arrays: list[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target="llvm")
    out = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def _loops(func) -> dict[str, int]:
    """How many loops of each kind the scheduled function has."""
    text = func.script()
    return {kind: text.count(f"T.{kind}(") for kind in ("parallel", "vectorized")}


def test_concatenation_is_cut_per_input_and_equals_the_unscheduled_kernel():
    # densenet's pre-activation: concat(64 + 32 + 32 channels, NHWC) -> affine -> relu
    parts = [te.placeholder((1, 8, 8, c), "float32", f"x{i}") for i, c in enumerate((64, 32, 32))]
    scale = te.placeholder((128,), "float32", "scale")
    cat = topi.concatenate(parts, axis=3)
    out = topi.nn.relu(cat * scale)
    func = te.create_prim_func([*parts, scale, out])
    sch = schedule_cpu_default(func, VECTOR_BITS)
    assert sch is not None
    scheduled = sch.mod["main"]
    # one parallel loop over the pixels; the channels cut at 64 and 96 into three loops of
    # 16-lane vectors ([0, 4), [4, 6) and [6, 8) of them), each reading one input
    assert _loops(scheduled) == {"parallel": 1, "vectorized": 3}
    text = scheduled.script()
    assert text.count("T.vectorized(16)") == 3
    assert all(f"in range({r})" in text for r in ("4", "4, 6", "6, 8"))

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 8, 8, c)).astype("float32") for c in (64, 32, 32)]
    arrays.append(rng.standard_normal(128).astype("float32"))
    expected = np.maximum(np.concatenate(arrays[:3], axis=3) * arrays[3], 0)
    np.testing.assert_allclose(_run(scheduled, arrays, expected.shape), expected, rtol=1e-6)
    np.testing.assert_allclose(_run(func, arrays, expected.shape), expected, rtol=1e-6)


def test_nhwc_mean_reduces_with_the_channels_innermost_and_vectorized():
    x = te.placeholder((1, 28, 28, 96), "float32", "x")
    out = topi.sum(x, axis=(1, 2))  # a squeeze-excite pool on NHWC
    func = te.create_prim_func([x, out])
    sch = schedule_cpu_default(func, VECTOR_BITS)
    text = sch.mod["main"].script()
    # the channel blocks are split over the threads, the channels of a block are one vector
    # and the reduction over rows and columns runs outside it
    assert _loops(sch.mod["main"]) == {"parallel": 1, "vectorized": 2}  # update and init
    reduce_loop = text.index("for ax1, ax2 in T.grid(28, 28)") if "T.grid(28, 28)" in text \
        else text.index("28")
    assert text.index("T.vectorized", reduce_loop) > reduce_loop
    a = np.random.default_rng(1).standard_normal((1, 28, 28, 96)).astype("float32")
    np.testing.assert_allclose(_run(sch.mod["main"], [a], (1, 96)), a.sum(axis=(1, 2)),
                               rtol=1e-5, atol=1e-4)


def test_a_transpose_is_left_to_llvm_and_a_large_elementwise_op_runs_in_parallel():
    x = te.placeholder((1, 3, 64, 64), "float32", "x")
    transpose = te.create_prim_func([x, topi.transpose(x, (0, 2, 3, 1))])
    sch = schedule_cpu_default(transpose, VECTOR_BITS)
    assert _loops(sch.mod["main"]) == {"parallel": 0, "vectorized": 0}

    y = te.placeholder((1, 56, 56, 100), "float32", "y")  # 100 channels: 4 lanes divide it
    add = te.create_prim_func([y, topi.nn.relu(y + 1.0)])
    scheduled = schedule_cpu_default(add, VECTOR_BITS).mod["main"]
    assert _loops(scheduled) == {"parallel": 1, "vectorized": 1}
    assert "T.vectorized(4)" in scheduled.script()
    b = np.random.default_rng(2).standard_normal((1, 56, 56, 100)).astype("float32")
    np.testing.assert_allclose(_run(scheduled, [b], b.shape), np.maximum(b + 1, 0))


class Transcendental(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(nn.functional.gelu(x), -1) + torch.erf(x)


def test_fast_math_replaces_gelu_erf_and_softmax_and_keeps_their_values():
    from tvm import relax

    from prunepass.backends.tvm.lower import lower_model
    model = Transcendental()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)) * 3
    mod = lower_model(model, (x,)).mod
    fast = fast_math(mod)
    before = {c.op.name for c in _calls(mod["main"])}
    after = {c.op.name for c in _calls(fast["main"])}
    assert {"relax.nn.gelu", "relax.nn.softmax", "relax.erf"} <= before
    assert not after & {"relax.nn.gelu", "relax.nn.softmax", "relax.erf"}
    assert "relax.call_tir" in after

    expected = model(x).numpy()
    for module in (mod, fast):
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(x.numpy()))
        got = got[0] if not hasattr(got, "numpy") else got
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def _calls(func) -> list:
    from tvm import relax
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e)
                                    if isinstance(e, relax.Call) else None)
    return found


class DenseBlock(nn.Module):
    """What the default schedule meets in a model: concatenation with batch norm and ReLU
    after it, GELU, layer norm over channels, a squeeze-excite mean and product, max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.grow = nn.Conv2d(32, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(48)
        self.norm = nn.LayerNorm(48)
        self.fc = nn.Linear(48, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.bn(torch.cat([y, self.grow(y)], 1)))
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        y = nn.functional.max_pool2d(y, 2)
        z = nn.functional.gelu(self.fc(self.norm(y.permute(0, 2, 3, 1))))
        return self.head(torch.softmax(z, -1).mean((1, 2)))


@pytest.mark.parametrize("layout", ["nhwc", "nchwc"])
def test_a_model_built_with_default_schedules_equals_torch(tmp_path, layout):
    model = randomize(DenseBlock().eval(), 5)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    compiled = compile_model(model, (x,), resolve_target("x86", layout=layout), tmp_path,
                             progress=False)
    got = compiled.load()(x.numpy())[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
