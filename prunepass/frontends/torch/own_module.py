"""The pruned model as the user's own class.

The adapter's module already holds the pruned tensors (it shares them with the graph).
What is left: the layers' size attributes (``Conv2d.out_channels``, ``Linear.in_features``,
``LayerNorm.normalized_shape``, ...) and the Python numbers that fed a rewritten shape
constant (``num_heads``, ``head_dim``, ``all_head_size`` of the module that owns the
reshape). Then the module is run on the example inputs and compared with the pruned graph;
only a module that agrees is handed back. Anything else gives the graph module, with the
reason in the record."""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from prunepass.frontends.torch import attention_scale, hf_config, weight_masks
from prunepass.errors import first_line
from prunepass.numerics import relative_error

TOLERANCE = 1e-4  # relative to the largest output; the same ATen ops in another order


Change = tuple[str, str, Any, Any]  # module path, attribute, old, new


class Unsettable(Exception):
    """A module refused a new value for one of its attributes."""


def _set(mod: nn.Module, path: str, attr: str, value: Any, log: list[Change]) -> None:
    old = getattr(mod, attr, None)
    if old != value:
        try:
            setattr(mod, attr, value)
        except Exception as e:  # a read-only property, a frozen dataclass, a custom setattr
            raise Unsettable(f"{path or type(mod).__name__}.{attr} cannot be set to {value} "
                             f"({type(e).__name__}: {e})") from e
    log.append((path, attr, old, value))


def describe(changes: list[Change]) -> list[str]:
    return [f"{path or '(top)'}.{attr}: {old} -> {new}" for path, attr, old, new in changes
            if old != new]


