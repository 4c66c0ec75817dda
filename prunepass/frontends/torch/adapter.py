"""The torch adapter: a GraphModule of ATen ops plus the primitives transforms need.

The adapter keeps two views of one set of tensors: ``module``, the user's own class (a copy
whose tensors share storage with the caller's until they change, or the caller's model
itself with ``in_place``), and ``gm``, the traced graph, which holds the very same
Parameter and buffer objects. Transforms replace a tensor's data in place on that object,
so both views follow and the old data is freed at once: at no point is there a second copy
of the weights."""
from __future__ import annotations

import copy
import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx as fx

from prunepass.errors import PlanError, VerificationError, TraceError
from prunepass.frontends.base import ModelAdapter
from prunepass.frontends.torch import weight_masks
from prunepass.frontends.torch.aten_map import SIZE_ARG, _base_name, bind
from prunepass.frontends.torch.to_ir import build_graph, fetch_attr
from prunepass.frontends.torch.inputs import Inputs, normalize
from prunepass.frontends.torch.trace import plain_graph_module, trace
from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node

aten = torch.ops.aten


def _owner(gm: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = target.split(".")
    mod = gm
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def set_state(gm: torch.nn.Module, target: str, t: torch.Tensor) -> None:
    """Give a parameter, buffer or constant new data. The tensor object stays (the user's
    module holds it too) and only its data is swapped, so the old data is freed as soon as
    nothing else holds it; storage shared with the caller's model is never written."""
    mod, leaf = _owner(gm, target)
    old = getattr(mod, leaf)
    new = t.detach()
    is_state = isinstance(old, torch.nn.Parameter) or leaf in mod._buffers or (
        isinstance(old, torch.Tensor) and not isinstance(type(mod).__dict__.get(leaf),
                                                         property))
    if not is_state:  # a parametrized weight: assigning stores its new original
        setattr(mod, leaf, new.clone())
        return
    if new.untyped_storage().data_ptr() == old.untyped_storage().data_ptr():
        new = new.clone()
    old.data = new


def set_arg(fxn: fx.Node, name: str, value: Any) -> None:
    """Set an ATen call's argument by schema name, positional or keyword as it was given."""
    names = [a.name for a in fxn.target._schema.arguments]
    i = names.index(name)
    if i < len(fxn.args):
        args = list(fxn.args)
        args[i] = value
        fxn.args = tuple(args)
    else:
        fxn.kwargs = {**fxn.kwargs, name: value}


def storage_sharing_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are new tensor objects over the
    same storage: free in memory, and the caller's tensors never change when the copy's are
    given new data."""
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in memo:
            memo[id(t)] = (torch.nn.Parameter(t.detach(), t.requires_grad)
                           if isinstance(t, torch.nn.Parameter) else t.detach())
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:
        raise TraceError(f"{type(model).__name__} cannot be copied ({e}); pass "
                         "in_place=True to prune the model itself") from e


def graph_only_state(gm: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """Tensors of the graph that are not the module's own objects (weight masks aside): a
    constant tracing lifted, or one a transform added (a folded bias, an activation mask)."""
    mine = {id(t) for t in list(module.parameters()) + list(module.buffers())}
    masked = {n for n, _ in weight_masks.masked_names(gm)}
    return [name for name, t in list(gm.named_parameters()) + list(gm.named_buffers())
            if id(t) not in mine and name not in masked and ".parametrizations." not in name
            and not name.startswith("parametrizations.")]


def _as_array(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()  # bfloat16 and the float8 types have no numpy dtype
    return t.numpy()


def _flatten_outputs(out: Any) -> list[np.ndarray]:
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [_as_array(x) for x in flat if isinstance(x, torch.Tensor)]


def default_loss(out: Any) -> torch.Tensor:
    """Cross-entropy against the model's own predictions for (N, classes) outputs, else the
    mean square: what first-order Taylor importance uses when no loss is given."""
    flat, _ = torch.utils._pytree.tree_flatten(out)
    y = [x for x in flat if isinstance(x, torch.Tensor) and x.is_floating_point()][0]
    if y.dim() == 2:
        return torch.nn.functional.cross_entropy(y, y.argmax(1))
    return y.pow(2).mean()


class TorchModel(ModelAdapter):
    frontend = "torch"

    def __init__(self, gm: fx.GraphModule, example_inputs: Any, name: str = "model",
                 module: torch.nn.Module | None = None, notes: list[str] | None = None,
                 caller: torch.nn.Module | None = None):
        self.gm = gm
        self._inputs = normalize(example_inputs)
        self.name = name
        self.module = module  # the user's own class, None where there is none to give back
        self.caller = caller  # the caller's model the module shares storage with (not in place)
        self.notes = list(notes or [])  # what tracing did that the record should say
        self.rewrites: list[tuple[str, int, int]] = []  # (module path, old, new) constants
        self.removed_blocks: list[str] = []  # module paths of residual blocks bypassed
        # attention whose default scale the graph pinned: (module path, old, new head dim)
        self.pinned_scales: list[tuple[str, int, int]] = []
        # constants tracing lifted out of forward (no attribute of the module holds them)
        self.traced_constants = set(graph_only_state(gm, module)) if module is not None else set()
        self.rebuild()

    @classmethod
    def from_module(cls, model: Any, example_inputs: Any = None, name: str | None = None,
                    in_place: bool = False) -> "TorchModel":
        """Trace ``model``: an ``nn.Module`` (then ``in_place`` prunes it itself; otherwise a
        copy sharing its storage is made), or a ``torch.export.ExportedProgram``."""
        if isinstance(model, torch.export.ExportedProgram):
            if example_inputs is None:
                example_inputs = model.example_inputs
            if example_inputs is None:
                raise TraceError("this ExportedProgram carries no example inputs: pass them")
            notes = ["an ExportedProgram has no class of its own: the result is its graph "
                     "module"]
            # the program holds the traced model's own tensors: work on a storage-sharing copy
            gm = plain_graph_module(storage_sharing_copy(model.module()), notes)
            return cls(gm, example_inputs, name or "ExportedProgram", notes=notes)
        if isinstance(model, fx.GraphModule):
            notes = ["a GraphModule has no class of its own: the result is the pruned graph "
                     "module"]
            inputs = normalize(example_inputs)
            exported = hasattr(model, "_in_spec") and all(
                n.target == "_guards_fn" for n in model.graph.nodes if n.op == "call_module")
            if exported:  # ExportedProgram.module(): ATen ops already
                gm = plain_graph_module(storage_sharing_copy(model), notes)
            else:
                gm = trace(storage_sharing_copy(model), inputs, notes)
            return cls(gm, inputs, name or type(model).__name__, notes=notes)
        inputs = normalize(example_inputs)
        working = model if in_place else storage_sharing_copy(model)
        notes: list[str] = []
        gm = trace(working, inputs, notes)
        return cls(gm, inputs, name or type(model).__name__, module=working, notes=notes,
                   caller=None if in_place else model)

    @property
    def example_inputs(self) -> Any:
        """The example inputs: the args tuple, or an ``Inputs`` where there are keywords."""
        return self._inputs.public()

    def _flat(self, inputs: Inputs) -> list[Any]:
        spec = getattr(self.gm, "_in_spec", None)
        if spec is None:
            return list(inputs.args)
        return list(torch.fx._pytree.tree_flatten_spec((inputs.args, inputs.kwargs), spec))

    def rebuild(self) -> None:
        self.graph: Graph = build_graph(self.gm, self._flat(self._inputs), self.name)
        weight_masks.mark_params(self.graph, self.gm)
        self.fx_nodes = {n.name: n for n in self.gm.graph.nodes}

    def clone(self) -> "TorchModel":
        new = copy.copy(self)
        # one deepcopy of both views, so the copy's graph and module share tensors too
        new.gm, new.module = copy.deepcopy((self.gm, self.module))
        new.caller = None  # the copy's tensors are its own
        new.rewrites = list(self.rewrites)
        new.removed_blocks = list(self.removed_blocks)
        new.pinned_scales = list(self.pinned_scales)
        new.rebuild()
        return new

    # -- reading ----------------------------------------------------------------------
    def state_tensor(self, name: str) -> torch.Tensor:
        return fetch_attr(self.gm, name)

    def state_array(self, name: str) -> np.ndarray:
        return self.state_tensor(name).detach().float().cpu().numpy()

    def state_gradients(self, inputs: Sequence[Any] | None = None,
                        loss_fn: Callable[[Any], Any] | None = None) -> dict[str, np.ndarray]:
        self.check_calibration(inputs)
        gm = self.gm
        params = dict(gm.named_parameters())
        for p in params.values():
            p.grad = None
        was = gm.training
        gm.eval()
        with torch.enable_grad():
            out = self._call(gm, inputs)
            (loss_fn or default_loss)(out).backward()
        gm.train(was)
        grads = {k: p.grad.detach().float().cpu().numpy() for k, p in params.items()
                 if p.grad is not None}
        for p in params.values():
            p.grad = None
        return weight_masks.public_names(grads)

    def activation_stats(self, inputs: Sequence[Any] | None, wanted: dict[str, int]
                         ) -> dict[str, Any]:
        """Per-channel sums (ChannelStats) of the named values along the given axes, on
        ``inputs`` (default: the example inputs), in eval mode."""
        from prunepass.frontends.torch.activations import channel_stats
        return channel_stats(lambda callbacks: self.watch(inputs, callbacks), wanted)

    def watch(self, inputs: Sequence[Any] | None,
              wanted: dict[str, Callable[[torch.Tensor], None]]) -> None:
        """Run the graph on ``inputs`` in eval mode, calling ``wanted[value](tensor)`` on
        each named value as it is computed."""
        from prunepass.frontends.torch.activations import record
        self.check_calibration(inputs)
        was = self.gm.training
        self.gm.eval()
        try:
            record(self.gm, lambda: self._call(self.gm, inputs), wanted)
        finally:
            self.gm.train(was)

    def bypass(self, blocks: dict[str, str], scopes: list[str]) -> None:
        """For each block, ``{node making its output: the value going in}``: whatever read
        the output reads the input instead, and what only the block computed goes.
        ``scopes`` are the modules so emptied (the own class drops them from their list)."""
        by_name = {n.name: n for n in self.gm.graph.nodes}
        for last, entry in blocks.items():
            while entry in blocks:  # consecutive blocks: the first one's input
                entry = blocks[entry]
            self.fx_nodes[last].replace_all_uses_with(by_name[entry])
        self.removed_blocks += scopes
        self.erase_dead(recompile=False)
        self._recompile("bypass residual blocks")

    def run(self, inputs: Sequence[Any] | None = None,
            module: torch.nn.Module | None = None) -> list[np.ndarray]:
        """The outputs of the graph (or of ``module``) in eval mode, without gradients; every
        submodule's train/eval flag and a Hugging Face cache setting are restored."""
        from prunepass.frontends.torch.trace import no_cache
        module = self.gm if module is None else module
        training = {m: m.training for m in module.modules()}
        module.eval()
        try:
            with torch.no_grad(), no_cache(module, []):
                return _flatten_outputs(self._call(module, inputs))
        finally:
            for m, t in training.items():
                m.training = t

    def _call(self, module: torch.nn.Module, inputs: Any) -> Any:
        return (normalize(inputs) if inputs is not None else self._inputs).call(module)

    def check_calibration(self, inputs: Any) -> None:  # noqa: ANN401
        """A clear error where calibration inputs do not fit the traced model."""
        from prunepass.frontends.torch.inputs import check_calibration
        if inputs is not None:
            check_calibration(self._inputs, normalize(inputs))

    # -- transforms -------------------------------------------------------------------
    def apply_keep(self, keep: dict[tuple[str, int], np.ndarray], mode: str) -> None:
        if mode == "remove":
            with weight_masks.follow_slices(self, keep):
                self._remove(keep)
        elif mode == "mask":
            self._mask(keep)
        else:
            raise PlanError(f"unknown plan mode {mode!r}: use 'remove' or 'mask'")
        self._recompile("apply the prune plan")

    def _recompile(self, what: str) -> None:
        self.gm.graph.lint()
        self.gm.recompile()
        try:
            self.rebuild()
        except TraceError as e:
            raise VerificationError(f"after the torch adapter tried to {what}: {e}") from e

    def _remove(self, keep: dict[tuple[str, int], np.ndarray]) -> None:
        g = self.graph
        by_value: dict[str, dict[int, np.ndarray]] = {}
        for (vname, axis), idx in keep.items():
            by_value.setdefault(vname, {})[axis] = idx
        values = {v.name: v for v in g.values()}
        # 1. slice parameters, buffers and constants
        for vname, axes in by_value.items():
            v = values[vname]
            if v.is_state():
                t = self.state_tensor(v.param)
                for axis, idx in sorted(axes.items()):
                    t = t.index_select(axis, torch.as_tensor(idx, dtype=torch.long,
                                                             device=t.device))
                set_state(self.gm, v.param, t)
            elif v.kind == "input":
                raise PlanError(f"the plan changes model input {vname}: inputs are fixed")

        def new_shape(v) -> list[int]:
            axes = by_value.get(v.name, {})
            return [len(axes[d]) if d in axes else s for d, s in enumerate(v.shape)]

        # 2. rewrite shape constants and shape-dependent attributes of each node
        for node in g.nodes:
            reads_changed = node.op in (ops.ATTENTION, ops.SLICE) and \
                node.inputs[0].name in by_value
            if not any(o.name in by_value for o in node.outputs) and not reads_changed:
                continue
            self._rewrite_node(node, new_shape, by_value)

    def _rewrite_node(self, node: Node, new_shape, by_value) -> None:  # noqa: ANN001
        fxn = self.fx_nodes[node.name]
        base = _base_name(fxn.target)
        out = node.outputs[0]
        shape = new_shape(out)
        if base in SIZE_ARG:
            i = SIZE_ARG[base]
            args = list(fxn.args)
            sizes = list(args[i]) if i < len(args) else list(fxn.kwargs["size"])
            if len(sizes) != len(shape):
                raise PlanError(f"node {node.name} ({base}): size list {sizes} does not match "
                                f"its output rank {len(shape)}")
            for d, (old, new) in enumerate(zip(sizes, shape)):
                if new != out.shape[d]:
                    if isinstance(old, int) and old != -1:
                        sizes[d] = new
                        self.rewrites.append((node.scope, old, new))
                    elif not isinstance(old, int):
                        sizes[d] = _scaled_product(fxn, old, new, out.shape[d], node, d)
                        self.rewrites.append((node.scope, out.shape[d], new))
            if i < len(args):
                args[i] = sizes
                fxn.args = tuple(args)
            else:
                fxn.kwargs = {**fxn.kwargs, "size": sizes}
        elif base == "unflatten":
            x, dim, sizes = fxn.args[:3]
            dim = dim + node.inputs[0].ndim if dim < 0 else dim
            new_sizes = [shape[dim + k] if isinstance(s, int) and s != -1 else s
                         for k, s in enumerate(sizes)]
            self.rewrites += [(node.scope, a, b) for a, b in zip(sizes, new_sizes) if a != b]
            fxn.args = (x, dim, new_sizes)
        elif node.op == ops.SPLIT and base != "unbind":
            axis = node.attrs["axis"]
            sizes = [new_shape(o)[axis] for o in node.outputs]
            if len(node.outputs) != len(fxn.meta["val"]):
                raise PlanError(f"node {node.name} ({base}): some of its outputs are unused; "
                                "run dce first")
            self.rewrites += [(node.scope, o.shape[axis], n)
                              for o, n in zip(node.outputs, sizes) if o.shape[axis] != n]
            fxn.target = aten.split_with_sizes.default
            fxn.args, fxn.kwargs = (fxn.args[0], sizes, axis), {}
        elif node.op == ops.CONV:
            w = node.inputs[1]
            groups = node.attrs["groups"]
            if groups > 1 and not node.attrs["transposed"] and w.shape[1] == 1:
                # depthwise: a group is one input channel, so the group count follows it
                set_arg(fxn, "groups", new_shape(node.inputs[0])[1])
        elif node.op == ops.SLICE:
            x, axis = node.inputs[0], node.attrs["axis"]
            kept = by_value.get(x.name, {}).get(axis)
            if kept is not None:
                n = x.shape[axis]
                start = node.attrs["start"] or 0
                start = max(0, start + n if start < 0 else min(start, n))
                end = start + out.shape[axis]
                new_start = int((kept < start).sum())
                set_arg(fxn, "start", new_start)
                set_arg(fxn, "end", new_start + int(((kept >= start) & (kept < end)).sum()))
        elif node.op == ops.LAYERNORM:
            set_arg(fxn, "normalized_shape", shape[-node.attrs["ndims"]:])
        elif node.op == ops.ATTENTION:
            q = node.inputs[0]
            # the default scale is 1/sqrt(head dim): keep the original one
            if new_shape(q)[-1] != q.shape[-1] and bind(fxn).get("scale") is None:
                set_arg(fxn, "scale", 1.0 / math.sqrt(q.shape[-1]))
                self.pinned_scales.append((node.scope, q.shape[-1], new_shape(q)[-1]))

    def _mask(self, keep: dict[tuple[str, int], np.ndarray]) -> None:
        values = {v.name: v for v in self.graph.values()}
        by_value: dict[str, dict[int, np.ndarray]] = {}
        for (vname, axis), idx in keep.items():
            if values[vname].kind == "act":
                by_value.setdefault(vname, {})[axis] = idx
        graph = self.gm.graph
        for k, (vname, axes) in enumerate(by_value.items()):
            v = values[vname]
            fxn = self.fx_nodes[vname]
            mask = torch.ones([1] * v.ndim, dtype=torch.bool)
            for axis, idx in axes.items():
                s = [1] * v.ndim
                s[axis] = v.shape[axis]
                mk = torch.zeros(v.shape[axis], dtype=torch.bool)
                mk[torch.as_tensor(idx, dtype=torch.long)] = True
                mask = mask & mk.reshape(s)
            attr = f"_prunepass_mask_{k}"
            while hasattr(self.gm, attr):  # a second mask pass adds new names
                attr += "_"
            self.gm.register_buffer(attr, mask, persistent=False)
            with graph.inserting_after(fxn):
                get = graph.get_attr(attr)
            with graph.inserting_after(get):
                # where, not mul: a dropped entry is 0 even where the dense model has inf
                # or NaN there (x / norm(x) with the norm masked gives 0/0)
                mul = graph.call_function(aten.where.ScalarOther, (get, fxn, 0.0))
            fxn.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)

    def fold_batchnorms(self, pairs: list[tuple[Node, Node]]) -> None:
        for producer, norm in pairs:
            self._fold(producer, norm)
        self.erase_dead(recompile=False)
        self._recompile(f"fold {len(pairs)} batch norms")

    def _fold(self, producer: Node, norm: Node) -> None:
        pfx, nfx = self.fx_nodes[producer.name], self.fx_nodes[norm.name]
        has = norm.attrs["has"]
        parts = dict(zip(has, norm.inputs[1:]))
        if "running_mean" not in parts or "running_var" not in parts:
            raise PlanError(f"node {norm.name}: batch norm without running statistics cannot "
                            "be folded")
        eps = float(norm.attrs["eps"])
        w_v = producer.inputs[1]
        w = self.state_tensor(w_v.param).detach()
        cout = norm.inputs[0].shape[1]
        mean = self.state_tensor(parts["running_mean"].param).detach()
        var = self.state_tensor(parts["running_var"].param).detach()
        gamma = (self.state_tensor(parts["weight"].param).detach() if "weight" in parts
                 else torch.ones(cout))
        beta = (self.state_tensor(parts["bias"].param).detach() if "bias" in parts
                else torch.zeros(cout))
        scale = gamma / torch.sqrt(var + eps)
        if len(producer.inputs) > 2:
            b = self.state_tensor(producer.inputs[2].param).detach()
        else:
            b = torch.zeros(cout, dtype=w.dtype)
        new_w = w * scale.reshape([-1] + [1] * (w.dim() - 1))
        new_b = (b - mean) * scale + beta
        set_state(self.gm, w_v.param, new_w)
        graph = self.gm.graph
        if len(producer.inputs) > 2:
            set_state(self.gm, producer.inputs[2].param, new_b)
        else:
            prefix = w_v.param.rsplit(".", 1)[0] if "." in w_v.param else ""
            mod, _ = _owner(self.gm, w_v.param)
            leaf = "bias"
            while hasattr(mod, leaf):
                leaf += "_"
            mod.register_parameter(leaf, torch.nn.Parameter(new_b.to(w.dtype)))
            target = f"{prefix}.{leaf}" if prefix else leaf
            with graph.inserting_before(pfx):
                get = graph.get_attr(target)
            args = list(pfx.args)
            while len(args) < 3:
                args.append(None)
            args[2] = get
            pfx.args = tuple(args)
        if isinstance(nfx.meta.get("val"), (tuple, list)):  # (out, mean, invstd) variants
            for u in list(nfx.users):
                if u.args[1] == 0:
                    u.replace_all_uses_with(pfx)
        else:
            nfx.replace_all_uses_with(pfx)

    def erase_dead(self, recompile: bool = True) -> int:
        graph = self.gm.graph
        before = len(graph.nodes)
        graph.eliminate_dead_code()  # keeps in-place ops: they may write into a live view
        used = {n.target for n in graph.nodes if n.op == "get_attr"}
        used |= weight_masks.internal_state(self.gm, used)
        for name, _ in list(self.gm.named_parameters()) + list(self.gm.named_buffers()):
            if name not in used and not name.endswith("num_batches_tracked"):
                mod, leaf = _owner(self.gm, name)
                mod._parameters.pop(leaf, None)
                mod._buffers.pop(leaf, None)
        removed = before - len(graph.nodes)
        if recompile and removed:
            self._recompile("remove dead nodes")
        return removed

    def set_weight_masks(self, masks: dict[str, np.ndarray]) -> None:
        weight_masks.apply(self.gm, masks)
        self.rebuild()

    def weight_masks(self) -> dict[str, np.ndarray]:
        return weight_masks.read(self.gm)

    def materialize(self) -> torch.nn.Module:
        """The pruned graph module (a copy): what the backends build and time."""
        from prunepass.frontends.torch.materialize import trainable_module
        return trainable_module(self.gm)

    def user_module(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The result handed to the user: their own class with the pruned tensors and updated
        attributes where it checks out numerically against the graph, else the graph module;
        and what was done, for the record."""
        from prunepass.frontends.torch.own_module import own_module
        return own_module(self)


def _is_product(n: Any) -> bool:  # noqa: ANN401
    """A size that is a product of ints and symbols (the batch): ``B * C * patches``."""
    if isinstance(n, int):
        return True
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_function" and n.target is operator.mul:
        return all(_is_product(a) for a in n.args)
    return n.op == "call_function" and "sym_size" in str(n.target) or n.op == "placeholder"


def _scaled_product(fxn: fx.Node, old: Any, new: int, example: int, node: Node,  # noqa: ANN401
                    axis: int) -> fx.Node:
    """A symbolic size ``old`` (with the example inputs: ``example``) that a pruned channel
    count is a factor of, scaled to ``new``: old * new // example. Exact for a product of
    the batch (or any symbol) and constants: every factor but the channels' is unchanged."""
    if not _is_product(old):
        raise PlanError(f"node {node.name}: axis {axis} has a symbolic size that is not a "
                        "product of the batch and constants and cannot be rewritten")
    with fxn.graph.inserting_before(fxn):
        scaled = fxn.graph.call_function(operator.mul, (old, new))
        return fxn.graph.call_function(operator.floordiv, (scaled, example))
