"""Compilation targets by name: the host x86 CPU, aarch64 Linux (cross-compiled), and CUDA GPUs."""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
from dataclasses import dataclass, replace
from typing import Any

from prunepass.backends.tvm.dependency import import_tvm
from prunepass.backends.tvm.errors import LibraryError, TargetError, ToolchainError
from prunepass.backends.tvm.nvrtc import find_cuda_toolkit

TARGET_NAMES = ("x86", "aarch64", "cuda")
ALIASES = {"host": "x86", "llvm": "x86", "x86_64": "x86", "arm64": "aarch64"}
AARCH64_CROSS_COMPILER = "aarch64-linux-gnu-gcc"
DEFAULT_CUDA_ARCH = "sm_80"
AARCH64_DEFAULT_CORES = 4  # what MetaSchedule plans threads for when the board is not told
# The layout "auto" picks per target: measured on x86 (benchmarks/README.md, "TVM layouts");
# aarch64 and CUDA keep the model's own until measured there (CUDA's dlight schedules
# are written for it).
AUTO_LAYOUT = {"x86": "nchwc", "aarch64": "nchw", "cuda": "nchw"}
# Library kernels a target may run matmuls through (prunepass.backends.tvm.library): "auto" is
# oneDNN where it is installed, else OpenBLAS. Built here, for this machine's CPU: x86 only.
LIBRARIES = ("auto", "openblas", "onednn")
# What a library takes: matmuls by a weight (Linear, Gemm, "dense"), of two activations
# ("matmul", attention), and 2-D convolutions ("conv2d"): oneDNN's convolution primitive on
# NHWC with the batch norm, activation and residual add after it fused (by default), or
# im2col and OpenBLAS's GEMM (0.69-0.89x onnxruntime's speed per layer here, so not by
# default: docs/tvm.md, "Library kernels").
LIBRARY_OPS = ("dense", "matmul", "conv2d")
DEFAULT_LIBRARY_OPS = ("dense", "matmul")
LIBRARY_DEFAULT_OPS = {"onednn": LIBRARY_OPS}  # the others: DEFAULT_LIBRARY_OPS


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target, how to export it, and where its code runs."""
    name: str                    # "x86" | "aarch64" | "cuda"
    target: Any                  # tvm.target.Target
    device: str                  # "cpu" | "cuda": the runtime device kind
    key: str                     # names the tuning database folder and the artifact
    cross_compiler: str | None   # executable for export_library, None: the host's cc
    cuda_arch: str | None = None
    layout: str = "nchw"         # convolutions' data layout: "nchw" | "nhwc" | "nchwc"
    lanes: int = 4               # float32 lanes of a vector register (channel block size)
    features: tuple[str, ...] = ()  # vector ISA extensions the code may use (x86: detected)
    # x86: matmuls and linear layers run through this library's kernels (LIBRARIES); not in
    # key: the offloaded operators are no tuning tasks, the others' records stay valid
    library: str | None = None
    library_ops: tuple[str, ...] = DEFAULT_LIBRARY_OPS  # which operators the library takes

    @property
    def runs_on_host(self) -> bool:
        """Whether this machine can run (and so measure) what is built; CUDA code never counts
        as runnable here, tuning it needs a GPU behind an RPC tracker."""
        return self.name == "x86" or (self.name == "aarch64" and platform.machine() == "aarch64")

    def check_toolchain(self) -> None:
        """Fail before a long build or tuning run when the exporter cannot work."""
        if self.name == "cuda":
            find_cuda_toolkit()  # NVRTC compiles the device code: its headers must be there
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            raise ToolchainError(
                f"target {self.name!r} exports with the cross compiler {self.cross_compiler!r}, "
                f"which is not on PATH; on Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu")


def host_cpu() -> str:
    """The host CPU as LLVM names it (e.g. 'znver3'), for -mcpu."""
    tvm = import_tvm()
    return str(tvm.target.codegen.llvm_get_system_cpu())


# Vector extensions that change the code LLVM emits for tensor kernels: /proc/cpuinfo's
# flag -> LLVM's feature name. A CPU model name (-mcpu) implies a set; a virtual machine may
# hide some of them, and code using a hidden one dies with SIGILL, so each is checked.
X86_VECTOR_FEATURES = {
    "sse4_2": "sse4.2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512cd": "avx512cd", "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512bf16", "avx_vnni": "avxvnni", "amx_tile": "amx-tile",
    "amx_bf16": "amx-bf16", "amx_int8": "amx-int8",
}


def host_vector_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The x86 vector extensions this CPU has (LLVM names), from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return ()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return tuple(sorted(llvm for flag, llvm in X86_VECTOR_FEATURES.items() if flag in flags))


def vector_lanes(features: tuple[str, ...] | list[str]) -> int:
    """float32 lanes of the widest vector registers these features give."""
    return 16 if "avx512f" in features else 8 if "avx" in features else 4


def resolve_target(name: str, *, mcpu: str | None = None, cuda_arch: str | None = None,
                   num_cores: int | None = None, layout: str = "auto",
                   features: tuple[str, ...] | None = None,
                   library: str | None = None,
                   library_ops: tuple[str, ...] | None = None) -> TargetSpec:
    """Resolve a target name. ``name`` is "x86" (the host CPU; aliases host, llvm), "aarch64"
    (64-bit ARM Linux, cross-compiled), or "cuda" (optionally "cuda:sm_90").

    layout: the convolutions' data layout, "auto" (what the target's kernels are fastest in,
    see AUTO_LAYOUT), "nchw", "nhwc" or "nchwc" (channel blocks of the vector width).
    features: x86 only, the vector extensions to build for (default: this CPU's).
    library: x86 only, run static float32 matmuls, linear layers (and convolutions) through
        the kernels of "openblas", "onednn" or "auto" (oneDNN where it is installed, else
        OpenBLAS; prunepass.backends.tvm.library); None: all in TVM.
    library_ops: what the library takes, of LIBRARY_OPS (default: dense, matmul, and conv2d
        for oneDNN, whose convolutions make the layout "auto" NHWC)."""
    from prunepass.backends.tvm.layout import LAYOUTS
    tvm = import_tvm()
    base, _, suffix = name.strip().lower().partition(":")
    base = ALIASES.get(base, base)
    if layout != "auto" and layout not in LAYOUTS:
        raise TargetError(f"unknown layout {layout!r}: use auto or one of {', '.join(LAYOUTS)}")
    if library is not None and library not in LIBRARIES:
        raise TargetError(f"unknown library {library!r}: use one of {', '.join(LIBRARIES)} "
                          f"(or none)")
    unknown_ops = sorted(set(library_ops or ()) - set(LIBRARY_OPS))
    if unknown_ops:
        raise TargetError(f"library_ops {', '.join(unknown_ops)} unknown: use some of "
                          f"{', '.join(LIBRARY_OPS)}")
    if base == "cuda":
        spec = _cuda(tvm, suffix or cuda_arch or DEFAULT_CUDA_ARCH)
    elif suffix:
        raise TargetError(f"target {name!r}: only cuda takes a suffix (cuda:sm_90)")
    elif base == "x86":
        spec = _x86(tvm, mcpu, num_cores, features)
    elif base == "aarch64":
        spec = _aarch64(tvm, mcpu, num_cores)
    else:
        raise TargetError(f"unknown target {name!r}: use one of {', '.join(TARGET_NAMES)} "
                          f"(or cuda:sm_XX)")
    if library is not None and spec.name != "x86":
        raise TargetError(f"target {spec.name!r} cannot take library={library!r}: the library "
                          f"kernels are built for this machine's CPU, so only target 'x86' "
                          f"runs them")
    if library == "auto":
        from prunepass.backends.tvm.library.build import find_blas
        try:
            library = find_blas("auto").backend
        except LibraryError:  # neither is installed: building will say what to install
            library = "openblas"
    ops = tuple(library_ops or LIBRARY_DEFAULT_OPS.get(library or "", DEFAULT_LIBRARY_OPS))
    onednn_convs = library == "onednn" and "conv2d" in ops
    if onednn_convs and layout not in ("auto", "nhwc"):
        raise TargetError(f"layout {layout!r} with library 'onednn': its convolutions take "
                          f"channels-last activations; use layout 'nhwc' (or 'auto'), or "
                          f"library_ops without conv2d")
    if layout == "auto":
        # oneDNN's convolutions take channels-last activations: the model is converted to them
        layout = "nhwc" if onednn_convs else AUTO_LAYOUT[spec.name]
    return replace(spec, layout=layout, library=library, library_ops=ops)


def _x86(tvm: Any, mcpu: str | None, num_cores: int | None,
         features: tuple[str, ...] | None) -> TargetSpec:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise TargetError(f"target 'x86' is the host CPU, but this host is {platform.machine()}; "
                          f"build there, or use 'aarch64' for ARM")
    cpu = mcpu or host_cpu()
    have = tuple(sorted(features if features is not None else host_vector_features()))
    # MetaSchedule plans parallel loops for num-cores; tuning refuses an llvm target without it.
    cores = num_cores or os.cpu_count() or 1
    config: dict[str, Any] = {"kind": "llvm", "mcpu": cpu, "num-cores": cores}
    implied = set(tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(config)))
    hidden = sorted(f for f in X86_VECTOR_FEATURES.values() if f in implied and f not in have)
    if hidden:  # the CPU model has them, this (virtual) CPU does not: LLVM must not use them
        config["mattr"] = [f"-{f}" for f in hidden]
    # Records are only valid for the CPU model and the extensions their code was built with.
    key = f"x86_64-{cpu}-{_features_tag(have)}"
    return TargetSpec("x86", tvm.target.Target(config), "cpu", key, None,
                      lanes=vector_lanes(have), features=have)


def _features_tag(features: tuple[str, ...]) -> str:
    """A short name for a feature set: the widest extension and a hash of the rest."""
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4.2") if f in features), "base")
    digest = hashlib.sha1(",".join(sorted(features)).encode()).hexdigest()[:6]
    return f"{widest.replace('.', '')}-{digest}"


def _aarch64(tvm: Any, mcpu: str | None, num_cores: int | None) -> TargetSpec:
    config: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                              "num-cores": num_cores or AARCH64_DEFAULT_CORES}
    if mcpu:
        config["mcpu"] = mcpu
    return TargetSpec("aarch64", tvm.target.Target(config), "cpu",
                      f"aarch64-{mcpu or 'generic'}", AARCH64_CROSS_COMPILER, lanes=4,
                      features=("neon",))


def _cuda(tvm: Any, arch: str) -> TargetSpec:
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
        raise TargetError(f"CUDA architecture {arch!r} is not of the form sm_80, sm_90, sm_90a")
    host = tvm.target.Target({"kind": "llvm"})
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host=host)
    return TargetSpec("cuda", target, "cuda", f"cuda-{arch}", None, arch)
