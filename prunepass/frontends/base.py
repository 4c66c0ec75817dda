"""The contract between the frontend-neutral passes and a native model.

Analyses read the IR Graph; transforms decide on IR values and axes and ask the adapter
to apply the decision to the native model. After each native change the adapter
rebuilds its Graph, so the IR always describes the model as it is."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np

from prunepass.errors import PlanError
from prunepass.ir.graph import Graph, Node


class ModelAdapter(ABC):
    frontend: str = "?"
    graph: Graph

    @abstractmethod
    def clone(self) -> "ModelAdapter":
        """An independent copy: changing it never changes this model."""

    @abstractmethod
    def state_array(self, name: str) -> np.ndarray:
        """The current value of a parameter, buffer or constant."""

    @abstractmethod
    def state_gradients(self, inputs: Sequence[Any] | None,
                        loss_fn: Callable[[Any], Any] | None) -> dict[str, np.ndarray]:
        """d(loss)/d(parameter) for every parameter on a calibration batch."""

    def activation_stats(self, inputs: Sequence[Any] | None, wanted: dict[str, int]
                         ) -> dict[str, Any]:
        """Per-channel sums of the named activations along the given axes, on a
        calibration batch: what scores that read activations need."""
        raise NotImplementedError(f"{type(self).__name__} cannot record activations")

    @abstractmethod
    def apply_keep(self, keep: dict[tuple[str, int], np.ndarray], mode: str) -> None:
        """Keep only the given indices of each (value name, axis). ``mode`` is "remove"
        (slice parameters, rewrite shape constants) or "mask" (zero the dropped entries
        of every listed activation, shapes unchanged)."""

    @abstractmethod
    def fold_batchnorms(self, pairs: list[tuple[Node, Node]]) -> None:
        """Fold each inference batch norm into the conv or linear node that feeds it."""

    @abstractmethod
    def erase_dead(self) -> int:
        """Remove nodes and state whose results are never used; return how many."""

    def planned(self, keep: dict[tuple[str, int], np.ndarray]) -> "ModelAdapter":
        """A copy with ``keep``'s channels removed and the nodes left dead erased: the model a
        plan would give, to build and time before choosing it."""
        copy = self.clone()
        copy.apply_keep(keep, "remove")
        copy.erase_dead()
        return copy

    def set_weight_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Multiply each named parameter by a 0/1 mask of its shape that stays in the native
        model (through materialize() and fine-tuning). Masks on one weight multiply."""
        raise PlanError(f"weight masks are not supported by the {self.frontend} frontend")

    def weight_masks(self) -> dict[str, np.ndarray]:
        """The weight masks in the model, by parameter name (bool arrays)."""
        return {}

    @abstractmethod
    def run(self, inputs: Sequence[Any] | None = None) -> list[np.ndarray]:
        """Execute on ``inputs`` (default: the example inputs) and return the outputs."""

    @abstractmethod
    def materialize(self) -> Any:
        """The native model (a ``torch.nn.Module``, an ``onnx.ModelProto``)."""

    @property
    @abstractmethod
    def example_inputs(self) -> Sequence[Any]:
        ...
