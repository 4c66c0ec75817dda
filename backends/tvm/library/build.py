"""Compile blas_kernels.cc (and, for oneDNN, dnnl_conv.cc) into libprunepass_blas.so against
tvm-ffi's headers and a BLAS: OpenBLAS from PyPI (scipy-openblas32), or oneDNN from PyPI
(onednn-devel-cpu-gomp) or the system (Debian's libdnnl-dev)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from prunepass.backends.tvm.errors import LibraryError, ToolchainError

SOURCE = Path(__file__).with_name("blas_kernels.cc")
DNNL_SOURCE = Path(__file__).with_name("dnnl_conv.cc")  # oneDNN builds: direct convolutions
LIBRARY_NAME = "libprunepass_blas.so"  # one name for every backend: a model links to this
BACKENDS = ("openblas", "onednn")
OPENBLAS_PACKAGE = "scipy-openblas32"
OPENBLAS_INSTALL = f"pip install {OPENBLAS_PACKAGE} (or pip install 'prunepass[blas]')"
ONEDNN_PACKAGE = "onednn-devel-cpu-gomp"
ONEDNN_INSTALL = (f"pip install {ONEDNN_PACKAGE} (or pip install 'prunepass[onednn]'), "
                  f"apt-get install libdnnl-dev, or pass dnnl_prefix=")
CXX_INSTALL = "apt-get install g++ (Debian/Ubuntu), or set CXX to a C++17 compiler"
# The soname lets a model linked against one copy of the extension (link_options) use any
# copy already loaded in the process: a second copy would register prunepass.blas.* again,
# which tvm-ffi answers by aborting the process.
LINK_FLAGS = (f"-Wl,-soname,{LIBRARY_NAME}",)


@dataclass(frozen=True)
class Blas:
    """Where one backend's headers and shared library are."""
    backend: str          # "openblas" | "onednn"
    include_dir: str
    lib_dir: str
    lib_file: str         # the shared library the extension needs at run time
    link: tuple[str, ...]
    defines: tuple[str, ...] = ()
    version: str = ""


def cache_dir() -> Path:
    """~/.cache/prunepass/tvm-library (XDG_CACHE_HOME respected)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "prunepass" / "tvm-library"


def find_compiler() -> str:
    """$CXX, else g++, c++ or clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError(f"building the TVM library kernels needs a C++ compiler "
                         f"({' or '.join(candidates)} not found); {CXX_INSTALL}")


def dnnl_prefixes() -> list[Path]:
    """Where oneDNN is looked for: this Python environment (the PyPI wheel installs into its
    include/ and lib/), then /usr."""
    import sys
    return [Path(sys.prefix), Path("/usr")]


def find_blas(backend: str = "auto", dnnl_prefix: str | Path | None = None) -> Blas:
    """The BLAS for ``backend``: "openblas" (the scipy-openblas32 wheel), "onednn" (dnnl.h and
    libdnnl.so under dnnl_prefix, default dnnl_prefixes()), or "auto" (oneDNN where it is
    installed, else OpenBLAS)."""
    if backend not in ("auto", *BACKENDS):
        raise LibraryError(f"unknown library backend {backend!r}: use auto, "
                           f"{', '.join(BACKENDS)}")
    if backend in ("auto", "onednn"):
        prefixes = dnnl_prefixes() if dnnl_prefix is None else [Path(dnnl_prefix)]
        for prefix in prefixes:
            found = _find_onednn(prefix)
            if found is not None:
                return found
        if backend == "onednn":
            raise LibraryError(f"oneDNN not found under {' or '.join(map(str, prefixes))} "
                               f"(include/oneapi/dnnl/dnnl.h and libdnnl.so); {ONEDNN_INSTALL}")
    return _find_openblas()


def _find_openblas() -> Blas:
    try:
        import scipy_openblas32 as ob
    except ImportError as err:
        raise LibraryError(f"the openblas library backend needs OpenBLAS with its headers "
                           f"from PyPI; {OPENBLAS_INSTALL}") from err
    lib_dir = Path(ob.get_lib_dir())
    lib_file = lib_dir / ob.get_library(fullname=True)
    if not (Path(ob.get_include_dir()) / "cblas.h").exists() or not lib_file.exists():
        raise LibraryError(f"{OPENBLAS_PACKAGE} at {lib_dir.parent} lacks cblas.h or "
                           f"{lib_file.name}; reinstall it: {OPENBLAS_INSTALL}")
    return Blas("openblas", ob.get_include_dir(), str(lib_dir), str(lib_file),
                (f"-L{lib_dir}", f"-l{ob.get_library()}"), (), ob.__version__)


