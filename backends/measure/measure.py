"""measure(backend, model, inputs): one entry point for the latency of a model on torch
(eager), onnxruntime and TVM, all with the same warm-up, sampling and statistics."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.measure.latency import LatencyStats, summarize, time_repeats
from prunepass.backends.measure.torch_export import eval_mode, export_onnx
from prunepass.errors import PrunepassError

BACKENDS = ("torch", "ort", "tvm")


def measure(backend: str, model: Any, inputs: Sequence[Any], *, repeats: int = 20,
            number: int = 10, warmup: int = 5, **options: Any) -> LatencyStats:
    """Latency of ``model`` on ``inputs`` (a tuple of torch tensors).

    backend "torch": model is a torch.nn.Module, run eagerly under inference_mode;
        option threads: torch's intra-op threads while measuring (default: torch's).
    backend "ort": model is an ONNX path or a torch module (exported to ONNX first);
        option threads: intra-op threads (default: onnxruntime's).
    backend "tvm": model is a torch module or an ONNX path, compiled first; options are those
        of prunepass.backends.tvm.measure_tvm (target, trials, max_trials_per_task, database,
        rpc, route, out_dir).
    On a busy machine, OpenMP threads that spin while other processes hold the cores can slow
    torch 10-20x (measured here: resnet18 ~800 ms with 2 threads, ~38 ms with 1): compare
    backends at threads=1 there."""
    if backend == "torch":
        return _measure_torch(model, inputs, repeats, number, warmup, **options)
    if backend == "ort":
        return _measure_ort(model, inputs, repeats, number, warmup, **options)
    if backend == "tvm":
        from prunepass.backends.tvm.measure import measure_tvm
        return measure_tvm(model, inputs, repeats=repeats, number=number, warmup=warmup,
                           **options)
    raise PrunepassError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _measure_torch(model: Any, inputs: Sequence[Any], repeats: int, number: int,
                   warmup: int, threads: int | None = None) -> LatencyStats:
    import torch
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with eval_mode(model), torch.inference_mode():
            samples = time_repeats(lambda: model(*inputs), repeats=repeats, number=number,
                                   warmup=warmup, sync=sync)
    finally:
        torch.set_num_threads(previous)
    return summarize("torch", samples, number=number, warmup=warmup, device=str(device))


def _measure_ort(model: Any, inputs: Sequence[Any], repeats: int, number: int, warmup: int,
                 threads: int | None = None) -> LatencyStats:
    import numpy as np
    import onnxruntime as ort

    arrays = [np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
              for t in inputs]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="prunepass-ort-") as tmp:
        path = model
        if not isinstance(model, (str, Path)):
            path = export_onnx(model, tuple(inputs), Path(tmp) / "model.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
    samples = time_repeats(lambda: session.run(None, feed), repeats=repeats, number=number,
                           warmup=warmup)
    return summarize("ort", samples, number=number, warmup=warmup, device="cpu")
