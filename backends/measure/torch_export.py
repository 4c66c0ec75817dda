"""Torch-side helpers the backends share: evaluate a module in inference mode without
changing it for good, and export it to one self-contained ONNX file."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from prunepass.errors import PrunepassError


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """BN running statistics and no dropout while inside; every submodule's own mode is
    restored (a model with frozen batch norms in training keeps them frozen)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def as_args(example_inputs: Sequence[Any] | Any) -> tuple[Any, ...]:
    if example_inputs is None:
        raise PrunepassError("a torch model needs example inputs, e.g. "
                             "(torch.randn(1, 3, 224, 224),)")
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def export_onnx(model: Any, example_inputs: Sequence[Any] | Any, path: str | Path) -> Path:
    """torch.onnx.export (the torch.export-based exporter) to ``path``, weights inside.
    ``example_inputs`` as ``prunepass.prune`` takes them (positional, keyword or both)."""
    import torch
    from prunepass.frontends.torch.inputs import normalize
    path = Path(path)
    inputs = normalize(example_inputs)
    with eval_mode(model):
        try:
            torch.onnx.export(model, inputs.args, str(path), kwargs=inputs.kwargs or None,
                              dynamo=True, external_data=False, verbose=False)
        except Exception as err:  # the exporter raises many kinds
            raise PrunepassError(f"torch.onnx.export failed on {type(model).__name__}: "
                                 f"{str(err).splitlines()[0]}") from err
    return path
