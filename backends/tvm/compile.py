"""Compile a model for a target and export it as a library the TVM runtime loads:
lower -> (tune) -> build -> export_library, with a JSON description beside it."""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.tvm.errors import BackendError
from prunepass.backends.tvm.layout import LayoutReport, convert_layout
from prunepass.backends.tvm.library.offload import OffloadReport
from prunepass.backends.tvm.lower import LoweredModel, TensorSpec, lower_model
from prunepass.backends.tvm.nvrtc import compile_cubin, cuda_sources
from prunepass.backends.tvm.rpc import RPCTracker
from prunepass.backends.tvm.runtime import LoadedModel, load_library
from prunepass.backends.tvm.targets import TargetSpec, resolve_target
from prunepass.backends.tvm.tune import TuneReport, tune_model

FORMAT = "prunepass-tvm-artifact/1"


@dataclass
class CompiledModel:
    """An exported library and what is needed to call it."""
    library: Path              # load with tvm.runtime.load_module, run with relax.VirtualMachine
    target: TargetSpec
    inputs: list[TensorSpec]
    route: str
    device_code: list[Path] = field(default_factory=list)  # CUDA: cubins for target.cuda_arch
    tuning: TuneReport | None = None
    layout: LayoutReport | None = None
    offload: OffloadReport | None = None  # target.library: what went to the library kernels
    library_files: list[Path] = field(default_factory=list)  # to ship beside the library

    @property
    def metadata(self) -> Path:
        return self.library.with_suffix(".json")

    def load(self) -> LoadedModel:
        """The model as a callable on this machine: ``load()(*arrays) -> list[np.ndarray]``."""
        return load_library(self.library, self.target.device, self.inputs,
                            kernels=self.kernels)

    @property
    def kernels(self) -> list[str]:
        """The library kernel functions (prunepass.blas.*) the model calls."""
        return self.offload.functions if self.offload else []


