"""Rewriting the shape constants of a pruned ONNX graph.

Every non-tensor input of an IR node (a Reshape target, Expand shape, Split sizes, Resize
sizes, Slice bounds, a scale computed from a Shape...) is a static value whose elements
know their provenance (``static_values``). After pruning, each element must hold its
*desired* value: the new output size for the size-giving inputs of Reshape, Expand,
ConstantOfShape, Resize and Split, and its old value for everything else (a Slice bound or
an attention scale computed from a pruned size must not follow it). Elements that would
be wrong are fixed:

* if no element depends on a symbolic (batch) size, the whole input becomes a new
  initializer holding the desired values;
* otherwise only the wrong elements are replaced, through ``Where(mask, new, old)``, so
  the batch size stays symbolic;
* an element that must change but is computed from a symbolic size is a PlanError.

Shared literals are never edited in place: a new initializer is made for this reader."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx

from prunepass.errors import PlanError
from prunepass.frontends.onnx.facts import Facts
from prunepass.frontends.onnx.ops_map import node_attrs
from prunepass.frontends.onnx.proto_edit import Editor
from prunepass.frontends.onnx.static_values import Dep, Static
from prunepass.ir import ops
from prunepass.ir.graph import Node, Value

NewShape = Callable[[Value], list[int]]


def _desired(onnx_node: onnx.NodeProto, node: Node, new_shape: NewShape,
             facts: Facts) -> dict[int, np.ndarray]:
    """Input position -> the values its size-giving input must hold after pruning."""
    op, ins = onnx_node.op_type, list(onnx_node.input)
    a = node_attrs(onnx_node)
    if not node.outputs:
        return {}
    new_out = new_shape(node.outputs[0])

    def old(k: int) -> np.ndarray | None:
        s = facts.static.get(ins[k]) if len(ins) > k and ins[k] else None
        return None if s is None else s.value

    if op == "Reshape" and (t := old(1)) is not None:
        copy = () if a.get("allowzero", 0) else (0,)
        flat = t.ravel()
        return {1: np.array([v if v == -1 or v in copy else new_out[d]
                             for d, v in enumerate(flat.tolist())], dtype=t.dtype)}
    if op == "Expand" and (t := old(1)) is not None:
        off = len(new_out) - t.size
        return {1: np.array([v if v == 1 else new_out[off + j]
                             for j, v in enumerate(t.ravel().tolist())], dtype=t.dtype)}
    if op == "Gather" and node.attrs.get("fn") == "gather_all" and (t := old(1)) is not None:
        axis = int(a.get("axis", 0)) % node.inputs[0].ndim
        shape = new_out[axis:axis + t.ndim]
        return {1: np.arange(int(np.prod(shape)), dtype=t.dtype).reshape(shape)}
    if op == "ConstantOfShape" and (t := old(0)) is not None:
        return {0: np.array(new_out, dtype=t.dtype)}
    if op == "Resize" and (t := old(3)) is not None:
        axes = a.get("axes")
        sizes = [new_out[d] for d in axes] if axes else new_out
        return {3: np.array(sizes, dtype=t.dtype)}
    if op == "Slice" and "members" in node.attrs and (st := old(1)) is not None \
            and (en := old(2)) is not None:
        # one part of a partition: it starts where the kept parts before it end
        axis, k = node.attrs["axis"], node.attrs["members"].index(onnx_node.name)
        sizes = [new_shape(o)[axis] for o in node.outputs]
        n_old = node.inputs[0].shape[axis]
        r = node.inputs[0].ndim
        axes = [int(d) % r for d in old(3).ravel()] if old(3) is not None \
            else list(range(st.size))
        p = axes.index(axis)
        starts, ends = st.copy().ravel(), en.copy().ravel()
        starts[p] = sum(sizes[:k])
        if ends[p] < n_old:  # an end past the size means "to the end": it still does
            ends[p] = sum(sizes[:k + 1])
        return {1: starts.reshape(st.shape), 2: ends.reshape(en.shape)}
    if op == "Split" and (t := old(1)) is not None:
        axis = node.attrs["axis"]
        return {1: np.array([new_shape(o)[axis] for o in node.outputs], dtype=t.dtype)}
    return {}


def _fix(ed: Editor, facts: Facts, onnx_node: onnx.NodeProto, index: int, slot: int,
         s: Static, want: np.ndarray, pruned: set[Dep]) -> None:
    old = s.value
    want = np.asarray(want, dtype=old.dtype)
    name = onnx_node.input[slot]
    where = f"node {onnx_node.name} ({onnx_node.op_type}): input {slot} ({name})"
    if want.shape != old.shape:  # a new index tensor: replaced whole
        if facts.is_dynamic(s.deps):
            raise PlanError(f"{where}: this tensor is computed from a symbolic size and "
                            "would have to change shape; export the model with static shapes")
        ed.set_input(index, slot, ed.add_initializer(f"{name}__pruned", want))
        return
    if s.elementwise:
        need = [e for e in range(old.size)
                if want.flat[e] != old.flat[e] or (s.edeps[e] & pruned)]
        if not need:
            return
        dynamic = [e for e in range(old.size) if facts.is_dynamic(s.edeps[e])]
        bad = sorted(set(need) & set(dynamic))
        if bad:
            raise PlanError(f"{where}: element {bad[0]} is computed from a symbolic size and "
                            f"would have to change from {old.flat[bad[0]]} to "
                            f"{want.flat[bad[0]]}; export the model with static shapes "
                            "or leave this layer out (ignore=...)")
        if not dynamic:
            ed.set_input(index, slot, ed.add_initializer(f"{name}__pruned", want))
            return
        mask = np.zeros(old.shape, dtype=bool)
        mask.flat[need] = True
        cond = ed.add_initializer(f"{name}__mask", mask)
        new = ed.add_initializer(f"{name}__new", want)
        where_node = ed.node("Where", [cond, new, name], f"{name}__fixed")
        ed.insert_before(index, where_node)
        ed.set_input(index, slot, where_node.output[0])
        return
    touched = bool(s.deps & pruned)
    if not touched and np.array_equal(want, old):
        return
    if facts.is_dynamic(s.deps):
        raise PlanError(f"{where}: this tensor is computed from a symbolic size and from a "
                        "pruned one; export the model with static shapes")
    ed.set_input(index, slot, ed.add_initializer(f"{name}__pruned", want))


def rewrite_node(ed: Editor, facts: Facts, onnx_node: onnx.NodeProto, index: int, node: Node,
                 new_shape: NewShape, pruned: set[Dep], sliced: set[str]) -> None:
    """Fix the shape inputs and shape attributes of one IR node's ONNX node. Tensors in
    ``sliced`` are IR state the adapter slices itself."""
    tensor_inputs = {v.name for v in node.inputs}
    desired = _desired(onnx_node, node, new_shape, facts)
    for slot, name in enumerate(list(onnx_node.input)):
        s = facts.static.get(name) if name else None
        if s is None or (name in tensor_inputs and (s.literal or name in sliced)):
            continue  # not static, or a tensor sliced (or left) as state
        _fix(ed, facts, onnx_node, index, slot, s, desired.get(slot, s.value), pruned)
    _rewrite_attrs(ed, onnx_node, node, new_shape)


def _set_attr(onnx_node: onnx.NodeProto, name: str, value: object) -> None:
    for k, a in enumerate(onnx_node.attribute):
        if a.name == name:
            del onnx_node.attribute[k]
            break
    if value is not None:
        onnx_node.attribute.append(onnx.helper.make_attribute(name, value))


def _rewrite_attrs(ed: Editor, onnx_node: onnx.NodeProto, node: Node,
                   new_shape: NewShape) -> None:
    op = onnx_node.op_type
    a = node_attrs(onnx_node)
    if node.op == ops.CONV and not node.attrs["transposed"]:
        w = node.inputs[1]
        if node.attrs["groups"] > 1 and w.shape[1] == 1:
            # depthwise: a group is one input channel, so the group count follows them
            _set_attr(onnx_node, "group", new_shape(node.inputs[0])[1])
    elif node.op == ops.SPLIT and op == "Split":
        axis = node.attrs["axis"]
        sizes = [new_shape(o)[axis] for o in node.outputs]
        if sizes == [o.shape[axis] for o in node.outputs] or \
                (len(onnx_node.input) > 1 and onnx_node.input[1]):
            return  # unchanged, or sizes given as an input (rewritten as a shape input)
        opset = next((o.version for o in ed.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        if opset < 13:  # the sizes are an attribute
            _set_attr(onnx_node, "split", sizes)
            return
        total, n = sum(sizes), len(sizes)
        even = [math.ceil(total / n)] * (n - 1)
        even.append(total - sum(even))
        if sizes != even:  # no longer an even split: give explicit sizes
            _set_attr(onnx_node, "num_outputs", None)
            name = ed.add_initializer(f"{onnx_node.name}__split", np.array(sizes, np.int64))
            while len(onnx_node.input) < 2:
                onnx_node.input.append("")
            onnx_node.input[1] = name
    elif node.op == ops.ATTENTION and op == "Attention":
        q = node.inputs[0]
        if new_shape(q)[-1] != q.shape[-1] and a.get("scale") is None:
            # the default scale is 1/sqrt(head size): keep the original one
            _set_attr(onnx_node, "scale", 1.0 / math.sqrt(q.shape[-1]))