def _find_onednn(prefix: Path) -> Blas | None:
    header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.h"
    if not header.exists():
        return None
    for lib_dir in (prefix / "lib" / "x86_64-linux-gnu", prefix / "lib64", prefix / "lib",
                    prefix / "lib" / "aarch64-linux-gnu"):
        if (lib_dir / "libdnnl.so").exists():
            version = _dnnl_version(prefix / "include" / "oneapi" / "dnnl" / "dnnl_version.h")
            return Blas("onednn", str(prefix / "include"), str(lib_dir),
                        str(_soname_file(lib_dir, "libdnnl.so")),
                        (f"-L{lib_dir}", "-ldnnl", "-fopenmp"),
                        ("-DPRUNEPASS_BLAS_DNNL", "-fopenmp"), version)
    return None


def _soname_file(lib_dir: Path, name: str) -> Path:
    """The file a program linked with ``name`` loads: its soname, libdnnl.so.3 for
    libdnnl.so (the shortest versioned name beside it), so a copy of it beside a model is
    found under that name."""
    versioned = sorted(lib_dir.glob(name + ".*"), key=lambda p: len(p.name))
    return versioned[0] if versioned else (lib_dir / name).resolve()


def _dnnl_version(header: Path) -> str:
    try:
        fields = {line.split()[1]: line.split()[2] for line in header.read_text().splitlines()
                  if line.startswith("#define DNNL_VERSION_") and len(line.split()) > 2}
    except OSError:
        return ""
    return ".".join(fields.get(f"DNNL_VERSION_{k}", "?") for k in ("MAJOR", "MINOR", "PATCH"))


def build_extension(out_dir: str | Path | None = None, backend: str = "auto", *,
                    dnnl_prefix: str | Path | None = None, force: bool = False) -> Path:
    """Compile the kernels into ``out_dir/libprunepass_blas.so`` (default: a folder in
    cache_dir() keyed by the source, compiler, tvm-ffi and BLAS) and return its path; reuses
    a previous build with the same key unless ``force``. Writes libprunepass_blas.json beside
    it (backend, BLAS library, versions). Raises ToolchainError without a C++ compiler and
    LibraryError without the BLAS, each naming what to install."""
    import tvm_ffi
    from tvm_ffi import libinfo

    cxx = find_compiler()
    blas = find_blas(backend, dnnl_prefix)
    ffi_include = libinfo.find_include_path()
    ffi_lib = Path(libinfo.find_libtvm_ffi())
    sources = [SOURCE, DNNL_SOURCE] if blas.backend == "onednn" else [SOURCE]
    key = hashlib.sha256("\0".join([
        *(source.read_text() for source in sources), cxx, _compiler_version(cxx),
        tvm_ffi.__version__, str(ffi_lib),
        json.dumps(asdict(blas)), *LINK_FLAGS]).encode()).hexdigest()[:16]
    out = Path(out_dir) if out_dir is not None else cache_dir() / f"{blas.backend}-{key}"
    library = out / LIBRARY_NAME
    info = library.with_suffix(".json")
    if not force and library.exists() and info.exists():
        try:
            if json.loads(info.read_text()).get("key") == key:
                return library
        except (OSError, ValueError):
            pass  # a damaged description: build again
    out.mkdir(parents=True, exist_ok=True)
    rpath = ":".join(["$ORIGIN", blas.lib_dir, str(ffi_lib.parent)])
    with tempfile.NamedTemporaryFile(dir=out, suffix=".so.tmp", delete=False) as tmp:
        partial = Path(tmp.name)
    command = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", *blas.defines,
               f"-I{ffi_include}", f"-I{libinfo.find_dlpack_include_path()}",
               f"-I{blas.include_dir}", *map(str, sources), "-o", str(partial),
               f"-L{ffi_lib.parent}", "-ltvm_ffi", *blas.link, "-ldl",
               f"-Wl,-rpath,{rpath}", *LINK_FLAGS]
    names = " + ".join(source.name for source in sources)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        partial.unlink(missing_ok=True)
        raise ToolchainError(f"{Path(cxx).name} could not compile {names}: {err}") from err
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((line for line in done.stderr.splitlines() if "error" in line),
                     done.stderr.strip()[:300])
        raise ToolchainError(f"{Path(cxx).name} failed on {names} ({blas.backend}): "
                             f"{first}")
    os.replace(partial, library)  # atomic: a concurrent build never sees half a library
    info.write_text(json.dumps({"key": key, "library": LIBRARY_NAME, **asdict(blas),
                                "compiler": cxx, "tvm_ffi": tvm_ffi.__version__},
                               indent=2) + "\n")
    return library


def describe(library: str | Path) -> dict:
    """The JSON build_extension wrote beside ``library`` ({} when there is none)."""
    try:
        return json.loads(Path(library).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return ""
