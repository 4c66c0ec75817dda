"""onnxruntime sessions for a ModelProto held in memory, and input feeds for it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx.external_data_helper import load_external_data_for_model, set_external_data

from prunepass.errors import TraceError
from prunepass.errors import first_line
from prunepass.frontends.onnx.load import PROTO_LIMIT, proto_size


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (older IR versions also list initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def declared_shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims as declared: an int, a symbol name, or None when unnamed and unknown."""
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the given shapes: normal floats, zero integers (safe as indices), False."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model_inputs(model):
        dt = np_dtype(vi.type.tensor_type.elem_type)
        shape = shapes[vi.name]
        if np.issubdtype(dt, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        else:
            feeds[vi.name] = np.zeros(shape, dtype=dt)
    return feeds


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` with its tensors in ``<path name>.data``. onnx moves the tensors of
    the proto it saves out to the file; they are read back so ``model`` stays whole."""
    location = path.name + ".data"
    (path.parent / location).unlink(missing_ok=True)  # tensors are appended to it
    # marked here rather than by save_model(save_as_external_data=True), which refuses
    # when a file of that name exists in the *current* directory
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= 1024:
            set_external_data(t, location)
    onnx.save_model(model, str(path))
    load_external_data_for_model(model, str(path.parent))


class Session:
    """An onnxruntime session; models over 2 GiB go through a temporary file with
    external data, since protobuf cannot serialise them."""

    def __init__(self, model: onnx.ModelProto, threads: int = 0) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self._tmp: tempfile.TemporaryDirectory | None = None
        try:
            if proto_size(model) < PROTO_LIMIT:
                self.sess = ort.InferenceSession(model.SerializeToString(), opts,
                                                 providers=["CPUExecutionProvider"])
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="prunepass-ort-")
                path = Path(self._tmp.name) / "model.onnx"
                save_with_external_data(model, path)
                self.sess = ort.InferenceSession(str(path), opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise TraceError(f"onnxruntime cannot load the model: {first_line(e)}") from e
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, inputs: Sequence[Any] | dict[str, Any],
            outputs: list[str] | None = None) -> list[np.ndarray]:
        if isinstance(inputs, dict):
            feeds = {k: to_numpy(v) for k, v in inputs.items()}
        else:
            inputs = list(inputs)
            if len(inputs) != len(self.input_names):
                raise TraceError(f"the model takes {len(self.input_names)} inputs "
                                 f"({', '.join(self.input_names)}), got {len(inputs)}")
            feeds = {k: to_numpy(v) for k, v in zip(self.input_names, inputs)}
        try:
            return self.sess.run(outputs, feeds)
        except Exception as e:
            raise TraceError(f"onnxruntime failed to run the model: {first_line(e)}") from e
