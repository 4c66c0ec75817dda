"""Attention that scales by 1/sqrt(head dim) computed from the pruned sizes.

The pruned graph keeps the original attention scale (pruning equals zeroing), but a class
whose forward derives the scale from its sizes (``nn.MultiheadAttention``, a fused ``qkv``
layer followed by ``q * head_dim ** -0.5`` or a scaled_dot_product_attention without
``scale=``) would use 1/sqrt(pruned head dim). Scaling the query projection's rows by
sqrt(new / old) gives that class exactly the original logits. The module gets new tensor
objects for it, so the pruned graph (which shares the old ones) is unchanged."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch.nn as nn

if TYPE_CHECKING:
    from prunepass.frontends.torch.own_module import Change


def _scale_rows(owner: nn.Module, leaf: str, rows: int, factor: float) -> Callable[[], None]:
    """Multiply the first ``rows`` rows of ``owner.<leaf>`` by ``factor`` in a new tensor;
    returns how to undo it."""
    old = owner._parameters[leaf]
    new = old.detach().clone()
    new[:rows] *= factor
    owner._parameters[leaf] = nn.Parameter(new, old.requires_grad)
    return lambda: owner._parameters.__setitem__(leaf, old)


def multihead_attention(root: nn.Module, sizes: list[Change]) -> list[str]:
    """``nn.MultiheadAttention`` always scales by its head_dim: rescale its queries."""
    done = []
    for path, attr, old, new in sizes:
        if attr != "head_dim" or old == new or not old:
            continue
        m = root.get_submodule(path) if path else root
        if not isinstance(m, nn.MultiheadAttention):
            continue
        factor = math.sqrt(new / old)
        rows = m.num_heads * new
        leaf = "in_proj_weight" if m.in_proj_weight is not None else "q_proj_weight"
        _scale_rows(m, leaf, rows, factor)
        if m.in_proj_bias is not None:
            _scale_rows(m, "in_proj_bias", rows, factor)
        done.append(f"{path}: queries scaled by sqrt({new}/{old}) for the class's own "
                    "1/sqrt(head_dim)")
    return done


def fused_qkv(root: nn.Module, sizes: list[Change]) -> tuple[list[str], Callable[[], None]]:
    """The fused-qkv pattern (timm, Swin): a module with ``num_heads`` and a ``qkv`` Linear
    whose output was pruned. Whether its forward scales by the pruned head dim cannot be
    read from the code, so this is a repair tried when the plain class differs from the
    graph; returns what it did and how to undo it."""
    done, undo = [], []
    for path, attr, old, new in sizes:
        if attr != "out_features" or old == new or not path.endswith("qkv"):
            continue
        owner_path = path.rsplit(".", 1)[0] if "." in path else ""
        owner = root.get_submodule(owner_path) if owner_path else root
        heads = getattr(owner, "num_heads", None)
        if not isinstance(heads, int) or heads <= 0 or old % (3 * heads) or new % (3 * heads):
            continue
        d_old, d_new = old // (3 * heads), new // (3 * heads)
        qkv = root.get_submodule(path)
        factor = math.sqrt(d_new / d_old)
        undo.append(_scale_rows(qkv, "weight", heads * d_new, factor))
        if qkv.bias is not None:
            undo.append(_scale_rows(qkv, "bias", heads * d_new, factor))
        done.append(f"{path}: queries scaled by sqrt({d_new}/{d_old}) for the class's own "
                    "1/sqrt(head dim)")
    return done, lambda: [u() for u in reversed(undo)]

