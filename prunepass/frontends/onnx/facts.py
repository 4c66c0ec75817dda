"""What the ONNX frontend knows about a model for given input shapes: the concrete shape
and element type of every value, the static values (see ``static_values``) and the nodes
folded into them, and which sizes follow a symbolic input size (the batch).

Shapes come from onnx shape inference with data propagation on a light copy of the graph
(large initializers become typed inputs, folded values become initializers); whatever
inference leaves unknown is measured by running the model once in onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from prunepass.errors import TraceError
from prunepass.frontends.onnx.runtime import Session, declared_shape, model_inputs, random_feeds
from prunepass.frontends.onnx.static_values import (
    NO_FOLD, Dep, Folder, Static, constant_value, is_static_literal, literal_static,
    static_inputs_ok, subgraph_names)

SKELETON_COPY = 64  # initializers up to this many elements are kept for inference
MAX_ROUNDS = 6


@dataclass
class Facts:
    shapes: dict[str, tuple[int, ...]]
    elem: dict[str, int]  # onnx element type of each value
    static: dict[str, Static]
    folded: set[int]  # indices of nodes evaluated statically (not in the IR)
    input_shapes: dict[str, tuple[int, ...]]
    weights: dict[str, onnx.TensorProto] = field(default_factory=dict)  # float, > 1 element
    # (value, axis) sizes that change with a symbolic input size; None = unknown, so every
    # computed size is treated as possibly dynamic
    dynamic: frozenset[Dep] | None = field(default=frozenset())

    def is_dynamic(self, deps: frozenset) -> bool:
        if not deps:
            return False
        if self.dynamic is None:
            return True
        return bool(deps & self.dynamic)


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {o.domain or "": o.version for o in model.opset_import}


def _tensor_numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1


def _skeleton(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None,
              facts: Facts | None) -> onnx.ModelProto:
    """The graph without its weights (they become typed inputs) and without folded nodes
    (their values become initializers): cheap to serialise for shape inference. With
    ``input_shapes`` None the inputs keep their declared (possibly symbolic) shapes."""
    g = model.graph
    nodes = [n for i, n in enumerate(g.node) if facts is None or i not in facts.folded]
    needed: set[str] = {o.name for o in g.output}
    for n in nodes:
        needed.update(x for x in n.input if x)
        needed |= subgraph_names(n)
    inits, inputs = [], []
    for t in g.initializer:
        if t.name not in needed:
            continue
        if _tensor_numel(t) <= SKELETON_COPY:
            inits.append(t)
        else:  # a weight: inference only needs its type
            inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    init_names = {t.name for t in g.initializer}
    if facts is not None:
        for name in needed - init_names:
            s = facts.static.get(name)
            if s is not None:
                inits.append(numpy_helper.from_array(s.value, name))
    for vi in model_inputs(model):
        if input_shapes is None:
            inputs.append(vi)
        else:
            inputs.append(helper.make_tensor_value_info(
                vi.name, vi.type.tensor_type.elem_type, list(input_shapes[vi.name])))
    hints = []
    if facts is not None:
        produced = {o for n in nodes for o in n.output}
        hints = [helper.make_tensor_value_info(k, facts.elem[k], list(v))
                 for k, v in facts.shapes.items() if k in produced and k in facts.elem]
    outputs = list(g.output) if input_shapes is None else \
        [helper.make_empty_tensor_value_info(o.name) for o in g.output]
    graph = helper.make_graph(nodes, g.name or "g", inputs, outputs,
                              initializer=inits, value_info=hints)
    sk = helper.make_model(graph, opset_imports=list(model.opset_import),
                           ir_version=model.ir_version)
    sk.functions.extend(model.functions)
    return sk


def inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """onnx shape inference of the model as declared (symbolic sizes stay symbolic), run
    on its skeleton; raises what onnx raises."""
    sk = _skeleton(model, None, None)
    inferred = onnx.shape_inference.infer_shapes(sk, check_type=True, data_prop=True)
    weights = {i.name for i in sk.graph.input} - {i.name for i in model.graph.input}
    return [vi for vi in inferred.graph.value_info if vi.name not in weights]


def _read_types(m: onnx.ModelProto) -> dict[str, tuple[tuple[int | None, ...] | None, int]]:
    out = {}
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
            if tt.HasField("shape") else None
        out[vi.name] = (dims, tt.elem_type)
    return out


def _infer(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
           facts: Facts) -> bool:
    """One round of onnx shape inference; True if it taught us a new shape."""
    sk = _skeleton(model, input_shapes, facts)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference gives up on some graphs: the runtime fallback measures them
        return False
    new = False
    for name, (dims, elem) in _read_types(inferred).items():
        if elem and name not in facts.elem:
            facts.elem[name] = elem
        if dims is not None and all(d is not None for d in dims) and name not in facts.shapes:
            facts.shapes[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            new = True
    return new


def _infer_node(model: onnx.ModelProto, node: onnx.NodeProto, facts: Facts) -> bool:
    """onnx's inference of one node, given the shapes and static values found so far
    (whole-graph inference stops at sizes its data propagation cannot compute)."""
    names = [n for n in node.input if n]
    if any(n not in facts.shapes or n not in facts.elem for n in names):
        return False
    try:
        version = opsets(model).get(node.domain or "", 1)
        schema = onnx.defs.get_schema(node.op_type, version, node.domain)
        types = {n: helper.make_tensor_type_proto(facts.elem[n], list(facts.shapes[n]))
                 for n in names}
        data = {n: numpy_helper.from_array(facts.static[n].value, n) for n in names
                if n in facts.static and facts.static[n].value.size <= SKELETON_COPY}
        outs = onnx.shape_inference.infer_node_outputs(
            schema, node, types, data, opset_imports=list(model.opset_import),
            ir_version=model.ir_version)
    except Exception:  # no schema, or inference refuses: the runtime will measure it
        return False
    learned = False
    for name, t in outs.items():
        tt = t.tensor_type
        if name in facts.shapes or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            facts.shapes[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            facts.elem[name] = tt.elem_type
            learned = True
    return learned


def _sweep(model: onnx.ModelProto, facts: Facts, folder: Folder) -> bool:
    """In graph order, infer the shapes whole-graph inference missed and fold every node
    that has become static; True if anything was learned."""
    progress = False
    for i, node in enumerate(model.graph.node):
        if i in facts.folded:
            continue
        if any(o and o not in facts.shapes for o in node.output) and \
                not subgraph_names(node):
            progress |= _infer_node(model, node, facts)
        if node.domain not in ("", "ai.onnx") or node.op_type in NO_FOLD:
            continue
        if node.op_type in ("Shape", "Size"):
            shape = facts.shapes.get(node.input[0])
            if shape is None:
                continue
            outs: list[Static] | None = folder.shape_of(node, shape)
        elif node.op_type == "CastLike" and node.input[0] in facts.static \
                and node.input[1] in facts.elem:
            # only the type of the second input matters
            cast = helper.make_node("Cast", [node.input[0]], list(node.output),
                                    to=facts.elem[node.input[1]])
            outs = folder.evaluate(cast, [facts.static[node.input[0]]])
        elif static_inputs_ok(node, facts.static, set(facts.weights)) \
                and not subgraph_names(node):
            outs = folder.evaluate(node, [_static_or_weight(facts, n) if n else None
                                          for n in node.input])
        else:
            continue
        if outs is None:
            continue
        for name, s in zip(node.output, outs):
            if name:
                facts.static[name] = s
                facts.shapes[name] = tuple(s.value.shape)
                facts.elem[name] = helper.np_dtype_to_tensor_dtype(s.value.dtype)
        facts.folded.add(i)
        progress = True
    return progress


def _static_or_weight(facts: Facts, name: str) -> Static:
    if name in facts.static:
        return facts.static[name]
    return literal_static(name, numpy_helper.to_array(facts.weights[name]))


def _missing(model: onnx.ModelProto, facts: Facts) -> list[tuple[str, onnx.NodeProto]]:
    return [(o, n) for i, n in enumerate(model.graph.node) if i not in facts.folded
            for o in n.output if o and o not in facts.shapes]


def _measure(model: onnx.ModelProto, facts: Facts, seed: int) -> None:
    """Run the model once to measure the shapes inference could not tell."""
    missing = _missing(model, facts)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    m.graph.output.extend(helper.make_empty_tensor_value_info(o) for o, _ in missing)
    try:
        arrays = Session(m).run(random_feeds(model, facts.input_shapes, seed),
                                [o for o, _ in missing])
    except TraceError as e:
        name, node = missing[0]
        raise TraceError(
            f"node {node.name or '?'} ({node.op_type}): the shape of {name} cannot be inferred "
            f"and running the model to measure it failed: {e}") from None
    for (name, _), a in zip(missing, arrays):
        facts.shapes[name] = tuple(a.shape)
        facts.elem[name] = helper.np_dtype_to_tensor_dtype(a.dtype)


def _analyze_once(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                  seed: int = 0) -> Facts:
    g = model.graph
    facts = Facts({}, {}, {}, set(), dict(input_shapes))
    for t in g.initializer:
        facts.shapes[t.name] = tuple(int(d) for d in t.dims)
        facts.elem[t.name] = t.data_type
    for vi in model_inputs(model):
        facts.shapes[vi.name] = tuple(input_shapes[vi.name])
        facts.elem[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        if t.data_type != onnx.TensorProto.STRING:
            # float tensors of more elements are weights: read only when a fold needs one
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                               onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16) \
                    and _tensor_numel(t) > 1:
                facts.weights[t.name] = t
                continue
            value = numpy_helper.to_array(t)
            if is_static_literal(value):
                facts.static[t.name] = literal_static(t.name, value)
    for i, node in enumerate(g.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            try:
                value = constant_value(node)
            except Exception:  # sparse or string constants stay IR nodes
                continue
            facts.static[node.output[0]] = literal_static(node.output[0], value)
            facts.shapes[node.output[0]] = tuple(value.shape)
            facts.elem[node.output[0]] = helper.np_dtype_to_tensor_dtype(value.dtype)
            facts.folded.add(i)
    folder = Folder(opsets(model))
    for _ in range(MAX_ROUNDS):
        learned = _infer(model, input_shapes, facts)
        folded = _sweep(model, facts, folder)  # one sweep in graph order reaches the fixpoint
        if not _missing(model, facts) or not (learned or folded):
            break
    if _missing(model, facts):  # inference is stuck: measure, then fold what follows
        _measure(model, facts, seed)
        _sweep(model, facts, folder)
    missing = _missing(model, facts)
    if missing:
        name, node = missing[0]
        raise TraceError(f"node {node.name or '?'} ({node.op_type}): the shape of {name} "
                         "could not be determined")
    return facts


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Input name -> positions of dims that are symbolic (or unknown) in the model."""
    return {vi.name: [k for k, d in enumerate(declared_shape(vi)) if not isinstance(d, int)]
            for vi in model_inputs(model)}


def analyze(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> Facts:
    facts = _analyze_once(model, input_shapes)
    sym = symbolic_dims(model)
    if not any(sym.values()):
        return facts
    # Which sizes follow the symbolic input dims: analyse again with those dims changed.
    alt: dict[str, tuple[int, ...]] = {}
    by_param: dict[str, int] = {}
    for vi in model_inputs(model):
        dims = list(input_shapes[vi.name])
        declared = declared_shape(vi)
        for k in sym[vi.name]:
            key = declared[k] if isinstance(declared[k], str) else f"{vi.name}:{k}"
            by_param.setdefault(key, dims[k] + 1)  # type: ignore[arg-type]
            dims[k] = by_param[key]  # type: ignore[index]
        alt[vi.name] = tuple(dims)
    try:
        other = _analyze_once(model, alt, seed=1)
    except TraceError:
        facts.dynamic = None
        return facts
    dyn = set()
    for name, shape in facts.shapes.items():
        o = other.shapes.get(name)
        if o is None or len(o) != len(shape):
            dyn.update((name, a) for a in range(len(shape)))
        else:
            dyn.update((name, a) for a, (x, y) in enumerate(zip(shape, o)) if x != y)
    facts.dynamic = frozenset(dyn)
    return facts
