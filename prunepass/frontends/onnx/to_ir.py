"""An onnx.ModelProto (with its Facts) -> the canonical IR Graph.

Folded nodes (static values) are not IR nodes. Initializers and Constant outputs that an
IR node reads become state values named after the tensor, and so do static values computed
from them and from fixed sizes. A static value that follows a symbolic (batch) size
becomes a ``constant`` node: its channels are pinned, since it cannot be frozen."""
from __future__ import annotations

import ast

import onnx

from prunepass.errors import TraceError
from prunepass.frontends.onnx.facts import Facts, opsets
from prunepass.frontends.onnx.ops_map import Cx, canonicalize, slice_partitions
from prunepass.frontends.onnx.runtime import model_inputs, np_dtype
from prunepass.frontends.onnx.static_values import subgraph_names
from prunepass.ir import ops
from prunepass.ir.graph import BUFFER, CONST, PARAM, Graph, Node, Value

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


def dtype_name(elem: int) -> str:
    try:
        return np_dtype(elem).name
    except Exception:  # element types numpy cannot hold (strings, 4-bit)
        return onnx.TensorProto.DataType.Name(elem).lower()


def scope_of(node: onnx.NodeProto) -> str:
    """The module path the exporter recorded: dynamo's name scopes or the legacy
    exporter's /a/b/Op node names."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = ast.literal_eval(p.value)
                return ".".join(x for x in parts[:-1] if x)
            except (ValueError, SyntaxError):
                break
    if node.name.startswith("/"):
        return "/".join(node.name.strip("/").split("/")[:-1])
    return ""


def build_graph(model: onnx.ModelProto, facts: Facts, name: str = "model") -> Graph:
    g = Graph(name)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0] for i, n in enumerate(graph.node)
                 if i in facts.folded and n.op_type == "Constant"}
    buffers = {n.input[k] for n in graph.node if n.op_type == "BatchNormalization"
               for k in (3, 4) if len(n.input) > k}
    cx = Cx(facts, opsets(model).get("", 1), set(inits))
    vals: dict[str, Value] = {}
    taken: set[str] = {n.name for n in graph.node}

    def dynamic_axes(vname: str, ndim: int) -> tuple[int, ...]:
        if facts.dynamic is None:
            return ()
        return tuple(a for a in range(ndim) if (vname, a) in facts.dynamic)

    def new_value(vname: str, kind: str = "act", param: str | None = None) -> Value:
        if vname not in facts.shapes:
            raise TraceError(f"value {vname!r} has no known shape")
        shape = facts.shapes[vname]
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise TraceError(f"value {vname!r} comes out with shape {list(shape)}: the "
                             "model's shapes and attributes do not fit together (a damaged "
                             "file?)")
        return Value(name=vname, shape=shape, dtype=dtype_name(facts.elem.get(vname, 1)),
                     kind=kind, param=param, dynamic_axes=dynamic_axes(vname, len(shape)))

    def value(vname: str, user: str) -> Value:
        if vname in vals:
            return vals[vname]
        if vname in inits:
            t = inits[vname]
            kind = BUFFER if vname in buffers else (PARAM if t.data_type in FLOAT_TYPES else CONST)
            v = g.add_state(new_value(vname, kind, vname))
        elif vname in constants:
            v = g.add_state(new_value(vname, CONST, vname))
        elif vname in facts.static and not facts.is_dynamic(facts.static[vname].deps):
            # computed from constants and fixed sizes: sliced like a constant (the
            # adapter writes the sliced value as a new initializer)
            v = g.add_state(new_value(vname, CONST, vname))
        elif vname in facts.static:
            # it follows the batch size: it cannot be frozen, so nothing through it is cut
            node_name = f"{vname}:static"
            while node_name in taken:
                node_name += "_"
            taken.add(node_name)
            v = new_value(vname)
            g.add_node(Node(name=node_name, op=ops.CONSTANT, inputs=[], outputs=[v],
                            attrs={"static": True}, target="static"))
        else:
            raise TraceError(f"node {user}: input {vname!r} is used before it is defined")
        vals[vname] = v
        return v

    for vi in model_inputs(model):
        vals[vi.name] = g.add_input(new_value(vi.name))
    parts = slice_partitions(model, cx, facts.folded)
    in_parts = {k for members in parts.values() for k in members}
    for i, node in enumerate(graph.node):
        if i in facts.folded or (i in in_parts and i not in parts):
            continue
        if i in parts:  # Slices partitioning an axis: one split node, at the first Slice
            members = [graph.node[k] for k in parts[i]]
            ins = [node.input[0]]
            in_vals = [value(node.input[0], node.name)]
            outs = [new_value(m.output[0]) for m in members]
            axis = next(a for a in range(len(outs[0].shape))
                        if outs[0].shape[a] != in_vals[0].shape[a])
            g.add_node(Node(name=node.name, op=ops.SPLIT, inputs=in_vals, outputs=outs,
                            attrs={"axis": axis, "drop_axis": False,
                                   "members": [m.name for m in members]},
                            target="Slice", scope=scope_of(node)))
            for v in outs:
                vals[v.name] = v
            continue
        op, ins, attrs = canonicalize(node, cx)
        if op == ops.BARRIER:
            ins = ins + sorted(subgraph_names(node) - set(ins))
        in_vals = [value(x, node.name) for x in ins]
        outs = [new_value(o) for o in node.output if o]
        g.add_node(Node(name=node.name, op=op, inputs=in_vals, outputs=outs, attrs=attrs,
                        target=node.op_type if node.domain in ("", "ai.onnx")
                        else f"{node.domain}::{node.op_type}", scope=scope_of(node)))
        for v in outs:
            vals[v.name] = v
    g.outputs = [value(o.name, "graph output") for o in graph.output]
    return g