def layer_sizes(root: nn.Module) -> list[Change]:
    """Set every known layer's size attributes from its (pruned) tensors; every layer's
    sizes are listed, changed or not."""
    log: list[Change] = []
    for path, m in root.named_modules():
        w = getattr(m, "weight", None)
        w = w if isinstance(w, torch.Tensor) else None
        if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            old_groups = m.groups
            depthwise = old_groups > 1 and old_groups == m.in_channels
            if m.transposed:
                in_ch, per_group = w.shape[0], w.shape[1]
                groups = in_ch * old_groups // m.in_channels if depthwise else old_groups
                out_ch = per_group * groups
            else:
                out_ch, per_group = w.shape[0], w.shape[1]
                groups = out_ch * old_groups // m.out_channels if depthwise else old_groups
                in_ch = per_group * groups
            _set(m, path, "groups", int(groups), log)
            _set(m, path, "in_channels", int(in_ch), log)
            _set(m, path, "out_channels", int(out_ch), log)
        elif isinstance(m, nn.Linear) and w is not None:
            _set(m, path, "out_features", int(w.shape[0]), log)
            _set(m, path, "in_features", int(w.shape[1]), log)
        elif isinstance(m, (nn.modules.batchnorm._NormBase)):
            t = w if w is not None else getattr(m, "running_mean", None)
            if isinstance(t, torch.Tensor):
                _set(m, path, "num_features", int(t.shape[0]), log)
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
            _set(m, path, "normalized_shape", tuple(int(s) for s in w.shape), log)
        elif isinstance(m, nn.GroupNorm) and w is not None:
            _set(m, path, "num_channels", int(w.shape[0]), log)
        elif isinstance(m, nn.Embedding) and w is not None:
            _set(m, path, "num_embeddings", int(w.shape[0]), log)
            _set(m, path, "embedding_dim", int(w.shape[1]), log)
        elif isinstance(m, nn.MultiheadAttention):
            q = m.in_proj_weight if m.in_proj_weight is not None else m.q_proj_weight
            _set(m, path, "embed_dim", int(m.out_proj.weight.shape[0]), log)
            inner = int(q.shape[0]) // (3 if m.in_proj_weight is not None else 1)
            _set(m, path, "head_dim", inner // m.num_heads, log)
            if m.k_proj_weight is not None:
                _set(m, path, "kdim", int(m.k_proj_weight.shape[1]), log)
                _set(m, path, "vdim", int(m.v_proj_weight.shape[1]), log)
        elif isinstance(m, nn.RNNBase):
            _set(m, path, "input_size", int(m.weight_ih_l0.shape[1]), log)
            m._init_flat_weights()  # it keeps its own list of the (now replaced) tensors
        elif type(m).__name__ == "Conv1D" and w is not None and hasattr(m, "nf"):
            # Hugging Face's GPT-2 Conv1D: weight (in, out)
            _set(m, path, "nf", int(w.shape[1]), log)
            if hasattr(m, "nx"):
                _set(m, path, "nx", int(w.shape[0]), log)
    return log


def _read_in_forward(mod: nn.Module) -> set[str]:
    try:
        src = inspect.getsource(type(mod).forward)
    except (OSError, TypeError):
        return set()
    return {name for name in vars(mod) if f"self.{name}" in src}


def _matches(value: Any, old: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == old
    return isinstance(value, (tuple, list)) and any(
        isinstance(v, int) and not isinstance(v, bool) and v == old for v in value)


def _replaced(value: Any, old: int, new: int) -> Any:
    if isinstance(value, int):
        return new
    return type(value)(new if (isinstance(v, int) and v == old) else v for v in value)


def shape_numbers(root: nn.Module, rewrites: list[tuple[str, int, int]]
                  ) -> tuple[list[Change], list[str]]:
    """For each rewritten shape constant (module path, old, new), set the number attribute
    that held it on the owning module, or the nearest ancestor that has one; an attribute
    forward() reads is preferred. Returns what was set and what was not found (a constant
    that came from a tensor's shape needs nothing; the numerical check tells the two apart)."""
    log: list[Change] = []
    missing: list[str] = []
    done: set[tuple[str, int, int]] = set()
    for scope, old, new in rewrites:
        if (scope, old, new) in done:
            continue
        done.add((scope, old, new))
        parts = scope.split(".") if scope else []
        found = False
        for depth in range(len(parts), -1, -1):
            path = ".".join(parts[:depth])
            try:
                mod = root.get_submodule(path)
            except AttributeError:
                continue
            names = [k for k, v in vars(mod).items()
                     if not k.startswith("_") and _matches(v, old)]
            if not names:
                continue
            read = _read_in_forward(mod)
            names = [k for k in names if k in read] or names
            for k in names:
                _set(mod, path, k, _replaced(getattr(mod, k), old, new), log)
            found = True
            break
        if not found:
            missing.append(f"{scope or '(top)'}: {old} -> {new}")
    return log, missing


def _unshare(module: nn.Module, caller: nn.Module) -> None:
    """Tensors the pruning left as they were still share storage with the caller's model:
    give them their own, so training the result never changes the caller's."""
    theirs = {t.untyped_storage().data_ptr()
              for t in list(caller.parameters()) + list(caller.buffers())}
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.untyped_storage().data_ptr() in theirs:
                t.data = t.data.clone()


def own_module(adapter: Any) -> tuple[nn.Module, dict[str, Any]]:
    info: dict[str, Any] = {"notes": list(adapter.notes)}

    def fallback(reason: str) -> tuple[nn.Module, dict[str, Any]]:
        info.update(returned="graph-module", reason=reason)
        return adapter.materialize(), info

    module = adapter.module
    if module is None:
        return fallback(adapter.notes[0] if adapter.notes else "no module to give back")
    info["class"] = type(module).__name__
    from prunepass.frontends.torch.adapter import graph_only_state
    foreign = [n for n in graph_only_state(adapter.gm, module)
               if n not in adapter.traced_constants]
    if foreign:
        return fallback(f"the pipeline added tensors {type(module).__name__} has no place "
                        f"for ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                        "a transform changed the graph's structure (fold-bn, mask)")
    masks = weight_masks.read(adapter.gm)
    if masks:  # the graph's masked weights and their masks move to the module's layers
        for name in masks:
            holder, leaf = weight_masks._owner(module, name)
            if parametrize.is_parametrized(holder, leaf):
                return fallback(f"{name} has a parametrization of the model's own")
            graph_holder, _ = weight_masks._owner(adapter.gm, name)
            holder._parameters[leaf] = graph_holder.parametrizations[leaf].original
        weight_masks.apply(module, masks, copy_params=False)
        info["weight_masks"] = sorted(masks)
    try:
        sizes = layer_sizes(module)
        numbers, missing = shape_numbers(module, adapter.rewrites)
    except Unsettable as e:
        return fallback(str(e))
    info["updated"] = describe(sizes + numbers) + attention_scale.multihead_attention(
        module, sizes)
    dropped: list[Change] = []
    if adapter.removed_blocks:
        result = drop_blocks(module, adapter.removed_blocks)
        if isinstance(result, str):
            return fallback(result)
        dropped = result
        info["updated"] += describe(dropped)
    ref = adapter.run()

    def check() -> tuple[float, str]:
        try:
            mine = adapter.run(module=module)
        except Exception as e:  # the user's forward may fail in any way on the new sizes
            return float("inf"), f"{type(module).__name__}.forward() fails on the pruned " \
                f"sizes: {first_line(e)}"
        if len(mine) != len(ref) or any(a.shape != b.shape for a, b in zip(mine, ref)):
            return float("inf"), f"{type(module).__name__} gives outputs of other shapes"
        err = relative_error(mine, ref)
        return err, f"{type(module).__name__} with the pruned tensors differs from the " \
            f"pruned graph (relative error {err:.3g})"

    err, why = check()
    if not err <= TOLERANCE and numbers:
        # a constant matched a number attribute by value only (8 heads of head_dim 8): the
        # heads count came from a tensor's shape, and head_dim must stay
        err2, numbers = _without_coincidences(module, numbers, check)
        if err2 <= TOLERANCE:
            err = err2
            info["updated"] = describe(sizes + numbers) + attention_scale.multihead_attention(
                module, sizes) + describe(dropped)
    if not err <= TOLERANCE:  # its forward may scale attention by the pruned head dim
        repairs, undo = attention_scale.fused_qkv(module, sizes)
        if repairs:
            err2, _ = check()
            if err2 <= TOLERANCE:
                err = err2
                info["updated"] += repairs
            else:
                undo()
    info["max_rel_error_vs_graph"] = err
    if not err <= TOLERANCE:
        return fallback(why + _missing(missing) + _scales(adapter))
    graph_state = {n for n, _ in list(adapter.gm.named_parameters())
                   + list(adapter.gm.named_buffers())}
    # (after removed blocks the module's list indices no longer match the graph's names)
    unread = [] if adapter.removed_blocks else [
        n for n, _ in module.named_parameters() if n not in graph_state
        and ".parametrizations." not in n]
    if unread:  # dead-code elimination cannot remove what the class's Python code computes
        info["notes"].append(
            f"{type(module).__name__}.forward() still computes what the pruned graph dropped "
            f"(parameters {', '.join(unread[:3])}{', ...' if len(unread) > 3 else ''}); "
            "adapter.materialize() gives the graph module without them")
    if adapter.caller is not None:
        _unshare(module, adapter.caller)
    info["returned"] = "own-class"
    if hf_config.is_hf(module):
        info["config"] = hf_config.update(module, sizes + numbers + dropped,
                                          lambda m: adapter.run(module=m), ref)
    return module, info


def drop_blocks(root: nn.Module, scopes: list[str]) -> list[Change] | str:
    """Take the removed residual blocks out of their ModuleList (or Sequential); number
    what follows again (``layer_idx``, which a KV cache is indexed by) and set the layer
    count of a Hugging Face config. Returns the changes, or why it cannot be done."""
    by_parent: dict[str, list[int]] = {}
    for scope in scopes:
        parent, _, idx = scope.rpartition(".")
        if not idx.isdigit():
            return f"removed block {scope} is not an entry of a ModuleList"
        by_parent.setdefault(parent, []).append(int(idx))
    log: list[Change] = []
    for parent, gone in by_parent.items():
        holder = root.get_submodule(parent)
        if not isinstance(holder, (nn.ModuleList, nn.Sequential)):
            return f"removed block {parent}.{gone[0]} is in a {type(holder).__name__}, not " \
                "a ModuleList"
        old = len(holder)
        kept = [m for i, m in enumerate(holder) if i not in gone]
        for i in sorted(gone, reverse=True):
            del holder[i]
        for new_idx, m in enumerate(kept):
            for sub in m.modules():
                if isinstance(getattr(sub, "layer_idx", None), int) and \
                        not isinstance(sub.layer_idx, bool):
                    sub.layer_idx = new_idx
        log.append((parent, "len", old, len(holder)))
        # what a config must say (hf_config proves it before setting it)
        config = getattr(root, "config", None)
        for field in ("num_hidden_layers", "n_layer", "num_layers"):
            if getattr(config, field, None) == old:
                log.append(("config", field, old, len(holder)))
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == old:
            log.append(("config", "layer_types", types,
                        [t for i, t in enumerate(types) if i not in gone]))
    return log


def _without_coincidences(module: nn.Module, numbers: list[Change], check: Any
                          ) -> tuple[float, list[Change]]:  # noqa: ANN401
    """Undo the number attributes set under one name at a time; the first undo after
    which the module agrees with the graph is kept. Returns the error and what stays set."""
    for attr in dict.fromkeys(a for _, a, old, new in numbers if old != new):
        mine = [c for c in numbers if c[1] == attr]
        for path, _, old, _ in mine:
            setattr(module.get_submodule(path), attr, old)
        err, _ = check()
        if err <= TOLERANCE:
            return err, [c for c in numbers if c[1] != attr]
        for path, _, _, new in mine:
            setattr(module.get_submodule(path), attr, new)
    return float("inf"), numbers


def _scales(adapter: Any) -> str:
    if not adapter.pinned_scales:
        return ""
    scope, old, new = adapter.pinned_scales[0]
    return (f"; the pruned graph keeps attention's original scale (in {scope or '(top)'}: "
            f"1/sqrt({old})), where a scaled_dot_product_attention call without scale= in "
            f"the class's code uses 1/sqrt({new}) of the pruned head dim")


def _missing(missing: list[str]) -> str:
    if not missing:
        return ""
    return ("; no number attribute held these rewritten shape constants: "
            + ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else ""))
