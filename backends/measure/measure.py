"""measure(backend, model, inputs): one entry point for the latency of a model on torch
(eager), onnxruntime and TVM, all with the same warm-up, sampling and statistics."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from prunepass.backends.measure.latency import LatencyStats, summarize, time_repeats
from prunepass.backends.measure.torch_export import eval_mode, export_onnx
from prunepass.errors import PrunepassError

BACKENDS = ("torch", "ort", "tvm")


def measure(backend: str, model: Any, inputs: Sequence[Any], *, repeats: int = 20,
            number: int = 10, warmup: int = 5, **options: Any) -> LatencyStats:
    """Latency of ``model`` on ``inputs`` (a tuple of torch tensors); ``options`` are
    those of ``runner``.

    On a busy machine, OpenMP threads that spin while other processes hold the cores can slow
    torch 10-20x (measured here: resnet18 ~800 ms with 2 threads, ~38 ms with 1): compare
    backends at threads=1 there."""
    with _torch_state(model if backend == "torch" else None):
        run = runner(backend, model, inputs, **options)
        samples = time_repeats(run, repeats=repeats, number=number, warmup=warmup,
                               sync=run.sync)
    return summarize(backend, samples, number=number, warmup=warmup, device=run.device)


@contextmanager
def _torch_state(model: Any) -> Iterator[None]:
    """Give back the caller's torch threads and the module's training mode."""
    if model is None:
        yield
        return
    import torch
    threads = torch.get_num_threads()
    with eval_mode(model):
        try:
            yield
        finally:
            torch.set_num_threads(threads)


class Runner:
    """One inference of a prepared model: compiled, session opened, inputs in place."""

    def __init__(self, fn: Callable[[], Any], device: str = "cpu",
                 sync: Callable[[], None] | None = None, keep: Any = None) -> None:
        self.fn, self.device, self.sync = fn, device, sync
        self._keep = keep  # what must outlive the runner (a TVM library's folder)

    def __call__(self) -> Any:
        return self.fn()


def runner(backend: str, model: Any, inputs: Sequence[Any], *, threads: int | None = None,
           **options: Any) -> Runner:
    """Prepare ``model`` for timing on ``backend``.

    "torch": a torch.nn.Module, put in eval mode and run eagerly under inference_mode;
        threads sets torch's intra-op threads for the whole process (torch has no per-call
        setting).
    "ort": an ONNX path or ModelProto, or a torch module (exported to ONNX first);
        threads: intra-op.
    "tvm": a torch module or ONNX path, compiled first; options are those of
        prunepass.backends.tvm.compile_model (target, trials, max_trials_per_task, database,
        rpc, route); threads comes from TVM_NUM_THREADS, read when TVM starts. A
        CompiledModel or LoadedModel is used as it is (no options). On a CUDA device each
        sample ends with a device synchronisation, as torch's CUDA runner does."""
    if backend == "torch":
        return _torch_runner(model, inputs, threads)
    if backend == "ort":
        return _ort_runner(model, inputs, threads)
    if backend == "tvm":
        return _tvm_runner(model, inputs, **options)
    raise PrunepassError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _torch_runner(model: Any, inputs: Sequence[Any], threads: int | None) -> Runner:
    import torch
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    if threads:
        torch.set_num_threads(threads)
    import copy
    model = copy.deepcopy(model).eval()  # timed in eval mode; the caller's flags stay theirs

    def fn() -> Any:
        with torch.inference_mode():
            return model(*inputs)
    return Runner(fn, str(device), torch.cuda.synchronize if device.type == "cuda" else None)


def _ort_runner(model: Any, inputs: Sequence[Any], threads: int | None) -> Runner:
    import numpy as np
    import onnxruntime as ort

    arrays = [np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
              for t in inputs]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="prunepass-ort-") as tmp:
        if hasattr(model, "SerializeToString"):  # an onnx.ModelProto
            source: Any = model.SerializeToString()
        elif isinstance(model, (str, Path)):
            source = str(model)
        else:
            source = str(export_onnx(model, tuple(inputs), Path(tmp) / "model.onnx"))
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
    return Runner(lambda: session.run(None, feed))


def _tvm_runner(model: Any, inputs: Sequence[Any], out_dir: str | Path | None = None,
                **options: Any) -> Runner:
    from prunepass.backends.tvm.compile import CompiledModel, compile_model
    from prunepass.backends.tvm.runtime import LoadedModel
    tmp = None
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        if isinstance(model, CompiledModel):
            compiled = model
        else:
            if out_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="prunepass-tvm-")
                out_dir = tmp.name
            tuning = options.get("trials", 0) > 0 or bool(options.get("max_trials_per_task"))
            compiled = compile_model(model, tuple(inputs), out_dir=out_dir,
                                     progress=options.pop("progress", tuning), **options)
        loaded = compiled.load()
    args = loaded.to_device(inputs)
    main = loaded.vm["main"]
    # the VM returns once the kernels are queued: on a GPU the clock must wait for them
    sync = loaded.device.sync if str(loaded.device).startswith("cuda") else None
    return Runner(lambda: main(*args), str(loaded.device), sync, keep=(tmp, loaded))
