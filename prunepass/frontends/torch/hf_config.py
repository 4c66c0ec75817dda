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


# config fields that hold a number which is not a layer size, though it may equal one
_NOT_SIZES = ("max_", "position", "vocab", "bucket", "distance", "token_id", "layers",
              "n_layer", "window", "n_ctx")


def _head_dim(config: Any) -> int | None:
    for field in ("head_dim", "d_kv", "attention_head_size"):
        if isinstance(v := getattr(config, field, None), int) and v > 0:
            return v
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads and hidden % heads == 0:
        return hidden // heads
    return None


def _frozen(v: Any) -> Any:  # noqa: ANN401
    return tuple(v) if isinstance(v, list) else v


def _guess(config: Any, changes: list[Change]) -> dict[str, tuple[int, int]]:
    """Config fields to change: a field named like a changed number attribute (head_dim),
    a head count whose projections lost whole heads, or a field whose value was a layer
    size that the layers which changed it changed alike."""
    by_size: dict[int, set[int]] = {}
    by_name: dict[str, set[tuple[Any, Any]]] = {}
    for path, attr, old, new in changes:
        if path == "config":  # a field removed blocks set (num_hidden_layers, layer_types)
            by_name.setdefault(attr, set()).add((_frozen(old), _frozen(new)))
        elif attr in SIZES and isinstance(old, int):
            by_size.setdefault(old, set()).add(new)
        elif isinstance(old, int) and old != new:
            by_name.setdefault(attr, set()).add((old, new))
    out: dict[str, tuple[Any, Any]] = {}
    for field, value in config.to_dict().items():
        named = by_name.get(field)
        if named and len(named) == 1 and next(iter(named))[0] == _frozen(value):
            old, new = next(iter(named))
            out[field] = (value, list(new) if isinstance(new, tuple) else new)
    fields = {f: v for f, v in config.to_dict().items()
              if isinstance(v, int) and not isinstance(v, bool)
              and not any(w in f for w in _NOT_SIZES) and f not in out}
    hd = _head_dim(config)
    explained: set[int] = set()
    for field, value in fields.items():
        if hd and (field.endswith("heads") or field == "n_head") and value * hd in by_size:
            # whole heads removed: the projections' sizes are (heads x head_dim)
            new = by_size[value * hd] - {value * hd}  # the hidden size may equal it, kept
            if len(new) == 1 and next(iter(new)) % hd == 0:
                out[field] = (value, next(iter(new)) // hd)
                explained.add(value * hd)
    for field, value in fields.items():
        if field in out or value in explained:
            continue
        # layers of that size that kept it may be of another kind (q_proj as wide as the
        # MLP); the proof that follows tells a wrong guess
        new = by_size.get(value, set()) - {value}
        if len(new) == 1:
            out[field] = (value, next(iter(new)))
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
