"""Import TVM with a clear message when it is missing, and refuse known-broken builds
before they crash the process."""
from __future__ import annotations

import importlib.metadata
from types import ModuleType

from prunepass.backends.tvm.errors import BackendError

INSTALL_HINT = "pip install 'prunepass[tvm]'"

# apache-tvm-ffi 0.1.15.post2 segfaults in tvm.ir.save_json, which every MetaSchedule
# database write goes through: a Python error is better than a dead process.
BROKEN_FFI_FOR_TUNING = {"0.1.15.post2"}


def import_tvm() -> ModuleType:
    try:
        import tvm
    except ImportError as err:
        raise BackendError(f"the TVM backend needs Apache TVM ({err}); {INSTALL_HINT}") from err
    return tvm


def check_tuning_dependencies() -> None:
    """MetaSchedule needs a working JSON serializer and xgboost (its default cost model)."""
    ffi = importlib.metadata.version("apache-tvm-ffi")
    if ffi in BROKEN_FFI_FOR_TUNING:
        raise BackendError(f"apache-tvm-ffi {ffi} crashes when MetaSchedule writes its "
                           f"database; {INSTALL_HINT}")
    try:
        import xgboost  # noqa: F401
    except ImportError as err:
        raise BackendError(f"tuning needs xgboost for MetaSchedule's cost model; "
                           f"{INSTALL_HINT}") from err
