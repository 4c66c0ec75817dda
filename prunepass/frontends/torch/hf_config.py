"""A pruned Hugging Face model's config, so ``save_pretrained`` / ``from_pretrained`` give
the pruned model back.

A config holds one size per kind of layer (``intermediate_size``, ``head_dim``, ...), so it
can describe a pruned model only where every layer of a kind kept the same count. The new
config is guessed from the layers' size changes, then proved: a model built from it must
have exactly the pruned tensors' shapes and, loaded with them, give the same outputs.
Otherwise the config stays as it was and the record says why (the record and the state
dict rebuild any pruned model: ``prunepass.apply_record`` then ``load_state_dict``)."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from prunepass.errors import first_line
from prunepass.numerics import relative_error

if TYPE_CHECKING:
    from prunepass.frontends.torch.own_module import Change

SIZES = {"in_features", "out_features", "in_channels", "out_channels", "num_features",
         "embedding_dim", "num_embeddings", "num_channels", "nf", "nx"}
CHECK_LIMIT = 300_000_000  # parameters: a larger model's outputs are not re-checked (memory)
TOLERANCE = 1e-4


def is_hf(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return hasattr(module, "save_pretrained") and hasattr(config, "to_dict")


def _guess(config: Any, changes: list[Change]) -> dict[str, tuple[int, int]]:
    """Config fields to change: a field named like a changed number attribute (head_dim),
    or a field whose value was a layer size that every layer of that size changed alike."""
    by_size: dict[int, set[int]] = {}
    by_name: dict[str, set[tuple[Any, Any]]] = {}
    for _, attr, old, new in changes:
        if attr in SIZES and isinstance(old, int):
            by_size.setdefault(old, set()).add(new)
        elif isinstance(old, int) and old != new:
            by_name.setdefault(attr, set()).add((old, new))
    out: dict[str, tuple[int, int]] = {}
    for field, value in config.to_dict().items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        named = by_name.get(field)
        if named and len(named) == 1 and next(iter(named))[0] == value:
            out[field] = (value, next(iter(named))[1])
        elif len(by_size.get(value, ())) == 1 and next(iter(by_size[value])) != value:
            out[field] = (value, next(iter(by_size[value])))
    return out


def update(module: nn.Module, changes: list[Change], run: Callable[[nn.Module], list[Any]],
           reference: list[Any]) -> dict[str, Any]:
    """Set ``module.config`` to the pruned sizes where a model built from it is the pruned
    model; return what was done, for the record."""
    config = module.config
    fields = _guess(config, changes)
    if not fields:
        if not any(old != new for *_, old, new in changes):
            return {"updated": {}}
        return {"not_updated": "no config field describes the changed sizes; use the record "
                               "route (apply_record, then load_state_dict)"}
    new = copy.deepcopy(config)
    for f, (_, v) in fields.items():
        setattr(new, f, v)
    why, checked = _prove(module, new, run, reference)
    described = {f: list(v) for f, v in fields.items()}
    if why:
        return {"not_updated": f"a model built from the config with {described} {why}: the "
                               "config cannot describe this pruned model; the record route "
                               "rebuilds it (apply_record, then load_state_dict)"}
    module.config = new
    return {"updated": described,
            "proved": "shapes and outputs" if checked else
                      f"shapes (outputs not re-checked above {CHECK_LIMIT:.0e} parameters)"}


def _prove(module: nn.Module, config: Any, run: Callable[[nn.Module], list[Any]],
           reference: list[Any]) -> tuple[str, bool]:
    """Why a model built from ``config`` is not the pruned model ("" where it is), and
    whether its outputs were compared."""
    cls = type(module)
    try:
        with torch.device("meta"):
            fresh = cls(config)
    except Exception as e:  # a config the class rejects
        return f"cannot be built ({first_line(e)})", False
    mine = module.state_dict()
    theirs = fresh.state_dict()
    for k, t in mine.items():
        if k in theirs and tuple(theirs[k].shape) != tuple(t.shape):
            return f"has {k} of shape {list(theirs[k].shape)}, not {list(t.shape)}", False
    if set(theirs) - set(mine):
        return f"has tensors the pruned model lacks ({sorted(set(theirs) - set(mine))[:2]})", \
            False
    if sum(p.numel() for p in module.parameters()) > CHECK_LIMIT:
        return "", False
    built = cls(config).to(next(module.parameters()).dtype)
    built.load_state_dict(mine)
    outs = run(built)
    if len(outs) != len(reference) or any(a.shape != b.shape for a, b in zip(outs, reference)):
        return "gives outputs of other shapes", True
    err = relative_error(outs, reference)
    return ("" if err <= TOLERANCE else f"gives other outputs (relative error {err:.3g})"), True
