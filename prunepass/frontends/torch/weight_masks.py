"""Weight masks in the torch frontend: a 0/1 tensor multiplied into a parameter with
``torch.nn.utils.parametrize``, registered on the module that holds the parameter.

The GraphModule still reads ``conv1.weight`` with a get_attr node; that attribute is now
computed as ``original * mask``. So the mask survives deepcopy, ``materialize()`` and
fine-tuning: a masked entry gets a zero gradient and its effective value is zero whatever
the optimiser does (no regrowth). The mask is a persistent buffer, saved by ``state_dict``
under ``<holder>.parametrizations.<leaf>.0.mask``; the weight itself moves to
``<holder>.parametrizations.<leaf>.original`` (torch's naming)."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from prunepass.errors import PlanError
from prunepass.ir.graph import PARAM


class WeightMask(nn.Module):
    """weight -> weight * mask. Assigning a new weight (fold-bn) stores it as given."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    mod = root
    for p in path:
        if not hasattr(mod, p):
            raise PlanError(f"weight mask for {name!r}: the model has no such parameter")
        mod = getattr(mod, p)
    return mod, leaf


def _own_class(module: nn.Module) -> None:
    """parametrize gives a module its own subclass holding the parametrized properties, but
    deepcopy (clone(), materialize()) shares that class between the copies, and registering
    or removing a parametrization edits the class. Give this copy a class of its own first,
    so that editing it never changes another copy."""
    if parametrize.is_parametrized(module):
        cls = module.__class__
        body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, body)


def _mask_module(holder: nn.Module, leaf: str) -> WeightMask | None:
    if not parametrize.is_parametrized(holder, leaf):
        return None
    plist = holder.parametrizations[leaf]
    found = [p for p in plist if isinstance(p, WeightMask)]
    if len(found) != len(plist):
        raise PlanError(f"parameter {leaf!r} of {type(holder).__name__} has parametrizations "
                        "other than a weight mask; prunepass only manages its own")
    return found[0]


def masked_names(root: nn.Module) -> Iterator[tuple[str, WeightMask]]:
    for prefix, mod in root.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for leaf in mod.parametrizations:
            m = _mask_module(mod, leaf)
            if m is not None:
                yield (f"{prefix}.{leaf}" if prefix else leaf), m


def read(root: nn.Module) -> dict[str, np.ndarray]:
    """Every weight mask, by the parameter's public name, as a bool array."""
    return {name: m.mask.detach().cpu().numpy() != 0 for name, m in masked_names(root)}


def apply(root: nn.Module, masks: dict[str, Any], copy_params: bool = True) -> None:
    """Multiply each named parameter by its 0/1 mask, keeping the mask in the module. A weight
    already masked keeps its zeros (the masks multiply). ``copy_params`` replaces the weight by
    a fresh tensor first: a traced GraphModule may share storage with the caller's model.
    Without it the Parameter object is kept, so an optimiser that holds it keeps working."""
    for name, m in masks.items():
        if "." not in name and isinstance(root, torch.fx.GraphModule):
            raise PlanError(f"weight mask for {name!r}: the parameter is held by the model's "
                            "top-level module, which torch.fx cannot copy once parametrized; "
                            "wrap the model in a submodule (nn.Sequential(model)) or leave "
                            f"it out with ignore=[{name}]")
        holder, leaf = _owner(root, name)
        current = getattr(holder, leaf, None)
        if not isinstance(current, torch.Tensor):
            raise PlanError(f"weight mask for {name!r}: the model has no such parameter")
        mask = torch.as_tensor(np.asarray(m), device=current.device).to(current.dtype)
        if tuple(mask.shape) != tuple(current.shape):
            raise PlanError(f"weight mask for {name!r} has shape {list(mask.shape)}, the "
                            f"parameter has {list(current.shape)}")
        existing = _mask_module(holder, leaf)
        with torch.no_grad():
            if existing is not None:  # new data, not in place: the storage may be shared
                existing.mask.data = existing.mask * mask
                original = holder.parametrizations[leaf].original
                original.data = original * existing.mask
                continue
            p = holder._parameters.get(leaf)
            if not isinstance(p, nn.Parameter):
                raise PlanError(f"weight mask for {name!r}: it is not a trainable parameter "
                                "(a buffer or constant cannot be masked)")
            if copy_params:
                p = nn.Parameter(p.detach() * mask, p.requires_grad)
                holder._parameters[leaf] = p
            else:
                p.mul_(mask)  # the raw weight is zero too: exports and file sizes see it
        _own_class(holder)
        parametrize.register_parametrization(holder, leaf, WeightMask(mask.clone()))


