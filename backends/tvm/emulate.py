"""An emulated aarch64 device on an x86 machine: TVM's RPC server running in an aarch64 user
space (Debian's arm64 python, the aarch64 apache-tvm wheel) under qemu-user, registered with a
tracker like a board would be. Libraries cross-compiled for aarch64 run there and give the
board's answers; their latency is the emulator's, not a board's, and is labelled so.

The user space is built by .ci/aarch64-sysroot.sh (from the package registries) into
$PRUNEPASS_CACHE/aarch64-sysroot (default ~/.cache/prunepass/aarch64-sysroot), or wherever
$PRUNEPASS_AARCH64_SYSROOT points."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from prunepass.backends.tvm.errors import ToolchainError

SYSROOT_ENV = "PRUNEPASS_AARCH64_SYSROOT"
QEMU = "qemu-aarch64"
PYTHON = "usr/bin/python3.11"


def sysroot() -> Path:
    """Where the aarch64 user space is expected (it may not exist)."""
    if os.environ.get(SYSROOT_ENV):
        return Path(os.environ[SYSROOT_ENV])
    cache = os.environ.get("PRUNEPASS_CACHE") or Path.home() / ".cache" / "prunepass"
    return Path(cache) / "aarch64-sysroot"


def check_emulator(root: Path | None = None) -> Path:
    """The user space's root, once qemu-user and a complete user space are there; otherwise
    a ToolchainError that says how to get them."""
    root = root or sysroot()
    if shutil.which(QEMU) is None:
        raise ToolchainError(f"running aarch64 code here needs {QEMU} (Debian: apt-get install "
                             "qemu-user; .ci/aarch64-sysroot.sh installs it)")
    if not (root / ".complete").exists() or not (root / PYTHON).exists():
        raise ToolchainError(f"no aarch64 user space at {root}: build it with "
                             f".ci/aarch64-sysroot.sh {root}")
    return root


def server_command(tracker_host: str, tracker_port: int, key: str, port: int, port_end: int,
                   root: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an emulated aarch64 RPC server for a tracker."""
    root = check_emulator(root)
    args = ("127.0.0.1", port, port_end, False, (tracker_host, tracker_port), key, None, None,
            True, True, None)
    command = [QEMU, "-L", str(root), str(root / PYTHON), "-c", SERVE.format(args=repr(args))]
    env = {**os.environ, "PYTHONPATH": str(root / "site"), "PYTHONNOUSERSITE": "1"}
    return command, env


# tvm.rpc.Server (and python -m tvm.exec.rpc_server) starts its server in a new process of
# sys.executable; without binfmt_misc the kernel cannot exec an aarch64 binary, so the server
# state is built in this process instead (sessions still fork, which qemu-user supports).
# args: host, port, port_end, is_proxy, tracker_addr, key, load_library, custom_addr,
# silent, reuse_addr, timeout.
SERVE = """
from tvm.rpc.server import PopenRPCServerState
state = PopenRPCServerState(*{args})
state.thread.join()
"""


def start_server(tracker_host: str, tracker_port: int, key: str, port: int, port_end: int,
                 root: Path | None = None) -> subprocess.Popen:
    """Start an emulated aarch64 RPC server; stop it with terminate()."""
    command, env = server_command(tracker_host, tracker_port, key, port, port_end, root)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
