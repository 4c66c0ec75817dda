"""torch.nn.Module -> a plain torch.fx.GraphModule of ATen ops, via torch.export.

The GraphModule holds the model's own Parameter and buffer objects (torch.export's
unlifting registers the same tensors), so tracing costs no copy of the weights."""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch.export import Dim

from prunepass.errors import TraceError, first_line
from prunepass.frontends.torch.inputs import Inputs, check_signature, normalize


def _dynamic(x: Any) -> tuple[Any, Any]:
    if isinstance(x, torch.Tensor) and x.dim() > 0:
        return (torch.cat([x, x]) if x.shape[0] == 1 else x), {0: Dim.AUTO}
    return x, None


def _export_args(model: torch.nn.Module, inputs: Inputs) -> tuple[Inputs, Any]:
    """Export with a symbolic batch size so the pruned module accepts any batch. A batch of
    one would be specialised by torch.export, so it is doubled for tracing only. With
    keyword inputs, torch.export wants the dynamic shapes keyed by parameter name."""
    args = [_dynamic(a) for a in inputs.args]
    kwargs = {k: _dynamic(v) for k, v in inputs.kwargs.items()}
    doubled = Inputs(tuple(a for a, _ in args), {k: a for k, (a, _) in kwargs.items()})
    if not kwargs:
        return doubled, tuple(d for _, d in args)
    names = list(inspect.signature(model.forward).parameters)
    return doubled, {**{names[i]: d for i, (_, d) in enumerate(args)},
                     **{k: d for k, (_, d) in kwargs.items()}}


@contextmanager
def no_cache(model: torch.nn.Module, notes: list[str]) -> Iterator[None]:
    """Hugging Face models return a KV cache object (DynamicCache) that torch.export cannot
    flatten; pruning needs no cache, so it is off while tracing and restored after. An
    encoder-decoder's decoder holds a config of its own (T5), so every config is seen to."""
    configs = {id(c): c for m in model.modules()
               if getattr(c := getattr(m, "config", None), "use_cache", None) is True}
    if not configs:
        yield
        return
    for c in configs.values():
        c.use_cache = False
    notes.append("config.use_cache was turned off for tracing (the KV cache object is not "
                 "a tensor); the returned model has it back on")
    try:
        yield
    finally:
        for c in configs.values():
            c.use_cache = True


def _why(model: torch.nn.Module, e: Exception) -> str:
    """The real cause of an export failure, in one sentence with what to do."""
    text = str(e).strip()
    first = first_line(e)
    name = type(model).__name__
    if "which is not a known type" in text:
        kind = first.split("Found ", 1)[-1].split(" in output")[0]
        return (f"the output of {name}.forward() holds {kind}, which torch.export cannot "
                "flatten: return tensors (or tuples, lists and dicts of them), or register "
                "the type with torch.utils._pytree.register_pytree_node")
    if any(s in text for s in ("data-dependent", "GuardOnDataDependent", "Could not guard",
                               "Dynamic control flow")):
        return (f"{name}.forward() branches on tensor values ({first}); make that control "
                "flow independent of the data (torch.cond, or compute on shapes only)")
    if isinstance(e, TypeError) or "must be Tensor" in text or "argument" in first:
        return (f"{name}.forward() rejected the example inputs ({first}); check that "
                "example_inputs match what forward() expects")
    return (f"torch.export could not trace {name}: {first} (if forward() runs on these "
            "inputs eagerly, this op is the cause; if not, check that example_inputs have "
            "the shapes and dtypes forward() expects)")


def export_program(model: torch.nn.Module, example_inputs: Any,
                   notes: list[str] | None = None) -> torch.export.ExportedProgram:
    """torch.export in eval mode, with a symbolic batch size where the model allows it.
    The model's train/eval flags are restored afterwards."""
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    inputs = normalize(example_inputs)
    check_signature(model, inputs)
    notes = notes if notes is not None else []
    training = {m: m.training for m in model.modules()}
    model.eval()
    doubled, dyn = _export_args(model, inputs)
    try:
        with no_cache(model, notes):
            try:
                ep = torch.export.export(model, doubled.args, doubled.kwargs or None,
                                         dynamic_shapes=dyn,
                                         strict=False)
            except Exception:  # some models cannot have a symbolic batch: trace them static
                ep = torch.export.export(model, inputs.args, inputs.kwargs or None,
                                         strict=False)
    except Exception as e:  # torch raises many types here
        raise TraceError(_why(model, e)) from e
    finally:
        for m, t in training.items():
            m.training = t
    return ep


def graph_module(ep: torch.export.ExportedProgram,
                 notes: list[str] | None = None) -> fx.GraphModule:
    """The exported program as a plain GraphModule (train()/eval() work, it pickles), its
    runtime guards dropped and scalars read from constant tensors folded."""
    return plain_graph_module(ep.module(), notes)


def plain_graph_module(unlifted: fx.GraphModule,
                       notes: list[str] | None = None) -> fx.GraphModule:
    """``ExportedProgram.module()`` as a plain GraphModule sharing its tensors."""
    gm = fx.GraphModule(unlifted, unlifted.graph)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    folded = fold_constant_scalars(gm)
    if folded and notes is not None:
        notes.append("scalars read from constant tensors traced as constants: "
                     + ", ".join(folded))
    gm.recompile()
    return gm


def trace(model: torch.nn.Module, example_inputs: Any,
          notes: list[str] | None = None) -> fx.GraphModule:
    return graph_module(export_program(model, example_inputs, notes), notes)


_SCALAR = {torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default}


def fold_constant_scalars(gm: fx.GraphModule) -> list[str]:
    """``t.item()`` on a tensor computed from parameters, buffers and constants alone (a
    stride table read by a detection head) is a constant: replace it by its value, so shape
    propagation and every transform see a plain number."""
    depends: dict[fx.Node, bool] = {}  # node -> depends on an input
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            depends[n] = True
        elif n.op == "get_attr":
            depends[n] = False
        else:
            depends[n] = any(depends.get(a, True) for a in n.all_input_nodes) or (
                n.op != "call_function")
    folded = []
    env: dict[fx.Node, Any] = {}

    def value(n: fx.Node) -> Any:
        if n not in env:
            if n.op == "get_attr":
                obj: Any = gm
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                env[n] = obj
            else:
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
                env[n] = n.target(*args, **kwargs)
        return env[n]

    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in _SCALAR and not depends[n]:
            with torch.no_grad():
                v = value(n)
            v = v.item() if isinstance(v, torch.Tensor) else v
            for user in list(n.users):
                user.args, user.kwargs = fx.node.map_arg(
                    (user.args, user.kwargs), lambda a, n=n, v=v: v if a is n else a)
            folded.append(f"{n.name} = {v!r}")
    if folded:
        gm.graph.eliminate_dead_code()
    return folded

