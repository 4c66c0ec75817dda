"""Errors and warnings of the TVM backend. Each message names what failed and what to do."""
from __future__ import annotations

from prunepass.errors import PrunepassError


class BackendError(PrunepassError):
    """The TVM backend cannot lower, compile, tune, run or measure the model."""


class UnsupportedOpError(BackendError):
    """TVM's frontend cannot import one or more operators of the model."""

    def __init__(self, ops: list[str], route: str, alternative: str) -> None:
        self.ops = sorted(ops)
        self.route = route
        super().__init__(
            f"TVM's {route} frontend cannot import {', '.join(self.ops)}; {alternative}")


class TargetError(BackendError):
    """An unknown or unusable compilation target."""


class ToolchainError(BackendError):
    """A tool the target needs (a cross compiler, NVRTC and the CUDA headers) is missing."""


class RPCError(BackendError):
    """An RPC tracker or server did not answer in time, or has no device with the key."""


class TuningInterrupted(BackendError):
    """Tuning stopped before its budget was spent; what was measured is in the database."""

    def __init__(self, database: str, measured: int) -> None:
        self.database = database
        self.measured = measured
        super().__init__(
            f"tuning interrupted after {measured} new measurement(s); they are kept in "
            f"{database}: run the same command again to go on from there")


class CorruptDatabaseWarning(UserWarning):
    """A tuning database could not be read; it was moved aside and a fresh one started."""


class LibraryError(BackendError):
    """A library kernel (prunepass.backends.tvm.library) cannot be built, or a model that calls
    one is run without the library that provides it."""
