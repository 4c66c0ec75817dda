"""Small edits of an onnx.ModelProto: fresh names, initializers, node insertion, rewiring,
and dead-code removal. The adapter and the shape-constant rewriter share them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from prunepass.frontends.onnx.static_values import subgraph_names

Slot = tuple[int, int]  # (node index, input position)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, non-empty name: the IR refers to nodes by name."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        n.name = name
        seen.add(name)


def consumers(model: onnx.ModelProto) -> dict[str, list[Slot]]:
    """Value name -> the (node, input position) slots reading it. Reads from inside a
    subgraph are listed with position -1 (they cannot be rewired one by one)."""
    out: dict[str, list[Slot]] = {}
    for i, n in enumerate(model.graph.node):
        for k, x in enumerate(n.input):
            if x:
                out.setdefault(x, []).append((i, k))
        for x in subgraph_names(n):
            out.setdefault(x, []).append((i, -1))
    return out


def unshare_constants(model: onnx.ModelProto) -> list[str]:
    """Give every layer its own copy of an initializer that holds one value repeated (a
    zero bias, a unit norm scale) and that several nodes read. Exporters (torch's legacy
    exporter, optimum, ultralytics) merge such identical tensors, which would couple the
    channels of unrelated layers. A tensor with varied values read twice is a real tie (an
    embedding and its LM head) and stays shared. Returns the names unshared."""
    slots = consumers(model)
    inits = {t.name: t for t in model.graph.initializer}
    done = []
    for name, reads in slots.items():
        t = inits.get(name)
        if t is None or len(reads) < 2 or any(k < 0 for _, k in reads) or \
                t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        value = numpy_helper.to_array(t)
        if value.size < 2 or not (value == value.flat[0]).all():
            continue
        for i, k in reads[1:]:
            node = model.graph.node[i]
            copy = numpy_helper.from_array(value, f"{name}.{node.name}.{k}")
            model.graph.initializer.append(copy)
            node.input[k] = copy.name
        done.append(name)
    return done


class Editor:
    """Collects insertions so node indices stay valid until ``commit``."""

    def __init__(self, model: onnx.ModelProto, backup_tensors: bool = True) -> None:
        self.model = model
        # undo keeps a copy of each tensor it replaces, unless the model is too big for
        # a second copy in memory; then an undo after a replacement is "lossy"
        self.backup_tensors = backup_tensors
        self.lossy = False
        g = model.graph
        self.names: set[str] = {t.name for t in g.initializer} | {i.name for i in g.input} | \
            {o.name for o in g.output} | {n.name for n in g.node}
        for n in g.node:
            self.names.update(n.output)
        self._before: dict[int, list[onnx.NodeProto]] = {}
        self._after: dict[int, list[onnx.NodeProto]] = {}
        self._inits = {t.name: k for k, t in enumerate(g.initializer)}
        self._readers: dict[str, list[Slot]] | None = None
        # for undo: the nodes and initializer names before any edit, replaced tensors
        self._nodes = [_copy_node(n) for n in g.node]
        self._init_names = [t.name for t in g.initializer]
        self.replaced: dict[str, onnx.TensorProto] = {}

    def readers(self, name: str) -> list[Slot]:
        """The slots reading ``name``, kept current through ``set_input``."""
        if self._readers is None:
            self._readers = consumers(self.model)
        return self._readers.get(name, [])

    def set_input(self, index: int, slot: int, name: str) -> None:
        node = self.model.graph.node[index]
        if self._readers is not None:
            old = self._readers.get(node.input[slot], [])
            if (index, slot) in old:
                old.remove((index, slot))
            self._readers.setdefault(name, []).append((index, slot))
        node.input[slot] = name

    def unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self._inits[name] = len(self.model.graph.initializer) - 1
        return name

    def is_initializer(self, name: str) -> bool:
        return name in self._inits

    def replace_initializer(self, name: str, value: np.ndarray) -> None:
        t = self.model.graph.initializer[self._inits[name]]
        if name not in self.replaced:
            if self.backup_tensors:
                self.replaced[name] = onnx.TensorProto()
                self.replaced[name].CopyFrom(t)
            else:
                self.lossy = True
        t.CopyFrom(numpy_helper.from_array(np.asarray(value), name))

    def constant_node(self, output: str) -> onnx.NodeProto | None:
        for n in self.model.graph.node:
            if n.op_type == "Constant" and n.output and n.output[0] == output:
                return n
        return None

    def insert_before(self, index: int, node: onnx.NodeProto) -> None:
        self._before.setdefault(index, []).append(node)

    def insert_after(self, index: int, node: onnx.NodeProto) -> None:
        self._after.setdefault(index, []).append(node)

    def node(self, op: str, inputs: list[str], output_base: str, **attrs) -> onnx.NodeProto:  # noqa: ANN003
        out = self.unique(output_base)
        return onnx.helper.make_node(op, inputs, [out], name=self.unique(f"prunepass_{op}"),
                                     **attrs)

    def undo(self) -> None:
        """Put the model back as it was when this editor was made (the node list is
        small; only replaced initializers were copied)."""
        g = self.model.graph
        del g.node[:]
        g.node.extend(self._nodes)
        _drop_initializers(g, set(t.name for t in g.initializer) - set(self._init_names))
        for t in g.initializer:
            if t.name in self.replaced:
                t.CopyFrom(self.replaced[t.name])

    def commit(self) -> None:
        if not self._before and not self._after:
            return
        g = self.model.graph
        nodes = []
        for i, n in enumerate(g.node):
            nodes += self._before.get(i, [])
            nodes.append(n)
            nodes += self._after.get(i, [])
        del g.node[:]
        g.node.extend(nodes)
        self._before.clear()
        self._after.clear()


def write_tensor(ed: Editor, name: str, value: np.ndarray, slots: list[Slot]) -> str:
    """Give the tensor ``name`` a new value for the reader slots ``slots``. In place when
    nothing else reads it (names stay stable for records), else as a new initializer."""
    model = ed.model
    shared = name in {o.name for o in model.graph.output} or \
        any(r not in slots for r in ed.readers(name))
    if not shared:
        if ed.is_initializer(name):
            ed.replace_initializer(name, value)
            return name
        const = ed.constant_node(name)
        if const is not None:
            del const.attribute[:]
            const.attribute.append(onnx.helper.make_attribute(
                "value", numpy_helper.from_array(np.asarray(value), name)))
            return name
    new = ed.add_initializer(f"{name}__pruned", value)
    for i, k in slots:
        ed.set_input(i, k, new)
    return new


def erase_dead(model: onnx.ModelProto) -> int:
    """Remove the nodes no graph output depends on and the initializers nobody reads
    (onnx-graphsurgeon's cleanup, subgraphs included), then order the nodes topologically.
    The model keeps its own opset, metadata and functions: only its graph is replaced."""
    import onnx_graphsurgeon as gs
    from prunepass.errors import TraceError, first_line
    before = len(model.graph.node)
    try:
        graph = gs.import_onnx(model)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        new = gs.export_onnx(graph, do_type_check=False)
    except Exception as e:  # a damaged field onnx.load let through
        raise TraceError(f"onnx-graphsurgeon cannot rewrite this model's graph "
                         f"({type(e).__name__}: {first_line(e)}): is the file damaged?") from e
    del new.graph.value_info[:]  # what graphsurgeon knew of shapes predates the edits
    model.graph.CopyFrom(new.graph)
    return before - len(model.graph.node)


def _copy_node(n: onnx.NodeProto) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(n)
    return c


def _drop_initializers(g: onnx.GraphProto, names: set[str]) -> None:
    """Delete in place: rebuilding the list would copy every (possibly huge) tensor."""
    if not names:
        return
    for k in reversed(range(len(g.initializer))):
        if g.initializer[k].name in names:
            del g.initializer[k]
    for k in reversed(range(len(g.input))):
        if g.input[k].name in names:
            del g.input[k]
