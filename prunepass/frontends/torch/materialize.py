"""Turn the working ATen GraphModule into the module handed to the user.

The exported graph bakes train/eval behaviour into batch norm and dropout calls. Here they
become real ``nn.BatchNorm*d`` / ``nn.Dropout`` submodules again (holding the same tensors
under the same names), so ``.train()`` updates statistics and drops activations."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx

from prunepass.frontends.torch.aten_map import _base_name, bind
from prunepass.frontends.torch.adapter import _owner

_BN = {3: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
       5: torch.nn.BatchNorm3d}


def _bn_module(gm: fx.GraphModule, n: fx.Node) -> tuple[str, torch.nn.Module] | None:
    a = bind(n)
    parts = {k: a.get(k) for k in ("weight", "bias", "running_mean", "running_var")}
    if any(not (isinstance(p, fx.Node) and p.op == "get_attr") for p in parts.values()):
        return None
    prefixes = {p.target.rsplit(".", 1)[0] for p in parts.values() if "." in p.target}
    if len(prefixes) != 1 or any(p.target.rsplit(".", 1)[-1] != k for k, p in parts.items()):
        return None
    prefix = prefixes.pop()
    holder, _ = _owner(gm, f"{prefix}.weight")
    if list(holder.children()):
        return None
    rank = n.args[0].meta["val"].dim()
    w = holder.weight
    bn = _BN[rank](w.shape[0], eps=float(a["eps"]), momentum=a.get("momentum"),
                   device=w.device, dtype=w.dtype)
    bn.weight, bn.bias = holder.weight, holder.bias
    bn.running_mean, bn.running_var = holder.running_mean, holder.running_var
    if hasattr(holder, "num_batches_tracked"):
        bn.num_batches_tracked = holder.num_batches_tracked
    return prefix, bn


def trainable_module(gm: fx.GraphModule) -> fx.GraphModule:
    gm = copy.deepcopy(gm)
    graph = gm.graph
    swapped: dict[str, torch.nn.Module] = {}
    for k, n in enumerate(list(graph.nodes)):
        if n.op != "call_function":
            continue
        base = _base_name(n.target)
        if base == "batch_norm":
            found = _bn_module(gm, n)
            if found is None:
                continue
            prefix, bn = found
            if prefix not in swapped:
                parent, leaf = _owner(gm, prefix) if "." in prefix else (gm, prefix)
                setattr(parent, leaf, bn)
                swapped[prefix] = bn
            with graph.inserting_before(n):
                call = graph.call_module(prefix, (n.args[0],))
            n.replace_all_uses_with(call)
            graph.erase_node(n)
        elif base == "dropout":
            p = float(n.args[1])
            if p == 0.0:
                continue
            name = f"dropout_{k}"
            gm.add_submodule(name, torch.nn.Dropout(p))
            with graph.inserting_before(n):
                call = graph.call_module(name, (n.args[0],))
            n.replace_all_uses_with(call)
            graph.erase_node(n)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    # export's tracer class cannot be rebuilt by torch.load; a plain GraphModule pickles
    gm._tracer_cls = None
    gm.graph._tracer_cls = None
    return gm.eval()  # like the traced model; call .train() to fine-tune
