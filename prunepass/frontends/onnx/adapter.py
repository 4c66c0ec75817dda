"""The ONNX adapter: an onnx.ModelProto plus the primitives transforms need. Every change
edits the protobuf and rebuilds the IR from it, so the IR always describes the model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from prunepass.errors import PlanError, TraceError, VerificationError, first_line
from prunepass.frontends.base import ModelAdapter
from prunepass.frontends.onnx.facts import Facts, analyze, inferred_value_info
from prunepass.frontends.onnx.load import PROTO_LIMIT, check, load_model, proto_size
from prunepass.frontends.onnx.proto_edit import (
    Editor, Slot, erase_dead, name_nodes, unshare_constants, write_tensor)
from prunepass.frontends.onnx.runtime import (
    Session, declared_shape, model_inputs, np_dtype, random_feeds, save_with_external_data,
    to_numpy)
from prunepass.frontends.onnx.shape_constants import rewrite_node
from prunepass.frontends.onnx.to_ir import build_graph
from prunepass.ir import ops
from prunepass.ir.graph import ACT, INPUT, Graph, Node, Value


def _example_shapes(model: onnx.ModelProto, example_inputs: Sequence[Any] | None
                    ) -> tuple[dict[str, tuple[int, ...]], list[np.ndarray] | None]:
    inputs = model_inputs(model)
    if example_inputs is None:
        shapes = {}
        for vi in inputs:
            if not vi.type.tensor_type.HasField("shape"):
                raise TraceError(f"input {vi.name} declares no shape: pass example_inputs "
                                 "(--input-shape on the command line)")
            shapes[vi.name] = resolve_symbolic(model, vi)
        return shapes, None
    if isinstance(example_inputs, np.ndarray) or hasattr(example_inputs, "detach"):
        example_inputs = [example_inputs]  # one tensor, not a sequence of them
    arrays = [to_numpy(x) for x in example_inputs]
    if len(arrays) != len(inputs):
        raise TraceError(f"the model takes {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}), got {len(arrays)} examples")
    shapes = {}
    for vi, a in zip(inputs, arrays):
        declared = declared_shape(vi)
        ok = len(declared) == a.ndim and all(
            not isinstance(d, int) or d == s for d, s in zip(declared, a.shape))
        if not ok:
            raise TraceError(f"example input for {vi.name} has shape {list(a.shape)}, the "
                             f"model declares {declared}")
        want = np_dtype(vi.type.tensor_type.elem_type)
        if a.dtype != want:
            raise TraceError(f"example input for {vi.name} is {a.dtype}, the model wants {want}")
        shapes[vi.name] = tuple(a.shape)
    return shapes, arrays


def _fixed_by_consumers(model: onnx.ModelProto, name: str, rank: int) -> dict[int, int]:
    """Sizes of input ``name``'s axes that the layers reading it fix: a Conv's input
    channels (weight in-channels x groups), a Gemm's or MatMul's features."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    fixed: dict[int, int] = {}
    for node in model.graph.node:
        if not node.input or node.input[0] != name:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        if node.op_type == "Conv" and rank >= 2:
            fixed[1] = w[1] * int(attrs.get("group", 1))
        elif node.op_type == "Gemm" and rank == 2:
            fixed[1] = w[0] if attrs.get("transB", 0) else w[-1] if not attrs.get("transA", 0) \
                else w[0]
        elif node.op_type == "MatMul" and len(w) >= 2:
            fixed[rank - 1] = w[-2]
    return fixed