def remove(root: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Take masks off, leaving plain parameters holding the masked values (zeros stay)."""
    taken = {}
    for name, m in list(masked_names(root)):
        if names is not None and name not in names:
            continue
        holder, leaf = _owner(root, name)
        taken[name] = m.mask.detach().clone()
        _own_class(holder)
        parametrize.remove_parametrizations(holder, leaf, leave_parametrized=True)
    return taken


def bake(module: nn.Module) -> nn.Module:
    """A copy with every mask folded into its weight: plain parameters with zeros, for
    ``torch.save``, ONNX export and file-size measurements."""
    out = copy.deepcopy(module)
    remove(out)
    return out


def mark_params(graph: Any, root: nn.Module) -> None:
    """A masked weight is computed by its parametrization, so the IR builder sees a plain
    tensor; it is still a trainable parameter."""
    for name, _ in masked_names(root):
        v = graph.state.get(name)
        if v is not None:
            v.kind = PARAM


def public_names(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``a.parametrizations.weight.original`` -> ``a.weight``. The gradient of the original
    is the weight's gradient times the mask: zero where masked."""
    out = {}
    for k, g in grads.items():
        if ".parametrizations." in k and k.endswith(".original"):
            prefix, rest = k.split(".parametrizations.", 1)
            k = f"{prefix}.{rest[:-len('.original')]}" if prefix else rest[:-len(".original")]
        elif k.startswith("parametrizations.") and k.endswith(".original"):
            k = k[len("parametrizations."):-len(".original")]
        out[k] = g
    return out


def internal_state(root: nn.Module, used: set[str]) -> set[str]:
    """The tensors behind the masked weights that the graph reads (dead-code elimination
    must keep them). Masks of weights nothing reads are taken off, so their parameters can
    be dropped like any other dead one."""
    keep: set[str] = set()
    for name, _ in list(masked_names(root)):
        if name not in used:
            remove(root, [name])
            continue
        prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        base = f"{prefix}.parametrizations.{leaf}" if prefix else f"parametrizations.{leaf}"
        keep |= {f"{base}.original", f"{base}.0.mask"}
    return keep


def copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into the same-named tensor of ``dst`` (a
    trained module back into the adapter's working copy)."""
    s, d = src.state_dict(), dst.state_dict()
    missing = sorted(set(d) - set(s))
    if missing:
        raise PlanError(f"the trained module lacks {missing[:3]}: it is not a copy of this model")
    with torch.no_grad():
        for k, t in d.items():
            t.copy_(s[k])


@contextmanager
def follow_slices(adapter: Any, keep: dict[tuple[str, int], np.ndarray]) -> Iterator[None]:
    """Channel removal slices weights; a masked weight's mask must be sliced the same way.
    The masks are taken off for the slicing and put back sliced."""
    values = {v.name: v for v in adapter.graph.values()}
    axes: dict[str, dict[int, np.ndarray]] = {}
    for (vname, axis), idx in keep.items():
        v = values.get(vname)
        if v is not None and v.is_state() and v.param:
            axes.setdefault(v.param, {})[axis] = idx
    masked = {name for name, _ in masked_names(adapter.gm)} & set(axes)
    taken = remove(adapter.gm, sorted(masked))
    yield
    for name, mask in taken.items():
        for axis, idx in sorted(axes[name].items()):
            mask = mask.index_select(axis, torch.as_tensor(idx, dtype=torch.long))
        apply(adapter.gm, {name: mask.cpu().numpy()}, copy_params=False)


def export_onnx(module: nn.Module, example_inputs: Sequence[Any], path: str | Path) -> Path:
    """The masks folded into the weights: one ONNX file whose initializers hold the zeros
    (dense; onnxruntime computes with them like any other value). The batch axis stays
    dynamic."""
    baked = bake(module).eval()
    args = tuple(example_inputs)
    names = [f"input{i}" for i in range(len(args))]
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(baked, args, str(path), input_names=names, dynamo=True,
                      dynamic_shapes=tuple({0: batch} for _ in args), external_data=False,
                      verbose=False)
    return Path(path)


def to_semi_structured(module: nn.Module) -> nn.Module:
    """Linear weights that obey 2:4 as ``torch.sparse.SparseSemiStructuredTensor``, which
    CUDA GPUs with sparse tensor cores (compute capability >= 8.0) multiply at half the
    work. There is no CPU kernel for it, so on a machine without such a GPU this is an
    error rather than a silent dense fallback."""
    if not torch.cuda.is_available():
        raise PlanError("2:4 semi-structured tensors need a CUDA GPU (compute capability "
                        ">= 8.0); torch has no CPU kernel for them. Export the masked model "
                        "(zeros in dense weights) instead")
    out = bake(module)
    for name, p in list(out.named_parameters()):
        if p.dim() != 2 or p.shape[0] % 64 or p.shape[1] % 64 or not p.is_cuda:
            continue  # the kernels want CUDA fp16/bf16 matrices with 64-multiple sides
        blocks = (p.detach().reshape(p.shape[0], -1, 4) != 0).sum(-1)
        if int(blocks.max()) <= 2:
            holder, leaf = _owner(out, name)
            holder._parameters[leaf] = nn.Parameter(
                torch.sparse.to_sparse_semi_structured(p.detach()), requires_grad=False)
    return out
