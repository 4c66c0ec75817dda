"""Latency of a compiled model with TVM's time_evaluator, locally or on an RPC device, in the
same statistics as the torch and onnxruntime reference backends."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.measure.latency import LatencyStats, summarize
from prunepass.backends.tvm.compile import CompiledModel, compile_model
from prunepass.backends.tvm.rpc import RPCTracker, request_session
from prunepass.backends.tvm.runtime import LoadedModel, load_library


def time_loaded(model: LoadedModel, inputs: Sequence[Any], *, repeats: int, number: int,
                warmup: int, backend: str = "tvm") -> LatencyStats:
    """time_evaluator: ``warmup`` untimed calls (TVM adds one of its own), then ``repeats``
    samples, each the mean of ``number`` calls, timed on the device (on the remote for an
    RPC device)."""
    args = model.to_device(inputs)
    if warmup:
        model.vm.time_evaluator("main", model.device, number=warmup, repeat=1)(*args)
    result = model.vm.time_evaluator("main", model.device, number=number, repeat=repeats,
                                     min_repeat_ms=0)(*args)
    return summarize(backend, list(result.results), number=number, warmup=warmup,
                     device=str(model.device))


def measure_compiled(compiled: CompiledModel, inputs: Sequence[Any], *, repeats: int = 20,
                     number: int = 10, warmup: int = 5, rpc: RPCTracker | None = None
                     ) -> LatencyStats:
    """Measure an exported library here, or on a device behind an RPC tracker."""
    if rpc is None:
        return time_loaded(compiled.load(), inputs, repeats=repeats, number=number,
                           warmup=warmup)
    session = request_session(rpc)
    loaded = load_library(compiled.library, compiled.target.device, compiled.inputs, session,
                          kernels=compiled.kernels)
    return time_loaded(loaded, inputs, repeats=repeats, number=number, warmup=warmup,
                       backend=f"tvm@{rpc.key}")


def measure_tvm(model: Any, inputs: Sequence[Any], *, repeats: int = 20, number: int = 10,
                warmup: int = 5, target: str = "x86", trials: int = 0,
                max_trials_per_task: int | None = None, database: str | Path | None = None,
                rpc: RPCTracker | None = None, route: str = "auto",
                out_dir: str | Path | None = None) -> LatencyStats:
    """Compile ``model`` (a torch module or ONNX path) and measure it; the library goes to
    ``out_dir`` (a temporary folder if None)."""
    with tempfile.TemporaryDirectory(prefix="prunepass-tvm-") as tmp:
        tuning = trials > 0 or bool(max_trials_per_task)
        compiled = compile_model(model, tuple(inputs), target, out_dir or tmp, trials=trials,
                                 max_trials_per_task=max_trials_per_task, database=database,
                                 route=route, rpc=rpc, progress=tuning)
        return measure_compiled(compiled, inputs, repeats=repeats, number=number,
                                warmup=warmup, rpc=rpc)