def resolve_symbolic(model: onnx.ModelProto, vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """The example shape of an input with symbolic sizes: the first axis (the batch) is 1,
    an axis a layer reading the input fixes takes that size; any other symbolic size is an
    error naming it, asking for --input-shape."""
    declared = declared_shape(vi)
    fixed = _fixed_by_consumers(model, vi.name, len(declared))
    shape, unknown = [], []
    for axis, d in enumerate(declared):
        if isinstance(d, int):
            shape.append(d)
        elif axis in fixed:
            shape.append(fixed[axis])
        elif axis == 0:
            shape.append(1)
        else:
            shape.append(-1)
            unknown.append(f"{d or '?'} (axis {axis})")
    if unknown:
        hint = ",".join(str(s) if s > 0 else (str(d) if d else "?")
                        for s, d in zip(shape, declared))
        raise TraceError(f"input {vi.name} has sizes the graph does not fix: "
                         f"{', '.join(unknown)}; give the example shape, e.g. "
                         f"--input-shape {hint} (or example_inputs)")
    return tuple(shape)


class OnnxModel(ModelAdapter):
    frontend = "onnx"

    def __init__(self, model: onnx.ModelProto, example_inputs: Sequence[Any] | None = None,
                 name: str = "model", sources: set[Path] | None = None) -> None:
        self.model = model  # our own copy: the caller's proto and file are never changed
        self.name = name
        self.sources = sources or set()  # the files read: never written
        name_nodes(model)
        # notes for the record: what loading changed
        self.notes = [f"initializer {n} was shared by layers the exporter merged: unshared"
                      for n in unshare_constants(model)]
        del model.graph.value_info[:]  # stale after any edit; re-inferred on materialize
        self._shapes, arrays = _example_shapes(model, example_inputs)
        self._inputs = arrays if arrays is not None else \
            [random_feeds(model, self._shapes)[vi.name] for vi in model_inputs(model)]
        self._session: Session | None = None
        self.rebuild()

    @classmethod
    def load(cls, path: str | Path, example_inputs: Sequence[Any] | None = None,
             name: str | None = None) -> "OnnxModel":
        model, files = load_model(path)
        return cls(model, example_inputs, name or Path(path).stem, sources=files)

    @classmethod
    def from_proto(cls, model: onnx.ModelProto, example_inputs: Sequence[Any] | None = None,
                   name: str | None = None) -> "OnnxModel":
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        check(copy, f"model {name or model.graph.name}")
        return cls(copy, example_inputs, name or model.graph.name or "model")

    @property
    def example_inputs(self) -> Sequence[Any]:
        return self._inputs

    def rebuild(self, facts: Facts | None = None) -> None:
        self.facts = facts if facts is not None else analyze(self.model, self._shapes)
        self.graph: Graph = build_graph(self.model, self.facts, self.name)
        self.node_index = {n.name: i for i, n in enumerate(self.model.graph.node)}
        self.producer_index = {o: i for i, n in enumerate(self.model.graph.node)
                               for o in n.output if o}
        self._session = None
        self._arrays: dict[str, np.ndarray] = {}
        self._init_index: dict[str, int] | None = None

    def clone(self) -> "OnnxModel":
        new = object.__new__(OnnxModel)
        new.__dict__.update(self.__dict__)
        new.model = onnx.ModelProto()
        new.model.CopyFrom(self.model)
        new.rebuild(self.facts)  # same model, same facts: no new inference
        return new

    # -- reading ----------------------------------------------------------------------
    def tensor(self, name: str) -> np.ndarray:
        """An initializer or Constant output, in its stored dtype."""
        if name in self._arrays:
            return self._arrays[name]
        if self._init_index is None:
            self._init_index = {t.name: k for k, t in enumerate(self.model.graph.initializer)}
        if name in self._init_index:
            a = numpy_helper.to_array(self.model.graph.initializer[self._init_index[name]])
        elif name in self.facts.static:
            a = self.facts.static[name].value
        else:
            raise KeyError(f"{name} is not a tensor of this model")
        if a.nbytes <= CACHE_BYTES:  # large weights are re-read: a cache would double them
            self._arrays[name] = a
        return a

    def state_array(self, name: str) -> np.ndarray:
        a = self.tensor(name)
        return a.astype(np.float32) if a.dtype.kind == "f" else a

    def state_gradients(self, inputs: Sequence[Any] | None = None,
                        loss_fn: Callable[[Any], Any] | None = None) -> dict[str, np.ndarray]:
        raise PlanError("gradient-based importance (taylor) needs a differentiable model; "
                        "onnxruntime gives none here: use importance=l1, l2 or bn-scale")

    def activation_stats(self, inputs: Sequence[Any] | None, wanted: dict[str, int]
                         ) -> dict[str, Any]:
        """Per-channel sums of the named tensors along the given axes: the tensors become
        graph outputs for one onnxruntime run."""
        from prunepass.frontends.stats import ChannelStats
        values = {v.name: v for v in self.graph.values()}
        names = [n for n in wanted if n in values]
        outputs = self.model.graph.output
        before, existing = len(outputs), {o.name for o in outputs}
        for n in names:
            if n in existing:
                continue
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(values[n].dtype))
            outputs.append(onnx.helper.make_tensor_value_info(n, elem, None))
        try:
            session = Session(self.model)
        finally:
            del outputs[before:]
        arrays = session.run(inputs if inputs is not None else self._inputs, names)
        return {n: ChannelStats.of(a, wanted[n]) for n, a in zip(names, arrays)}

    def run(self, inputs: Sequence[Any] | None = None) -> list[np.ndarray]:
        if self._session is None:
            self._session = Session(self.model)
        return self._session.run(inputs if inputs is not None else self._inputs)

    # -- transforms -------------------------------------------------------------------
    def apply_keep(self, keep: dict[tuple[str, int], np.ndarray], mode: str) -> None:
        if mode not in ("remove", "mask"):
            raise PlanError(f"unknown plan mode {mode!r}: use 'remove' or 'mask'")
        if not keep:
            return
        ed = Editor(self.model, backup_tensors=proto_size(self.model) < UNDO_LIMIT)
        try:
            if mode == "remove":
                expected = self._remove(keep, ed)
            else:
                expected = self._mask(keep, ed)
            self._rebuild_after(f"apply the prune plan ({mode})")
            self._check_shapes(expected)
        except Exception as e:
            ed.undo()  # leave the adapter as it was
            self.rebuild(self.facts)
            if ed.lossy:
                e.add_note("the model is too large to keep a copy of its weights: some are "
                           "already sliced, so load it again before using it")
            raise

    def _rebuild_after(self, what: str) -> None:
        try:
            self.rebuild()
        except TraceError as e:
            raise VerificationError(f"after the ONNX adapter tried to {what}: {e}") from e

    def _by_value(self, keep: dict[tuple[str, int], np.ndarray]
                  ) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, Value]]:
        values = {v.name: v for v in self.graph.values()}
        by_value: dict[str, dict[int, np.ndarray]] = {}
        for (vname, axis), idx in keep.items():
            if vname not in values:
                raise PlanError(f"the plan names {vname!r}, which is not a value of this model")
            by_value.setdefault(vname, {})[int(axis)] = np.asarray(idx, dtype=np.int64)
        return by_value, values

    def onnx_indices(self, node: Node) -> list[int]:
        """The ONNX nodes an IR node stands for (several for a partition of Slices)."""
        names = node.attrs.get("members", [node.name])
        return [self.node_index[n] for n in names if n in self.node_index]

    def _ir_slots(self, v: Value) -> list[Slot]:
        slots = []
        for user in v.users:
            for i in self.onnx_indices(user):
                for k, x in enumerate(self.model.graph.node[i].input):
                    if x == v.name and (i, k) not in slots:
                        slots.append((i, k))
        return slots

    def _remove(self, keep: dict[tuple[str, int], np.ndarray],
                ed: Editor) -> dict[str, tuple[int, ...]]:
        by_value, values = self._by_value(keep)

        def new_shape(v: Value) -> list[int]:
            axes = by_value.get(v.name, {})
            return [len(axes[d]) if d in axes else s for d, s in enumerate(v.shape)]

        for vname in by_value:
            v = values[vname]
            if v.kind == INPUT:
                raise PlanError(f"the plan changes model input {vname}: inputs are fixed")
            if v.producer is not None and v.producer.op == ops.CONSTANT:
                raise PlanError(f"the plan changes {vname}, a tensor computed from constants "
                                "and a symbolic size: it cannot be sliced")
        # 1. shape constants and shape attributes of every IR node (first: they are what
        # may refuse the plan, and refusing before a weight is touched is cheap to undo)
        pruned = set(by_value_keys(by_value))
        sliced = {v for v in by_value if values[v].is_state()}
        for node in self.graph.nodes:
            if node.op == ops.CONSTANT:
                continue
            for i in self.onnx_indices(node):
                rewrite_node(ed, self.facts, self.model.graph.node[i], i, node, new_shape,
                             pruned, sliced)
        # 2. slice initializers, Constants and folded constants along the pruned axes
        for vname in sliced:
            v, axes = values[vname], by_value[vname]
            arr = self.tensor(v.param or vname)
            for axis, idx in sorted(axes.items()):
                arr = np.take(arr, idx, axis=axis)
            write_tensor(ed, v.param or vname, arr, self._ir_slots(v))
        ed.commit()
        return {v.name: tuple(new_shape(v)) for v in values.values()
                if not (v.producer is not None and v.producer.op == ops.CONSTANT)}

    def _mask(self, keep: dict[tuple[str, int], np.ndarray],
              ed: Editor) -> dict[str, tuple[int, ...]]:
        by_value, values = self._by_value(keep)
        for vname, axes in by_value.items():
            v = values[vname]
            if v.kind != ACT or v.producer is None or v.producer.op == ops.CONSTANT:
                continue
            mask = np.ones([1] * v.ndim, dtype=bool)
            for axis, idx in axes.items():
                s = [1] * v.ndim
                s[axis] = v.shape[axis]
                mk = np.zeros(v.shape[axis], dtype=bool)
                mk[idx] = True
                mask = mask & mk.reshape(s)
            i = self.producer_index[vname]
            producer = self.model.graph.node[i]
            pre = ed.unique(f"{vname}__premask")
            for k, o in enumerate(producer.output):
                if o == vname:
                    producer.output[k] = pre
            m = ed.add_initializer(f"{vname}__mask", mask)
            zero = ed.add_initializer(f"{vname}__zero", np.zeros((), dtype=np.dtype(v.dtype)))
            # Where rather than a multiplication: a dropped entry is 0 even where the
            # unpruned model computes inf or NaN there (x / norm(x) with the norm masked)
            mul = helper.make_node("Where", [m, pre, zero], [vname],
                                   name=ed.unique("prunepass_mask"))
            ed.insert_after(i, mul)
        ed.commit()
        return {v.name: v.shape for v in values.values()
                if not (v.producer is not None and v.producer.op == ops.CONSTANT)}

    def _check_shapes(self, expected: dict[str, tuple[int, ...]]) -> None:
        """The rebuilt model must have exactly the shapes the plan promised."""
        for v in self.graph.values():
            want = expected.get(v.name)
            if want is not None and tuple(v.shape) != tuple(want):
                p = v.producer
                who = f"node {p.name} ({p.target})" if p is not None else f"tensor {v.name}"
                raise PlanError(f"{who}: {v.name} has shape {list(v.shape)} after the plan, "
                                f"expected {list(want)}; a shape constant it depends on could "
                                "not be rewritten")

    def fold_batchnorms(self, pairs: list[tuple[Node, Node]]) -> None:
        if not pairs:
            return
        ed = Editor(self.model)
        for producer, norm in pairs:
            self._fold(ed, producer, norm)
        ed.commit()
        erase_dead(self.model)
        self._rebuild_after(f"fold {len(pairs)} batch norms")

    def _fold(self, ed: Editor, producer: Node, norm: Node) -> None:
        if "running_mean" not in norm.attrs.get("has", []):
            raise PlanError(f"node {norm.name}: batch norm without running statistics cannot "
                            "be folded")
        pi, ni = self.producer_index[producer.output.name], self.node_index[norm.name]
        p_node, n_node = self.model.graph.node[pi], self.model.graph.node[ni]
        gamma, beta, mean, var = (self.tensor(x.name).astype(np.float64)
                                  for x in norm.inputs[1:5])
        eps = float(norm.attrs["eps"])
        scale = gamma / np.sqrt(var + eps)
        w_v = producer.inputs[1]
        w = self.tensor(w_v.name)
        new_w = (w.astype(np.float64) * scale.reshape([-1] + [1] * (w.ndim - 1))).astype(w.dtype)
        write_tensor(ed, w_v.name, new_w, self._ir_slots(w_v))
        bias = producer.inputs[2] if len(producer.inputs) > 2 else None
        b_scale = float(producer.attrs.get("beta", 1.0)) if p_node.op_type == "Gemm" else 1.0
        if p_node.op_type == "Gemm":
            # y = alpha*A*B^T + beta*C: fold beta into C and drop it
            for k, a in enumerate(p_node.attribute):
                if a.name == "beta":
                    del p_node.attribute[k]
                    break
        shift = beta - mean * scale
        if bias is None:
            name = ed.add_initializer(f"{w_v.name}__bias", shift.astype(w.dtype))
            while len(p_node.input) < 3:
                p_node.input.append("")
            ed.set_input(pi, 2, name)
        elif bias.is_state():
            b = self.tensor(bias.name).astype(np.float64) * b_scale
            write_tensor(ed, bias.name, (b * scale + shift).astype(w.dtype),
                         self._ir_slots(bias))
        else:  # a bias computed in the graph: scale and shift it there
            k = ed.add_initializer(f"{w_v.name}__bn_scale", (scale * b_scale).astype(w.dtype))
            s = ed.add_initializer(f"{w_v.name}__bn_shift", shift.astype(w.dtype))
            mul = ed.node("Mul", [p_node.input[2], k], f"{w_v.name}__scaled_bias")
            add = ed.node("Add", [mul.output[0], s], f"{w_v.name}__folded_bias")
            ed.insert_before(pi, mul)
            ed.insert_before(pi, add)
            ed.set_input(pi, 2, add.output[0])
        # the producer now yields the norm's output; other readers of its old output (a
        # Shape, say) read the same-shaped tensor under the new name
        old, new = p_node.output[0], n_node.output[0]
        for i, k in list(ed.readers(old)):
            if k >= 0 and i != ni:
                ed.set_input(i, k, new)
        p_node.output[0] = new
        del n_node.output[:]
        n_node.output.append(ed.unique(f"{new}__folded_away"))

    def erase_dead(self) -> int:
        removed = erase_dead(self.model)
        if removed:
            self._rebuild_after("remove dead nodes")
        return removed

    # -- output -----------------------------------------------------------------------
    def materialize(self) -> onnx.ModelProto:
        """A checked copy of the model with shapes re-inferred (opset unchanged)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        try:
            value_info = inferred_value_info(out)
        except Exception as e:
            raise VerificationError(f"the pruned model fails onnx shape inference: "
                                    f"{first_line(e)}") from e
        del out.graph.value_info[:]
        out.graph.value_info.extend(value_info)
        if proto_size(out) < PROTO_LIMIT:
            check(out, f"pruned model {self.name}")
        return out

    def save(self, path: str | Path) -> Path:
        """Write the pruned model; over 2 GiB its tensors go to ``<name>.data`` beside it.
        The file the model was loaded from is never overwritten."""
        p = Path(path).resolve()
        for target in (p, p.parent / (p.name + ".data")):
            if target in self.sources:
                raise PlanError(f"refusing to overwrite {target}, which the input model was "
                                "read from: choose another path")
        model = self.materialize()
        p.parent.mkdir(parents=True, exist_ok=True)
        if proto_size(model) < PROTO_LIMIT:
            onnx.save_model(model, str(p))
        else:
            save_with_external_data(model, p)
            onnx.checker.check_model(str(p))
        return p


# below this size a refused plan restores sliced weights from copies
UNDO_LIMIT = 1 << 30
CACHE_BYTES = 1 << 20  # tensors read for analyses are cached up to this size


def by_value_keys(by_value: dict[str, dict[int, np.ndarray]]) -> list[tuple[str, int]]:
    return [(v, a) for v, axes in by_value.items() for a in axes]
