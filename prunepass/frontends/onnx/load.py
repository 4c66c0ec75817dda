"""Reading an .onnx file: the protobuf, its external data, and onnx.checker. Every failure
is a TraceError that names the file (and the tensor) and says what to do. The file itself
is only read, never written."""
from __future__ import annotations

import functools
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from prunepass.errors import TraceError, first_line

# protobuf cannot serialise a message of 2 GiB or more; above this, work through files
PROTO_LIMIT = 2**31 - 2**26


def _tensor_bytes(t: onnx.TensorProto) -> int:
    return (len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data))
            + 8 * (len(t.int64_data) + len(t.double_data) + len(t.uint64_data)))


def proto_size(model: onnx.ModelProto) -> int:
    """The serialised size, estimated from the tensors (ByteSize() serialises the whole
    model, seconds for a large one); nodes count a kilobyte each."""
    n = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        n += 1024 + sum(_tensor_bytes(a.t) for a in node.attribute
                        if a.type == onnx.AttributeProto.TENSOR)
    return n


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found = [t for t in model.graph.initializer if uses_external_data(t)]
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and uses_external_data(a.t):
                found.append(a.t)
    return found


def _check_external_files(model: onnx.ModelProto, path: Path) -> None:
    for t in _external_tensors(model):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        f = path.parent / loc
        if not loc or not f.is_file():
            raise TraceError(f"{path}: tensor {t.name!r} keeps its data in the external file "
                             f"{loc!r}, which is missing; put it next to the .onnx file")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > f.stat().st_size:
            raise TraceError(f"{path}: tensor {t.name!r} reads bytes up to {end} of {f.name}, "
                             f"which holds only {f.stat().st_size}: the data file is truncated")


@functools.lru_cache(maxsize=1)
def max_opset() -> int:
    """The newest default-domain opset that both onnx and onnxruntime here handle: found by
    opening a one-node model at each opset, newest first (milliseconds, once)."""
    import onnxruntime as ort
    from onnx import helper
    for v in range(onnx.defs.onnx_opset_version(), 6, -1):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", v)])
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return v
        except Exception:  # onnxruntime refuses an opset it does not know
            continue
    return 7


def check_opset(model: onnx.ModelProto, where: str) -> None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not 7 <= imp.version <= max_opset():
            raise TraceError(f"{where} declares ONNX opset {imp.version}; prunepass and "
                             f"onnxruntime here handle opsets 7 to {max_opset()}: re-export "
                             "it with an opset in that range")


def check(model: onnx.ModelProto, where: str) -> None:
    """onnx.checker, with its failure as a TraceError; files over 2 GiB are checked by path
    (the caller passes a path-backed model only then)."""
    check_opset(model, where)
    try:
        if proto_size(model) < PROTO_LIMIT:
            onnx.checker.check_model(model)
    except Exception as e:  # onnx raises ValidationError and several C++ error types
        raise TraceError(f"{where} fails onnx.checker: {first_line(e)}") from e


def load_model(path: str | Path) -> tuple[onnx.ModelProto, set[Path]]:
    """The model, with its external data read in, and the files it was read from."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"ONNX file {p} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise TraceError(f"{p} is not a readable ONNX model (truncated or corrupt file?): "
                         f"{first_line(e)}") from e
    check_opset(model, str(p))
    _check_external_files(model, p)
    files = {p.resolve()} | {
        (p.parent / e.value).resolve() for t in _external_tensors(model)
        for e in t.external_data if e.key == "location"}
    try:
        load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise TraceError(f"{p}: cannot read its external data: {first_line(e)}") from e
    try:  # by path: the checker reads the file itself, external data included
        onnx.checker.check_model(str(p))
    except Exception as e:
        raise TraceError(f"{p} fails onnx.checker: {first_line(e)}") from e
    if not model.graph.node or not model.graph.output:
        raise TraceError(f"{p} holds an empty graph (no nodes or no outputs): truncated file?")
    return model, files
