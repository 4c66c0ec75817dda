"""The Python entry points: load a model, run a pipeline, re-apply a record."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from prunepass.errors import TraceError
from prunepass.frontends.base import ModelAdapter
from prunepass.pm import AnalysisManager, PassManager
from prunepass.pm.pipeline import parse_pipeline
from prunepass.record import Record

DEFAULT_PIPELINE = "prune-channels<ratio=0.5>,dce"


def load(model: Any, example_inputs: Sequence[Any] | Any = None,
         name: str | None = None, in_place: bool = False) -> ModelAdapter:
    """Trace a model into the IR. ``model`` is a ``torch.nn.Module`` or a
    ``torch.export.ExportedProgram`` (with example inputs: a tuple of positional inputs, a
    dict of keyword inputs, or ``(args, kwargs)``), an ``.onnx`` path or ``onnx.ModelProto``
    (example inputs optional), or an adapter. ``in_place``: transforms change the torch
    model itself rather than a copy."""
    if isinstance(model, ModelAdapter):
        return model
    from pathlib import Path
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        from prunepass.frontends.onnx import OnnxModel
        return OnnxModel.load(model, example_inputs, name)
    if type(model).__name__ == "ModelProto":
        from prunepass.frontends.onnx import OnnxModel
        return OnnxModel.from_proto(model, example_inputs, name)
    if _is_gs_graph(model):  # an onnx-graphsurgeon graph: through its ONNX export
        import onnx_graphsurgeon as gs
        from prunepass.frontends.onnx import OnnxModel
        return OnnxModel.from_proto(gs.export_onnx(model), example_inputs, name or model.name)
    import torch
    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        from prunepass.frontends.torch import TorchModel
        if example_inputs is None and isinstance(model, torch.nn.Module):
            raise TraceError("a torch model needs example_inputs to be traced, e.g. "
                             "(torch.randn(1, 3, 224, 224),) or {'input_ids': ids}")
        return TorchModel.from_module(model, example_inputs, name, in_place=in_place)
    raise TraceError(f"cannot load a {type(model).__name__}: pass a torch.nn.Module, a "
                     "torch.export.ExportedProgram, an .onnx file, an onnx.ModelProto or an "
                     "onnx_graphsurgeon.Graph")


def _is_gs_graph(model: Any) -> bool:
    return type(model).__name__ == "Graph" and type(model).__module__.startswith(
        "onnx_graphsurgeon")


@dataclass
class PruneResult:
    # the native model: the user's own torch class (or, where that does not check out, the
    # pruned graph module: record.output says which and why), or an onnx.ModelProto
    model: Any
    record: Record
    adapter: ModelAdapter


def prune(model: Any, example_inputs: Sequence[Any] | Any = None,
          pipeline: str | PassManager = DEFAULT_PIPELINE, *,
          calibration: Sequence[Any] | None = None,
          loss_fn: Callable[[Any], Any] | None = None,
          check_numerics: bool = False, progress: bool = False,
          energy_profile: str | None = None,
          evaluate: Callable[[Any], float] | None = None,
          in_place: bool = False) -> PruneResult:
    """Run ``pipeline`` on a copy of ``model`` and return the slimmed model and the record.
    The input model is never changed, unless ``in_place=True``: then the torch model itself
    is pruned (no copy of its weights is ever made; the way to prune a model as large as
    memory allows). Another thread must not use the model meanwhile, and if the result falls
    back to the graph module (``record.output``), the model passed in holds pruned tensors
    its own code cannot run: use ``result.model``.

    A torch model comes back as its own class: the same object type with sliced tensors and
    updated size attributes, checked numerically against the pruned graph; where that check
    fails, as the pruned graph module, with the reason in ``record.output["reason"]``.

    calibration: inputs for data-driven passes (Taylor importance); default example_inputs.
    loss_fn: maps model outputs to a scalar loss for Taylor importance.
    check_numerics: after each prune, compare the result with the masked original.
    energy_profile: a hardware profile name or YAML path; the record then carries modelled
    energy before and after.
    evaluate: ``evaluate(module) -> float``, higher is better, for passes that score models
    (``sensitivity``); it reaches them as ``am.evaluate``."""
    pm = pipeline if isinstance(pipeline, PassManager) else PassManager(pipeline)
    adapter = load(model, example_inputs, in_place=in_place)
    am = AnalysisManager(adapter, calibration=calibration, loss_fn=loss_fn,
                         check_numerics=check_numerics, energy_profile=energy_profile,
                         evaluate=evaluate)
    record = pm.run(adapter, am, progress=progress)
    if adapter.frontend == "torch":
        native, record.output = adapter.user_module()
        if in_place and record.output["returned"] != "own-class":
            import warnings
            warnings.warn(f"in_place=True: {type(model).__name__} could not be given back as "
                          f"itself ({record.output['reason']}); the model passed in now holds "
                          "pruned tensors its code cannot run: use result.model", stacklevel=2)
    else:
        native, record.output = adapter.materialize(), {"returned": "onnx"}
        if _is_gs_graph(model):  # given a graphsurgeon graph, give one back
            import onnx_graphsurgeon as gs
            native, record.output["returned"] = gs.import_onnx(native), "onnx-graphsurgeon"
        if getattr(adapter, "notes", None):
            record.output["notes"] = list(adapter.notes)
    return PruneResult(native, record, adapter)


def apply_record(model: Any, example_inputs: Sequence[Any] | Any, record: Record | str,
                 **kw: Any) -> PruneResult:
    """Re-apply a saved record to a fresh copy of the model: the record's pipeline runs with
    its channel choices replaced by exactly the channels the record kept."""
    from prunepass.passes.transform.apply_record import ApplyRecord
    rec = record if isinstance(record, Record) else Record.load(record)
    in_place = kw.pop("in_place", False)
    if not isinstance(model, ModelAdapter):  # trace once, check it is the record's model
        model = load(model, example_inputs, in_place=in_place)
    rec.check_model(model.graph, model.frontend)
    passes, applied = [], False
    # the blocks each remove-blocks removed (a damaged record gives none: the pass then
    # names what is missing)
    blocks = iter([(p.get("changes") or {}).get("removed") or [] for p in rec.passes
                   if isinstance(p, dict) and p.get("pass") == "remove-blocks"
                   and isinstance(p.get("changes") or {}, dict)])
    for p in parse_pipeline(rec.pipeline):  # named pipelines come back expanded
        if p.name == "remove-blocks":  # the blocks it removed, not a new choice
            passes.append(type(p)(scopes=next(blocks, [])) if p["count"] or p["ratio"] else p)
        elif p.name in ("remove-channels", "apply-record"):
            if not applied:
                passes.append(ApplyRecord(record=rec))
                applied = True
        elif p.kind != "plan" and p.name != "mask-channels":
            passes.append(p)  # weight masks are recomputed: records keep no masks
    if not applied:
        passes.insert(0, ApplyRecord(record=rec))
    return prune(model, example_inputs, PassManager(passes), in_place=in_place, **kw)
