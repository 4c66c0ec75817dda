"""Convolution layouts for TVM: channel blocks (NCHW[x]c) and channels last (NHWC) build and
equal torch; convolutions a layout does not suit stay in NCHW and are named; the target is
built for the extensions this CPU has, and its key (the tuning database folder) says which.
Untuned builds of a small model: seconds each."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1'")

from prunepass.backends.tvm import TargetError, compile_model, resolve_target  # noqa: E402
from prunepass.backends.tvm.layout import channel_block  # noqa: E402
from prunepass.backends.tvm.targets import (host_vector_features,  # noqa: E402
                                            vector_lanes)
from prunepass.testing import randomize  # noqa: E402


class Mixed(nn.Module):
    """A plain conv with batch norm, a depthwise conv, a grouped conv (no blocked kernel), a
    conv to 17 channels (prime: no block > 1), pooling and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.odd = nn.Conv2d(32, 17, 1)
        self.head = nn.Linear(17, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.depthwise(y)) + y
        y = nn.functional.max_pool2d(self.grouped(y), 2)
        return self.head(self.odd(y).mean((2, 3)))


@pytest.fixture(scope="module")
def mixed() -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    model = randomize(Mixed().eval(), 3)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, x, model(x).numpy()


@pytest.mark.parametrize("lanes", [16, 8])
def test_blocked_layout_build_equals_torch_and_names_what_it_kept(mixed, tmp_path, lanes):
    model, x, reference = mixed
    features = ("avx", "avx2", "fma") + (("avx512f",) if lanes == 16 else ())
    host = set(host_vector_features())
    if not set(features) <= host:
        pytest.skip(f"this CPU lacks {sorted(set(features) - host)}")
    spec = resolve_target("x86", layout="nchwc", features=features)
    assert spec.lanes == lanes
    compiled = compile_model(model, (x,), spec, tmp_path)
    np.testing.assert_allclose(compiled.load()(x.numpy())[0], reference, rtol=1e-4, atol=1e-4)
    report = compiled.layout
    assert report.converted == 2  # the stem and the depthwise conv
    assert len(report.kept) == 2
    assert any("32->32 3x3: 4 groups" in k for k in report.kept)
    assert any("32->17 1x1: 17 output channels have no block > 1" in k for k in report.kept)
    # into blocks at the input, out of them before the grouped conv (and its max pool)
    assert report.edge_transforms == 2
    data = json.loads(compiled.metadata.read_text())  # the artifact's description says so
    assert data["layout"]["layout"] == "nchwc" and data["layout"]["converted"] == 2
    assert data["target"]["features"] == sorted(features)


def test_channels_last_build_equals_torch(mixed, tmp_path):
    model, x, reference = mixed
    compiled = compile_model(model, (x,), resolve_target("x86", layout="nhwc"), tmp_path)
    np.testing.assert_allclose(compiled.load()(x.numpy())[0], reference, rtol=1e-4, atol=1e-4)
    assert compiled.layout.converted == 3 and len(compiled.layout.kept) == 1
    assert "4 groups" in compiled.layout.kept[0]


def test_where_convert_layout_fails_each_convolution_goes_nhwc_on_its_own(mixed, tmp_path,
                                                                          monkeypatch):
    # vit_b_16's graph makes Relax's ConvertLayout fail (std::bad_alloc in TVM 0.27)
    from tvm import relax

    def failing(*_args):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(relax.transform, "ConvertLayout", failing)
    model, x, reference = mixed
    compiled = compile_model(model, (x,), resolve_target("x86", layout="nhwc"), tmp_path,
                             progress=False)
    np.testing.assert_allclose(compiled.load()(x.numpy())[0], reference, rtol=1e-4,
                               atol=1e-5)
    report = compiled.layout
    # stem, depthwise and the 1x1 to 17 channels; the grouped one stays (4 groups)
    assert report.converted == 3
    assert report.kept[0] == ("Relax's ConvertLayout failed (std::bad_alloc): each "
                              "convolution transposed to NHWC and back instead")
    assert "4 groups" in report.kept[1]
    assert report.edge_transforms == 6  # a transpose on each side of each of the three


def test_channel_block_is_the_largest_divisor_within_a_vector():
    assert [channel_block(c, 16) for c in (64, 24, 48, 3, 17, 40)] == [16, 12, 16, 3, 1, 10]
    assert [channel_block(c, 8) for c in (64, 24, 12, 7)] == [8, 8, 6, 7]


def test_unknown_layout_is_refused():
    with pytest.raises(TargetError, match="unknown layout 'nhcw'.*nchw, nhwc, nchwc"):
        resolve_target("x86", layout="nhcw")


def test_cpu_features_come_from_cpuinfo_and_shape_the_target():
    cpuinfo = ("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw "
               "avx512_vnni\n")
    assert host_vector_features(cpuinfo) == ("avx", "avx2", "avx512bw", "avx512f",
                                             "avx512vnni", "fma", "sse4.2")
    assert vector_lanes(("avx", "avx2")) == 8 and vector_lanes(("avx512f",)) == 16
    assert vector_lanes(()) == 4
    # A CPU model that implies AVX-512, on a (virtual) CPU without it: LLVM is told not to
    # use it, and the records go to another folder.
    full = resolve_target("x86", mcpu="skylake-avx512", features=("avx", "avx2", "avx512f",
                                                                  "fma"))
    masked = resolve_target("x86", mcpu="skylake-avx512", features=("avx", "avx2", "fma"))
    assert "-avx512f" in str(masked.target) and "-avx512f" not in str(full.target)
    assert masked.key != full.key and masked.key.startswith("x86_64-skylake-avx512-avx2-")
    assert full.key.startswith("x86_64-skylake-avx512-avx512f-")