def compile_model(model: Any, example_inputs: Sequence[Any] | Any = None,
                  target: str | TargetSpec = "x86", out_dir: str | Path = "out/tvm", *,
                  trials: int = 0, max_trials_per_task: int | None = None,
                  minutes: float | None = None, database: str | Path | None = None,
                  route: str = "auto",
                  rpc: RPCTracker | None = None, name: str = "model", progress: bool = True,
                  ) -> CompiledModel:
    """Compile ``model`` for ``target`` into ``out_dir/<name>.so`` (+ ``<name>.json``).

    model: a torch.nn.Module (e.g. ``prunepass.prune(...).model``), an ExportedProgram, or an
        ONNX file path / ModelProto; example_inputs: the torch model's inputs (ignored for ONNX).
    target: "x86" (host CPU, -mcpu detected), "aarch64" (cross-compiled with
        aarch64-linux-gnu-gcc), "cuda" / "cuda:sm_90", or a TargetSpec from resolve_target.
    trials: MetaSchedule budget; 0 builds untuned (on a CPU: default_schedule.py's
        parallel, vectorized loops; TVM's own convolutions and matmuls stay slow).
    minutes: a tuning budget in wall-clock minutes for the whole model instead, spent where
        the model's latency is (see tune_model).
    database: tuning database folder (default with trials: out_dir/tuning); share one
        between compiles to reuse measurements. Given with trials=0, its records apply.
    rpc: where to measure while tuning a target this machine cannot run.

    A target with a library (resolve_target("x86", library="openblas")) runs the model's
    static float32 matmuls and linear layers through that library's kernels: they are built
    (once, cached) and loaded here, and copied beside the library (library_files)."""
    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    spec.check_toolchain()
    extension = _library_extension(spec)  # before the long part: a missing compiler fails now
    if (trials > 0 or max_trials_per_task or minutes) and database is None:
        database = Path(out_dir) / "tuning"
    lowered = lower_model(model, example_inputs, route)
    offload = OffloadReport() if spec.library else None
    mod, layout = prepare_with_report(lowered.mod, spec, offload)
    db, report = None, None
    if database is not None:
        db, report = tune_model(mod, spec, database, trials=trials,
                                max_trials_per_task=max_trials_per_task, minutes=minutes,
                                rpc=rpc, progress=progress)
    executable = build(mod, spec, db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    compiled = CompiledModel(out / f"{name}.so", spec, lowered.inputs, lowered.route,
                             tuning=report, layout=layout, offload=offload)
    linked = extension if compiled.kernels else None  # nothing offloaded: nothing to ship
    export(executable, spec, compiled.library, linked)
    if linked is not None:
        from prunepass.backends.tvm.library import bundle
        compiled.library_files = bundle(linked, out)
    if spec.name == "cuda":
        for index, source in enumerate(cuda_sources(executable)):
            path = out / f"{name}.{spec.cuda_arch}{f'.{index}' if index else ''}.cubin"
            path.write_bytes(compile_cubin(source, spec.cuda_arch))
            compiled.device_code.append(path)
    _write_metadata(compiled, lowered, linked)
    return compiled


def prepare(mod: Any, spec: TargetSpec) -> Any:
    """The inference form of the module that both tuning and building start from, so the
    kernels tuning extracts are the kernels the build looks up: batch norms decomposed and
    folded, convolutions in the target's layout (spec.layout)."""
    return prepare_with_report(mod, spec)[0]


def prepare_with_report(mod: Any, spec: TargetSpec, offload: OffloadReport | None = None
                        ) -> tuple[Any, LayoutReport]:
    """prepare(), and what the layout conversion did; with spec.library, what went to the
    library kernels is added to ``offload``."""
    import tvm
    from tvm import relax
    with spec.target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.transform.CanonicalizeBindings(),
                                        relax.transform.FoldConstant()])(mod)
        report = offload if offload is not None else OffloadReport()
        direct = _direct_convolutions(spec)
        if spec.library:  # on the high-level matmuls, before convert_layout legalizes them
            from prunepass.backends.tvm.library import offload_dense
            kinds = [k for k in spec.library_ops if not (direct and k == "conv2d")]
            mod = offload_dense(mod, kinds=kinds, report=report)
        if not direct:
            mod, layout = convert_layout(mod, spec.layout, spec.lanes)
        else:
            # oneDNN's convolutions: the model in NHWC first, then the convolutions (with
            # what follows them) matched on the high-level operators
            from prunepass.backends.tvm.library.conv_offload import offload_conv_nhwc
            _library_extension(spec)  # the oneDNN kernels pack the weights
            mod, layout = convert_layout(mod, spec.layout, spec.lanes, legalize=False,
                                         grouped=True)
            mod = offload_conv_nhwc(mod, report=report)
        if spec.device == "cpu":  # last: the layout and library passes match the operators
            from prunepass.backends.tvm.fast_math import fast_math
            mod = fast_math(mod)
        return mod, layout


def _direct_convolutions(spec: TargetSpec) -> bool:
    """Whether the target's convolutions go to oneDNN's convolution primitive (a oneDNN
    library, conv2d among its operators, NHWC), rather than im2col and a GEMM."""
    return (spec.library == "onednn" and "conv2d" in spec.library_ops
            and spec.layout == "nhwc")


_EXTENSIONS: dict[str, Path] = {}  # library -> the extension built and loaded in this process


def _library_extension(spec: TargetSpec) -> Path | None:
    """With spec.library: the library kernels built (cached on disk) and loaded into this
    process, once per process (a build's key hashes the sources and asks the compiler its
    version)."""
    if not spec.library:
        return None
    if spec.library not in _EXTENSIONS:
        from prunepass.backends.tvm.library import build_extension, load_extension
        _EXTENSIONS[spec.library] = load_extension(build_extension(backend=spec.library))
    return _EXTENSIONS[spec.library]


