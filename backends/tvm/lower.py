"""Lower a model to TVM Relax: from torch.export (``from_exported_program``) or from ONNX
(``relax.frontend.onnx.from_onnx``), with the parameters bound as constants and folded."""
from __future__ import annotations

import ast
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from prunepass.backends.measure.torch_export import as_args, eval_mode, export_onnx
from prunepass.backends.tvm.errors import BackendError, UnsupportedOpError

ROUTES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class LoweredModel:
    """A Relax module whose ``main`` takes the model inputs and holds every weight as a constant."""
    mod: Any                   # tvm.IRModule
    inputs: list[TensorSpec]
    route: str                 # "torch" | "onnx"


def lower_model(model: Any, example_inputs: Sequence[Any] | Any = None, route: str = "auto"
          ) -> LoweredModel:
    """Lower ``model`` (a torch.nn.Module, a torch.export.ExportedProgram, an ONNX file path or
    an onnx.ModelProto). route "auto" takes the model's own route; "onnx" exports a torch model
    to ONNX first; "torch" needs a torch model."""
    if route not in ROUTES:
        raise BackendError(f"unknown lowering route {route!r}: use one of {', '.join(ROUTES)}")
    is_onnx = isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto"
    if is_onnx:
        if route == "torch":
            raise BackendError("route 'torch' needs a torch model; an ONNX model takes route "
                               "'onnx' (or 'auto')")
        return lower_onnx(model, example_inputs)
    if route == "onnx":
        with tempfile.TemporaryDirectory(prefix="prunepass-onnx-") as tmp:
            return lower_onnx(export_onnx(model, example_inputs, Path(tmp) / "model.onnx"),
                              example_inputs)
    return lower_torch(model, example_inputs)


def lower_torch(model: Any, example_inputs: Sequence[Any] | Any) -> LoweredModel:
    """torch.export the model (in eval mode) and import it with Relax's torch frontend."""
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        args = as_args(example_inputs)
        with eval_mode(model):
            try:
                program = torch.export.export(model, args)
            except Exception as err:  # torch raises many kinds; all mean "not exportable"
                raise BackendError(f"torch.export failed on {type(model).__name__}: "
                                   f"{_first_line(err)}") from err
    try:
        mod = from_exported_program(program, keep_params_as_input=False,
                                    unwrap_unit_return_tuple=True)
    except Exception as err:  # the importer asserts on unknown ops, raises on odd arguments
        ops = _listed_ops(str(err))
        if ops:
            raise UnsupportedOpError(ops, "torch (torch.export)",
                                     "try route='onnx' (the ONNX exporter may decompose them "
                                     "into ops TVM knows), or replace them in the model") from err
        raise BackendError(f"TVM's torch frontend failed: {_first_line(err)}; try "
                           f"route='onnx'") from err
    inputs = [TensorSpec(spec.arg.name, tuple(int(d) for d in t.shape), _dtype_name(t.dtype))
              for spec, t in _user_inputs(program)]
    return LoweredModel(_fold(mod), inputs, "torch")


def lower_onnx(model: Any, example_inputs: Sequence[Any] | Any = None) -> LoweredModel:
    """Import an ONNX model (path or ModelProto) with Relax's ONNX frontend. Example inputs
    (arrays or tensors, in graph-input order), if given, fix the input shapes, which dynamic
    dimensions (a symbolic batch size) need: TVM builds for static shapes here."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    try:
        proto = model if not isinstance(model, (str, os.PathLike)) else onnx.load(str(model))
    except Exception as err:  # onnx raises DecodeError, OSError, ...
        raise BackendError(f"cannot read ONNX model {model}: {_first_line(err)}") from err
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    shapes = {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                            for d in i.type.tensor_type.shape.dim) for i in graph_inputs}
    if example_inputs is not None:
        given = as_args(example_inputs)
        if len(given) != len(graph_inputs):
            raise BackendError(f"the ONNX model takes {len(graph_inputs)} input(s), "
                               f"{len(given)} example input(s) given")
        shapes = {i.name: tuple(int(d) for d in x.shape) for i, x in zip(graph_inputs, given)}
    dynamic = [name for name, shape in shapes.items() if any(d < 0 for d in shape)]
    if dynamic:
        raise BackendError(f"ONNX input(s) {', '.join(dynamic)} have dynamic dimensions; pass "
                           f"example inputs to fix their shapes")
    try:
        mod = from_onnx(proto, shape_dict={k: list(v) for k, v in shapes.items()},
                        keep_params_in_input=False)
    except tvm.error.OpNotImplemented as err:
        ops = [op.strip() for op in str(err).split(":")[-1].split(",") if op.strip()]
        raise UnsupportedOpError(ops, "ONNX", "try route='torch' from the PyTorch model "
                                 "(torch.export), or export with another opset") from err
    except Exception as err:  # converters raise ValueError, KeyError, TVMError, ...
        raise BackendError(f"TVM's ONNX frontend failed: {_first_line(err)}; try "
                           f"route='torch' from the PyTorch model") from err
    inputs = [TensorSpec(i.name, shapes[i.name],
                         onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
              for i in graph_inputs]
    return LoweredModel(_fold(mod), inputs, "onnx")


def _fold(mod: Any) -> Any:
    from tvm import relax
    return relax.transform.FoldConstant()(mod)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _listed_ops(message: str) -> list[str] | None:
    """The op names in the torch frontend's "Unsupported function types [...]" assertion."""
    match = re.search(r"Unsupported function types (\[.*\])", message)
    return list(ast.literal_eval(match.group(1))) if match else None


def _user_inputs(program: Any) -> list[tuple[Any, Any]]:
    from torch.export.graph_signature import InputKind
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [(spec, placeholders[spec.arg.name].meta["val"])
            for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
