"""torch.nn.Module -> a plain torch.fx.GraphModule of ATen ops, via torch.export."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.export import Dim

from prunepass.errors import TraceError


def _export_args(example_inputs: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Export with a symbolic batch size so the pruned module accepts any batch. A batch of
    one would be specialised by torch.export, so it is doubled for tracing only."""
    args, dyn = [], []
    for a in example_inputs:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            args.append(torch.cat([a, a]) if a.shape[0] == 1 else a)
            dyn.append({0: Dim.AUTO})
        else:
            args.append(a)
            dyn.append(None)
    return tuple(args), tuple(dyn)


def export_program(model: torch.nn.Module,
                   example_inputs: Sequence[Any]) -> torch.export.ExportedProgram:
    """torch.export in eval mode, with a symbolic batch size where the model allows it.
    The model's train/eval flags are restored afterwards."""
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    training = {m: m.training for m in model.modules()}
    model.eval()
    args, dyn = _export_args(example_inputs)
    try:
        try:
            ep = torch.export.export(model, args, dynamic_shapes=dyn, strict=False)
        except Exception:  # some models cannot have a symbolic batch: trace them static
            ep = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as e:  # torch raises many types here; keep the first line of its reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.export could not trace {type(model).__name__}: {reason}. Make forward() "
            "free of data-dependent Python control flow (torch.cond, or compute on shapes "
            "only), or check that example_inputs match what forward() expects.") from e
    finally:
        for m, t in training.items():
            m.training = t
    return ep


def trace(model: torch.nn.Module, example_inputs: Sequence[Any]) -> fx.GraphModule:
    unlifted = export_program(model, example_inputs).module()
    gm = fx.GraphModule(unlifted, unlifted.graph)  # a plain GraphModule: train()/eval() work
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    gm.recompile()
    return gm