def build(mod: Any, spec: TargetSpec, database: Any | None = None) -> Any:
    """Build a Relax module; with a database, its tuned schedules replace the defaults. On a
    CPU, kernels without a tuning record get prunepass's default schedule (parallel and
    vectorized: default_schedule.py) instead of TVM's single-threaded loops."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    try:
        if spec.device == "cpu":
            return _build_cpu(mod, spec, database)
        if database is None:
            return tvm.compile(mod, target=spec.target)
        return ms.relax_integration.compile_relax(database, mod, spec.target, params=None)
    except Exception as err:  # TVM raises InternalError, ValueError, TypeError, ...
        raise BackendError(f"TVM could not build the model for {spec.name}: "
                           f"{_build_failure(str(err))}") from err


def _build_cpu(mod: Any, spec: TargetSpec, database: Any | None) -> Any:
    """TVM's CPU pipeline with two steps between fusion and lowering: the database's
    schedules (as compile_relax applies them, after the same fusion tune.fuse runs), then
    the default schedule for every kernel still unscheduled."""
    import contextlib

    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # relax.pipeline's lookup
    # of these fails in TVM 0.27 (AttributeError), so they are taken from their module
    from prunepass.backends.tvm.default_schedule import default_schedule_pass
    from prunepass.backends.tvm.tune import fuse
    target = spec.target

    @tvm.transform.module_pass(opt_level=0, name="prunepass.CPUPipeline")
    def pipeline(mod: Any, _ctx: Any) -> Any:
        mod = fuse(mod, spec)
        if database is not None:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        mod = default_schedule_pass(target)(mod)
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(target)
                                        + cpu.finalize_passes(target))(mod)

    with target, (database if database is not None else contextlib.nullcontext()), \
            tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=pipeline)


def _build_failure(message: str) -> str:
    """TVM's first line, and the operator it names on a later "Offending call:" line."""
    lines = message.splitlines() or [""]
    call = next((lines[i + 1] for i, line in enumerate(lines[:-1])
                 if line.startswith("Offending call")), "")
    op = re.match(r"\s*([\w.]+)\(", call)
    return lines[0] + (f" (operator {op.group(1)})" if op else "")


def export(executable: Any, spec: TargetSpec, path: Path, extension: Path | None = None
           ) -> None:
    """export_library; with ``extension`` (the library kernels), the library depends on it
    and finds it in its own folder."""
    from tvm.support import cc
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    options = {}
    if extension is not None:
        from prunepass.backends.tvm.library import link_options
        options["options"] = link_options(extension)
    try:
        if fcompile is None:
            executable.export_library(str(path), **options)
        else:
            executable.export_library(str(path), fcompile=fcompile, **options)
    except RuntimeError as err:
        raise BackendError(f"exporting the {spec.name} library {path} failed: "
                           f"{str(err).splitlines()[0]}") from err


def _write_metadata(compiled: CompiledModel, lowered: LoweredModel,
                    extension: Path | None = None) -> None:
    import tvm
    data = {
        "format": FORMAT,
        "library": compiled.library.name,
        "target": {"name": compiled.target.name, "tvm": str(compiled.target.target),
                   "key": compiled.target.key, "device": compiled.target.device,
                   "features": list(compiled.target.features)},
        "inputs": [asdict(i) for i in lowered.inputs],
        "route": lowered.route,
        "device_code": [p.name for p in compiled.device_code],
        "tuning": asdict(compiled.tuning) if compiled.tuning else None,
        "layout": asdict(compiled.layout) if compiled.layout else None,
        "library_kernels": _library_metadata(compiled, extension),
        "tvm_version": tvm.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    compiled.metadata.write_text(json.dumps(data, indent=2) + "\n")


def _library_metadata(compiled: CompiledModel, extension: Path | None) -> dict | None:
    """What went to the target's library kernels, what stayed in TVM and why, and what the
    artifact needs beside the library to run."""
    if compiled.offload is None:
        return None
    from prunepass.backends.tvm.library import LIBRARY_NAME, describe
    info = describe(extension) if extension is not None else {}
    return {"library": compiled.target.library, "backend": info.get("backend"),
            "blas_version": info.get("version"), "extension": LIBRARY_NAME,
            "functions": compiled.kernels,
            "files": [p.name for p in compiled.library_files],
            "offloaded": list(compiled.offload.offloaded), "kept": list(compiled.offload.kept)}
