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

    @property
    def metadata(self) -> Path:
        return self.library.with_suffix(".json")

    def load(self) -> LoadedModel:
        """The model as a callable on this machine: ``load()(*arrays) -> list[np.ndarray]``."""
        return load_library(self.library, self.target.device, self.inputs)


def compile_model(model: Any, example_inputs: Sequence[Any] | Any = None,
                  target: str | TargetSpec = "x86", out_dir: str | Path = "out/tvm", *,
                  trials: int = 0, max_trials_per_task: int | None = None,
                  database: str | Path | None = None, route: str = "auto",
                  rpc: RPCTracker | None = None, name: str = "model", progress: bool = True,
                  ) -> CompiledModel:
    """Compile ``model`` for ``target`` into ``out_dir/<name>.so`` (+ ``<name>.json``).

    model: a torch.nn.Module (e.g. ``prunepass.prune(...).model``), an ExportedProgram, or an
        ONNX file path / ModelProto; example_inputs: the torch model's inputs (ignored for ONNX).
    target: "x86" (host CPU, -mcpu detected), "aarch64" (cross-compiled with
        aarch64-linux-gnu-gcc), "cuda" / "cuda:sm_90", or a TargetSpec from resolve_target.
    trials: MetaSchedule budget; 0 builds with default schedules (slow on CPU).
    database: tuning database folder (default with trials: out_dir/tuning); share one
        between compiles to reuse measurements. Given with trials=0, its records apply.
    rpc: where to measure while tuning a target this machine cannot run."""
    spec = target if isinstance(target, TargetSpec) else resolve_target(target)
    spec.check_toolchain()
    if (trials > 0 or max_trials_per_task) and database is None:
        database = Path(out_dir) / "tuning"
    lowered = lower_model(model, example_inputs, route)
    mod = prepare(lowered.mod, spec)
    db, report = None, None
    if database is not None:
        db, report = tune_model(mod, spec, database, trials=trials,
                                max_trials_per_task=max_trials_per_task, rpc=rpc,
                                progress=progress)
    executable = build(mod, spec, db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    compiled = CompiledModel(out / f"{name}.so", spec, lowered.inputs, lowered.route,
                             tuning=report)
    export(executable, spec, compiled.library)
    if spec.name == "cuda":
        for index, source in enumerate(cuda_sources(executable)):
            path = out / f"{name}.{spec.cuda_arch}{f'.{index}' if index else ''}.cubin"
            path.write_bytes(compile_cubin(source, spec.cuda_arch))
            compiled.device_code.append(path)
    _write_metadata(compiled, lowered)
    return compiled


def prepare(mod: Any, spec: TargetSpec) -> Any:
    """The inference form of the module that both tuning and building start from, so the
    kernels tuning extracts are the kernels the build looks up."""
    import tvm
    from tvm import relax
    with spec.target:
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.transform.FoldConstant()])(mod)


def build(mod: Any, spec: TargetSpec, database: Any | None = None) -> Any:
    """Build a Relax module; with a database, its tuned schedules replace the defaults."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    try:
        if database is None:
            return tvm.compile(mod, target=spec.target)
        return ms.relax_integration.compile_relax(database, mod, spec.target, params=None)
    except Exception as err:  # TVM raises InternalError, ValueError, TypeError, ...
        raise BackendError(f"TVM could not build the model for {spec.name}: "
                           f"{_build_failure(str(err))}") from err


def _build_failure(message: str) -> str:
    """TVM's first line, and the operator it names on a later "Offending call:" line."""
    lines = message.splitlines() or [""]
    call = next((lines[i + 1] for i, line in enumerate(lines[:-1])
                 if line.startswith("Offending call")), "")
    op = re.match(r"\s*([\w.]+)\(", call)
    return lines[0] + (f" (operator {op.group(1)})" if op else "")


def export(executable: Any, spec: TargetSpec, path: Path) -> None:
    from tvm.support import cc
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    try:
        if fcompile is None:
            executable.export_library(str(path))
        else:
            executable.export_library(str(path), fcompile=fcompile)
    except RuntimeError as err:
        raise BackendError(f"exporting the {spec.name} library {path} failed: "
                           f"{str(err).splitlines()[0]}") from err


def _write_metadata(compiled: CompiledModel, lowered: LoweredModel) -> None:
    import tvm
    data = {
        "format": FORMAT,
        "library": compiled.library.name,
        "target": {"name": compiled.target.name, "tvm": str(compiled.target.target),
                   "key": compiled.target.key, "device": compiled.target.device},
        "inputs": [asdict(i) for i in lowered.inputs],
        "route": lowered.route,
        "device_code": [p.name for p in compiled.device_code],
        "tuning": asdict(compiled.tuning) if compiled.tuning else None,
        "tvm_version": tvm.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    compiled.metadata.write_text(json.dumps(data, indent=2) + "\n")
