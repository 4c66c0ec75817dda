"""Library kernels for the TVM backend: matmuls (Linear, Gemm, attention) and convolutions of a
Relax module run as calls of an optimized GEMM (OpenBLAS from PyPI, or oneDNN from the
system) through a small tvm-ffi extension, libprunepass_blas.so.

    from prunepass.backends.tvm import library
    ext = library.build_extension()                  # cached in ~/.cache/prunepass/tvm-library
    library.load_extension(ext)                      # registers prunepass.blas.*
    mod = library.offload_dense(mod, report=report)  # after FoldConstant, before LegalizeOps
    executable = tvm.compile(mod, target=...)
    executable.export_library(path, options=library.link_options(ext))  # model.so needs ext
    library.bundle(ext, path.parent)                 # ext (and OpenBLAS) beside the model

A deployment loads the model as usual when the extension is linked and bundled; otherwise
it calls load_extension first, and check_loaded(required_libraries(module), ext) turns TVM's
"Cannot find ffi::Function" into an error that names the library to load."""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.tvm.errors import LibraryError
from prunepass.backends.tvm.library.build import (BACKENDS, LIBRARY_NAME, OPENBLAS_INSTALL,
                                                  SOURCE, build_extension, cache_dir,
                                                  describe, find_blas, find_compiler)
from prunepass.backends.tvm.library.offload import (KINDS, PREFIX, OffloadReport,
                                                    offload_dense, required_libraries)

__all__ = [
    "BACKENDS", "KINDS", "LIBRARY_NAME", "LibraryError", "OffloadReport", "PREFIX", "SOURCE",
    "build_extension", "bundle", "cache_dir", "check_loaded", "describe", "find_blas",
    "find_compiler", "link_options", "load_extension", "offload_dense", "required_libraries",
    "share_cores_with_onednn",
]

_LOADED: dict[str, Any] = {}  # path -> CDLL, so the library stays loaded


def share_cores_with_onednn() -> None:
    """Keep TVM's thread pool from spinning after each kernel, unless the user set it: oneDNN's
    OpenMP threads run the convolutions between TVM's kernels on the same cores, and workers
    spinning there took them (mobilenet_v2 with oneDNN's convolutions: 5.8 ms, 4.5 ms without
    the spinning, 2 cores). TVM reads the setting when its pool starts: call this before the
    first model runs."""
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def load_extension(path: str | Path) -> Path:
    """Load the extension into this process (RTLD_GLOBAL), which registers its prunepass.blas.*
    functions with tvm-ffi; loading the same file again does nothing, and so does loading
    another copy of the same build while one is loaded (a second copy would abort the process
    when it registers the functions again; another backend raises LibraryError)."""
    from prunepass.backends.tvm.dependency import import_tvm
    import_tvm()  # the TVM runtime first: the kernels look its thread pool up in the process
    path = Path(path).resolve()
    if str(path) in _LOADED:
        return path
    if not path.exists():
        raise LibraryError(f"the library kernels {path} do not exist; build them with "
                           f"prunepass.backends.tvm.library.build_extension()")
    if _registered_backend() is not None:
        # another copy (a model's bundled one, another build folder) is loaded: loading this
        # one too would register prunepass.blas.* twice, which aborts the process
        _check_backend(path)
        return path
    try:
        _LOADED[str(path)] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise LibraryError(f"cannot load the library kernels {path}: {err}; the BLAS it "
                           f"links must be installed ({OPENBLAS_INSTALL}, or oneDNN for an "
                           f"onednn build)") from err
    if _registered_backend() == "onednn":  # asked of the kernels: a bundled copy has no JSON
        share_cores_with_onednn()
    return path


def _registered_backend() -> str | None:
    """The backend of the kernels registered in this process ("openblas", "onednn"), if any."""
    import tvm_ffi
    backend = tvm_ffi.get_global_func(PREFIX + "backend", allow_missing=True)
    return None if backend is None else str(backend())


def _check_backend(path: Path) -> None:
    wanted, loaded = describe(path).get("backend"), _registered_backend()
    if wanted and loaded and wanted != loaded:
        raise LibraryError(f"the {loaded} library kernels are already loaded in this process, "
                           f"so {path} ({wanted}) cannot be: a process holds one build of "
                           f"{LIBRARY_NAME}; use one backend per process")


def check_loaded(names: Sequence[str], library_path: str | Path | None = None) -> None:
    """Raise LibraryError, naming ``library_path``, if any of the functions ``names`` (from
    required_libraries) is not registered in this process. Call it before creating the
    VirtualMachine, whose own error names only the function."""
    import tvm_ffi
    missing = [n for n in names if tvm_ffi.get_global_func(n, allow_missing=True) is None]
    if not missing:
        return
    where = (f"the library {library_path}" if library_path is not None
             else f"the prunepass library kernels ({LIBRARY_NAME})")
    raise LibraryError(f"the model calls {', '.join(missing)}, provided by {where}, which is "
                       f"not loaded: call prunepass.backends.tvm.library.load_extension"
                       f"({str(library_path) if library_path is not None else '...'!r}) "
                       f"before creating the VirtualMachine, or export the model with "
                       f"link_options() and put the library beside it (bundle())")


def link_options(library: str | Path) -> list[str]:
    """export_library options that make the model .so depend on ``library``
    (libprunepass_blas.so) and find it in its own folder, so loading the model loads the
    kernels: ``executable.export_library(path, options=link_options(ext))``."""
    library = Path(library).resolve()
    return ["-Wl,--no-as-needed", f"-L{library.parent}", f"-l:{library.name}",
            "-Wl,-rpath,$ORIGIN"]


def bundle(library: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the extension and the library it links (OpenBLAS or oneDNN) into ``out_dir``
    (the model's folder); returns the copies. oneDNN's OpenMP (libgomp) comes from the
    target's system (a GCC runtime)."""
    library = Path(library)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    info = describe(library)
    sources = [library]
    if info.get("lib_file") and not info["lib_file"].startswith("/usr/"):  # not the system's
        sources.append(Path(info["lib_file"]))
    for source in sources:
        target = out / source.name
        if source.resolve() != target.resolve():
            # a new file, never one written over: the old one may be mapped in a process
            partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copy2(source, partial)
            os.replace(partial, target)
        copies.append(target)
    return copies
