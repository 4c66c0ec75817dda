"""Torch-side helpers the backends share: evaluate a module in inference mode without
changing it for good, and export it to one self-contained ONNX file."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from prunepass.errors import PrunepassError


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """BN running statistics and no dropout while inside; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def as_args(example_inputs: Sequence[Any] | Any) -> tuple[Any, ...]:
    if example_inputs is None:
        raise PrunepassError("a torch model needs example inputs, e.g. "
                             "(torch.randn(1, 3, 224, 224),)")
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def export_onnx(model: Any, example_inputs: Sequence[Any] | Any, path: str | Path) -> Path:
    """torch.onnx.export (the torch.export-based exporter) to ``path``, weights inside."""
    import torch
    path = Path(path)
    with eval_mode(model):
        try:
            torch.onnx.export(model, as_args(example_inputs), str(path), dynamo=True,
                              external_data=False, verbose=False)
        except Exception as err:  # the exporter raises many kinds
            raise PrunepassError(f"torch.onnx.export failed on {type(model).__name__}: "
                                 f"{str(err).splitlines()[0]}") from err
    return path
