"""A torch.fx GraphModule of ATen ops -> the canonical IR, with concrete shapes from fake
tensor propagation of the example inputs (nothing is computed)."""
from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from prunepass.errors import TraceError, first_line
from prunepass.frontends.torch.aten_map import NotATensorOp, canonicalize
from prunepass.ir import ops
from prunepass.ir.graph import ACT, BUFFER, CONST, PARAM, Graph, Node, Value


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# Shape-preserving ops whose meta implementation decomposes into many small ops: their
# output is shaped like their input, so they are answered directly.
_SAME_SHAPE = {torch.ops.aten.batch_norm.default, torch.ops.aten.layer_norm.default,
               torch.ops.aten.group_norm.default, torch.ops.aten.instance_norm.default}


class _MetaShapes(fx.Interpreter):
    """Runs the graph on the meta device: shapes and dtypes only, no data, no copies of
    the weights. Several times faster than fake-tensor propagation on large graphs."""

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in _SAME_SHAPE:
            return torch.empty_like(args[0])
        return super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["val"] = result
        return result

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        t = super().get_attr(target, args, kwargs)
        return torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    flat, _ = torch.utils._pytree.tree_flatten(list(example_inputs))
    try:
        with torch.no_grad():
            _MetaShapes(gm).run(*[a.to("meta") if isinstance(a, torch.Tensor) else a
                                  for a in flat])
        return
    except Exception:  # an op without a meta kernel: fall back to fake tensors
        pass
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in flat]
    try:
        FakeTensorProp(gm, mode).propagate(*fake)
    except Exception as e:
        raise TraceError(f"shape propagation failed: {str(e).splitlines()[0]}") from e


def _scope(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self__.", "")


def _value(name: str, t: torch.Tensor, kind: str = ACT, param: str | None = None) -> Value:
    return Value(name=name, shape=tuple(int(s) for s in t.shape), dtype=dtype_name(t.dtype),
                 kind=kind, param=param)


def build_graph(gm: fx.GraphModule, example_inputs: Sequence[Any],
                name: str = "model") -> Graph:
    propagate_shapes(gm, example_inputs)
    buffers = {k for k, _ in gm.named_buffers()}
    g = Graph(name)
    vals: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder":
            if isinstance(val, torch.Tensor):
                vals[n] = g.add_input(_value(n.name, val))
        elif n.op == "get_attr":
            t = fetch_attr(gm, n.target)
            if isinstance(t, torch.Tensor):
                kind = PARAM if isinstance(t, torch.nn.Parameter) else (
                    BUFFER if n.target in buffers else CONST)
                if n.target in g.state:  # the same tensor fetched twice
                    vals[n] = g.state[n.target]
                else:
                    vals[n] = g.add_state(_value(n.name, t, kind, n.target))
        elif n.op == "call_function":
            if n.target is operator.getitem:
                src = vals.get(n.args[0])
                if isinstance(src, list) and isinstance(src[n.args[1]], Value):
                    v = src[n.args[1]]
                    v.name = n.name
                    vals[n] = v
                continue
            if isinstance(val, torch.Tensor):
                outs: list[Any] = [_value(n.name, val)]
            elif isinstance(val, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in val):
                outs = [_value(f"{n.name}.{i}", x) if isinstance(x, torch.Tensor) else None
                        for i, x in enumerate(val)]
            else:
                continue  # symbolic-size arithmetic and assertions are not tensor ops
            try:
                op, ins, attrs = canonicalize(n)
            except NotATensorOp:
                continue
            except Exception as e:  # never drop a tensor op: keep it, its channels pinned
                op, attrs = ops.BARRIER, {"fn": str(n.target),
                                          "why": f"its arguments could not be read ({first_line(e)})"}
                ins = [x for x in torch.utils._pytree.tree_flatten((n.args, n.kwargs))[0]
                       if isinstance(x, fx.Node)]
            in_vals = [vals[i] for i in ins if isinstance(vals.get(i), Value)]
            if op != ops.BARRIER and len(in_vals) != len(ins):
                op, attrs = ops.BARRIER, {"fn": str(n.target), "why": "non-tensor input"}
            node = Node(name=n.name, op=op, inputs=in_vals,
                        outputs=[o for o in outs if o is not None], attrs=attrs,
                        target=str(n.target), scope=_scope(n))
            g.add_node(node)
            vals[n] = outs[0] if isinstance(val, torch.Tensor) else outs
        elif n.op == "output":
            flat, _ = torch.utils._pytree.tree_flatten(n.args[0])
            g.outputs = [vals[x] for x in flat if isinstance(vals.get(x), Value)]
        elif n.op == "call_module":
            raise TraceError(f"unexpected module call {n.target} in the exported graph")
    return g
