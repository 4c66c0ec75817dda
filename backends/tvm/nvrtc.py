"""Compile the CUDA kernels of a build to a cubin with NVRTC, without a GPU.

TVM 0.27 embeds CUDA C source in the exported library and compiles it when the library is
loaded on the GPU machine. Compiling it here too proves the device code builds for the
requested architecture and gives a cubin to inspect (cuobjdump, Nsight)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prunepass.backends.tvm.errors import ToolchainError

NVRTC_HINT = ("CUDA device code is compiled with NVRTC: pip install cuda-bindings "
              "nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cuda-cccl (or set CUDA_PATH to a "
              "CUDA toolkit)")


def cuda_sources(executable: Any) -> list[str]:
    """The CUDA C sources of every CUDA module imported by a built executable."""
    sources: list[str] = []

    def walk(module: Any) -> None:
        if module.kind == "cuda":
            sources.append(module.inspect_source(""))
        for child in module.imports:
            walk(child)

    walk(executable.mod if hasattr(executable, "mod") else executable)
    return sources


def compile_cubin(source: str, arch: str) -> bytes:
    """NVRTC-compile CUDA C to a cubin for ``arch`` (e.g. "sm_90")."""
    cuda_path, include_dirs = find_cuda_toolkit()
    from tvm.support import nvcc

    # TVM's NVRTC path locates the toolkit through CUDA_PATH; the pip wheels have no nvcc.
    previous = os.environ.get("CUDA_PATH")
    os.environ["CUDA_PATH"] = str(cuda_path)
    try:
        binary = nvcc.compile_cuda(source, target_format="cubin", arch=arch, compiler="nvrtc",
                                   options=[f"-I{d}" for d in include_dirs])
    except RuntimeError as err:
        raise ToolchainError(f"NVRTC could not compile the CUDA kernels for {arch}: "
                             f"{str(err).splitlines()[0]}; {NVRTC_HINT}") from err
    finally:
        if previous is None:
            del os.environ["CUDA_PATH"]
        else:
            os.environ["CUDA_PATH"] = previous
    return bytes(binary)


def find_cuda_toolkit() -> tuple[Path, list[Path]]:
    """The CUDA root (with include/cuda_runtime.h) and the extra include folders NVRTC needs
    (CCCL's cuda/std headers). Looks at CUDA_PATH, nvcc on PATH, then NVIDIA's pip wheels."""
    candidates: list[Path] = []
    if os.environ.get("CUDA_PATH"):
        candidates.append(Path(os.environ["CUDA_PATH"]))
    nvcc_exe = shutil.which("nvcc")
    if nvcc_exe:
        candidates.append(Path(nvcc_exe).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    try:
        import nvidia  # the namespace package of NVIDIA's pip wheels
        for root in nvidia.__path__:
            candidates += sorted(Path(root).glob("cu1[0-9]"), reverse=True)
            candidates.append(Path(root) / "cuda_runtime")
    except ImportError:
        pass
    for root in candidates:
        if (root / "include" / "cuda_runtime.h").is_file():
            cccl = [d for d in (root / "include" / "cccl",) if (d / "cuda" / "std").is_dir()]
            if cccl or (root / "include" / "cuda" / "std").is_dir():
                return root, cccl
    raise ToolchainError(f"no CUDA headers with CCCL found (looked in "
                         f"{', '.join(str(c) for c in candidates)}); {NVRTC_HINT}")
