"""Compilation targets by name: the host x86 CPU, aarch64 Linux (cross-compiled), and CUDA GPUs."""
from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from typing import Any

from prunepass.backends.tvm.dependency import import_tvm
from prunepass.backends.tvm.errors import TargetError, ToolchainError
from prunepass.backends.tvm.nvrtc import find_cuda_toolkit

TARGET_NAMES = ("x86", "aarch64", "cuda")
ALIASES = {"host": "x86", "llvm": "x86", "x86_64": "x86", "arm64": "aarch64"}
AARCH64_CROSS_COMPILER = "aarch64-linux-gnu-gcc"
DEFAULT_CUDA_ARCH = "sm_80"
AARCH64_DEFAULT_CORES = 4  # what MetaSchedule plans threads for when the board is not told


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target, how to export it, and where its code runs."""
    name: str                    # "x86" | "aarch64" | "cuda"
    target: Any                  # tvm.target.Target
    device: str                  # "cpu" | "cuda": the runtime device kind
    key: str                     # names the tuning database folder and the artifact
    cross_compiler: str | None   # executable for export_library, None: the host's cc
    cuda_arch: str | None = None

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


def resolve_target(name: str, *, mcpu: str | None = None, cuda_arch: str | None = None,
                   num_cores: int | None = None) -> TargetSpec:
    """Resolve a target name. ``name`` is "x86" (the host CPU; aliases host, llvm), "aarch64"
    (64-bit ARM Linux, cross-compiled), or "cuda" (optionally "cuda:sm_90")."""
    tvm = import_tvm()
    base, _, suffix = name.strip().lower().partition(":")
    base = ALIASES.get(base, base)
    if base == "cuda":
        return _cuda(tvm, suffix or cuda_arch or DEFAULT_CUDA_ARCH)
    if suffix:
        raise TargetError(f"target {name!r}: only cuda takes a suffix (cuda:sm_90)")
    if base == "x86":
        return _x86(tvm, mcpu, num_cores)
    if base == "aarch64":
        return _aarch64(tvm, mcpu, num_cores)
    raise TargetError(f"unknown target {name!r}: use one of {', '.join(TARGET_NAMES)} "
                      f"(or cuda:sm_XX)")


def _x86(tvm: Any, mcpu: str | None, num_cores: int | None) -> TargetSpec:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise TargetError(f"target 'x86' is the host CPU, but this host is {platform.machine()}; "
                          f"build there, or use 'aarch64' for ARM")
    cpu = mcpu or host_cpu()
    # MetaSchedule plans parallel loops for num-cores; tuning refuses an llvm target without it.
    cores = num_cores or os.cpu_count() or 1
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": cores})
    return TargetSpec("x86", target, "cpu", f"x86_64-{cpu}", None)


def _aarch64(tvm: Any, mcpu: str | None, num_cores: int | None) -> TargetSpec:
    config: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                              "num-cores": num_cores or AARCH64_DEFAULT_CORES}
    if mcpu:
        config["mcpu"] = mcpu
    return TargetSpec("aarch64", tvm.target.Target(config), "cpu",
                      f"aarch64-{mcpu or 'generic'}", AARCH64_CROSS_COMPILER)


def _cuda(tvm: Any, arch: str) -> TargetSpec:
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
        raise TargetError(f"CUDA architecture {arch!r} is not of the form sm_80, sm_90, sm_90a")
    host = tvm.target.Target({"kind": "llvm"})
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host=host)
    return TargetSpec("cuda", target, "cuda", f"cuda-{arch}", None, arch)
