"""The record of a pipeline run: what was removed (per group and per layer), costs before
and after (each number says where it came from), pass timings, barriers. Saved as JSON,
and re-applicable to a fresh copy of the model (``prunepass.apply_record``)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunepass.errors import PlanError

FORMAT = "prunepass-record/1"
COUNTED = "counted from the IR (exact for these shapes)"


@dataclass
class Record:
    model: str
    frontend: str
    pipeline: str
    cost_before: dict[str, Any] = field(default_factory=dict)
    cost_after: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    # state tensor name -> axis -> indices kept, in the input model's index space
    keep: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    shapes_before: dict[str, list[int]] = field(default_factory=dict)
    shapes_after: dict[str, list[int]] = field(default_factory=dict)
    # modelled energy (when a hardware profile was given): totals and per-node totals
    energy_before: dict[str, Any] = field(default_factory=dict)
    energy_after: dict[str, Any] = field(default_factory=dict)
    energy_nodes_before: dict[str, list] = field(default_factory=dict)
    energy_nodes_after: dict[str, list] = field(default_factory=dict)
    # what came back: "own-class" (the user's class), "graph-module" (with the reason) or
    # "onnx"; the attributes updated, tracing notes (a cache turned off, scalars folded)
    output: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def start(cls, model: Any, pipeline: str, am: Any) -> "Record":
        r = cls(model=getattr(model, "name", "model"), frontend=model.frontend, pipeline=pipeline)
        r.cost_before = dict(am.get("cost").totals, source=COUNTED)
        r.shapes_before = {k: list(v.shape) for k, v in model.graph.state.items()}
        r.energy_before, r.energy_nodes_before = _energy(am)
        return r

    def finish(self, model: Any, am: Any) -> None:
        self.cost_after = dict(am.get("cost").totals, source=COUNTED)
        self.shapes_after = {k: list(v.shape) for k, v in model.graph.state.items()}
        self.energy_after, self.energy_nodes_after = _energy(am)

    def add_keep(self, keep: dict[str, dict[int, np.ndarray]]) -> None:
        """Compose a prune step (indices relative to the current tensors) into the record."""
        for name, axes in keep.items():
            cur = self.keep.setdefault(name, {})
            for axis, idx in axes.items():
                prev = cur.get(str(axis))
                idx = np.asarray(idx)
                cur[str(axis)] = (np.asarray(prev)[idx] if prev is not None else idx).tolist()

    # -- reporting --------------------------------------------------------------------
    @property
    def groups(self) -> list[dict[str, Any]]:
        return [g for p in self.passes for g in p.get("changes", {}).get("groups", [])]

    @property
    def barriers(self) -> list[dict[str, Any]]:
        return [b for p in self.passes for b in p.get("changes", {}).get("barriers", [])]

    def layers(self) -> list[tuple[str, list[int], list[int]]]:
        """(tensor, shape before, shape after) for every tensor whose shape changed."""
        return [(k, v, self.shapes_after.get(k, [])) for k, v in self.shapes_before.items()
                if self.shapes_after.get(k) != v]

    # -- persistence ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Record":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PlanError(f"record {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"record {path} is not valid JSON: {e}") from None
        if data.get("format") != FORMAT:
            raise PlanError(f"record {path} has format {data.get('format')!r}, expected {FORMAT}")
        return cls(**data)


def _energy(am: Any) -> tuple[dict[str, Any], dict[str, list]]:
    """Modelled energy totals and {node: [scope, op, total]} for nodes that cost anything."""
    if not getattr(am, "energy_profile", None):
        return {}, {}
    e = am.get("energy", profile=am.energy_profile)
    return e.totals, {n.node: [n.scope, n.op, n.total] for n in e.nodes if n.total > 0}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x
