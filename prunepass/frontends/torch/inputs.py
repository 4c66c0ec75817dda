"""Example inputs as users have them: positional, keyword, or both.

``example_inputs`` may be a tensor, a tuple (or list) of positional inputs, a dict of
keyword inputs (how Hugging Face models are called), or ``(args, kwargs)``: a pair whose
first item is a tuple or list and whose second is a dict. The traced model is called the
same way."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from prunepass.errors import TraceError


@dataclass(frozen=True)
class Inputs:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, module: Any) -> Any:
        return module(*self.args, **self.kwargs)

    def public(self) -> Any:
        """The form handed back to callers: the args tuple where there are no kwargs."""
        return self if self.kwargs else self.args


def normalize(example_inputs: Any) -> Inputs:
    x = example_inputs
    if isinstance(x, Inputs):
        return x
    if x is None:
        raise TraceError("a torch model needs example_inputs to be traced, e.g. "
                         "(torch.randn(1, 3, 224, 224),) or {'input_ids': ids}")
    if isinstance(x, dict):
        _check_keys(x)
        return Inputs((), dict(x))
    if isinstance(x, (tuple, list)):
        if len(x) == 2 and isinstance(x[0], (tuple, list)) and isinstance(x[1], dict):
            _check_keys(x[1])
            return Inputs(tuple(x[0]), dict(x[1]))
        return Inputs(tuple(x))
    return Inputs((x,))


def _check_keys(kwargs: dict[Any, Any]) -> None:
    bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise TraceError(f"example_inputs is a dict of keyword inputs, but key {bad[0]!r} is "
                         "not a parameter name")


def check_signature(model: torch.nn.Module, inputs: Inputs) -> None:
    """Name the mismatch between the inputs and forward()'s parameters before tracing, where
    torch.export would fail with a message about something else."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C-implemented forward: let export judge
        return
    params = sig.parameters
    known = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # with **kwargs any name binds, but a tensor given by a name forward() does not know is
    # a mistyped input, not an option (Hugging Face models take **kwargs)
    unknown = [k for k, v in inputs.kwargs.items() if k not in known
               and (not open_ended or isinstance(v, torch.Tensor))]
    if unknown:
        raise TraceError(f"example_inputs has keyword {unknown[0]!r}, which "
                         f"{type(model).__name__}.forward() does not take; it takes "
                         f"({', '.join(known)})")
    try:
        sig.bind(*inputs.args, **inputs.kwargs)
    except TypeError as e:
        raise TraceError(f"example_inputs do not match {type(model).__name__}.forward"
                         f"{sig}: {e}") from None


def check_calibration(example: Inputs, calibration: Inputs) -> None:
    """Calibration inputs must be the example inputs' kind: the same inputs, dtypes and
    sizes but for the batch axis (the traced graph fixes the others)."""
    ex = [*(("input", i, v) for i, v in enumerate(example.args)),
          *(("keyword", k, v) for k, v in example.kwargs.items())]
    cal = [*(("input", i, v) for i, v in enumerate(calibration.args)),
           *(("keyword", k, v) for k, v in calibration.kwargs.items())]
    if [(a, b) for a, b, _ in ex] != [(a, b) for a, b, _ in cal]:
        raise TraceError(f"calibration inputs are {[f'{a} {b}' for a, b, _ in cal]}, but the "
                         f"model was traced with {[f'{a} {b}' for a, b, _ in ex]}")
    for (kind, key, e), (_, _, c) in zip(ex, cal):
        if not isinstance(e, torch.Tensor):
            continue
        if not isinstance(c, torch.Tensor):
            raise TraceError(f"calibration {kind} {key!r} is {type(c).__name__}, not a tensor")
        if c.dtype != e.dtype or c.ndim != e.ndim or c.shape[1:] != e.shape[1:]:
            raise TraceError(f"calibration {kind} {key!r} is {c.dtype} {list(c.shape)}; the "
                             f"model was traced with {e.dtype} {list(e.shape)}: only the "
                             "batch axis (0) may differ")
