"""The TVM backend: lower a (pruned) model to Relax, tune it with MetaSchedule, compile it for
the host CPU, aarch64 or CUDA, export a library for the TVM runtime, and measure its latency
here or on a remote device through TVM's RPC tracker.

    from prunepass.backends.tvm import compile_model
    compiled = compile_model(result.model, (x,), target="x86", out_dir="out/tvm")
    outputs = compiled.load()(x.numpy())
"""
from prunepass.backends.tvm.dependency import import_tvm

import_tvm()  # a clear BackendError, with the install line, when TVM is missing

from prunepass.backends.tvm.channel_table import (LayerShape, channel_latency_table,  # noqa: E402
                                                  staircase)
from prunepass.backends.tvm.compile import CompiledModel, build, compile_model, prepare  # noqa: E402
from prunepass.backends.tvm.errors import (BackendError, CorruptDatabaseWarning,  # noqa: E402
                                           RPCError, TargetError, ToolchainError,
                                           TuningInterrupted, UnsupportedOpError)
from prunepass.backends.tvm.lower import LoweredModel, TensorSpec, lower_model  # noqa: E402
from prunepass.backends.tvm.measure import measure_compiled, measure_tvm, time_loaded  # noqa: E402
from prunepass.backends.tvm.rpc import (LocalRPCPool, RPCTracker, request_session,  # noqa: E402
                                        tracker_summary)
from prunepass.backends.tvm.runtime import LoadedModel, load_compiled, load_library  # noqa: E402
from prunepass.backends.tvm.targets import TARGET_NAMES, TargetSpec, resolve_target  # noqa: E402
from prunepass.backends.tvm.tune import TuneReport, tune_model  # noqa: E402

__all__ = [
    "BackendError", "CompiledModel", "LayerShape", "channel_latency_table", "staircase", "CorruptDatabaseWarning", "LoadedModel", "LocalRPCPool",
    "LoweredModel", "RPCError", "RPCTracker", "TARGET_NAMES", "TargetError", "TargetSpec",
    "TensorSpec", "ToolchainError", "TuneReport", "TuningInterrupted", "UnsupportedOpError",
    "build", "compile_model", "load_compiled", "load_library", "lower_model", "measure_compiled",
    "measure_tvm", "prepare", "request_session", "resolve_target", "time_loaded",
    "tracker_summary", "tune_model",
]
