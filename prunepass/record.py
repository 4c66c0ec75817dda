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
    pipeline: str  # as run: named pipelines expanded, every option spelled out
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
    given: str = ""  # the pipeline as written (records before plan passes lack it)
    # the example inputs' shapes and dtypes, and the versions of what made the record
    inputs: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def start(cls, model: Any, pipeline: str, am: Any, given: str = "") -> "Record":
        r = cls(model=getattr(model, "name", "model"), frontend=model.frontend,
                pipeline=pipeline, given=given or pipeline,
                inputs=describe_inputs(getattr(model, "example_inputs", ())),
                versions=versions())
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

    def step(self, name: str) -> dict[str, Any]:
        """The changes of the last pass named ``name`` (remove-channels: the plan applied,
        its groups, budget search and hw-check)."""
        for p in reversed(self.passes):
            if isinstance(p, dict) and p.get("pass") == name:
                return p.get("changes") or {}
        raise KeyError(f"no pass {name!r} in this record ({self.pipeline})")

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
        p = Path(path)
        if p.is_dir():
            raise PlanError(f"record {path} is a folder, not a record file")
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise PlanError(f"record {path} does not exist") from None
        except UnicodeDecodeError:
            raise PlanError(f"record {path} is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"record {path} is not valid JSON: {e}") from None
        except OSError as e:
            raise PlanError(f"record {path} cannot be read ({e.strerror})") from None
        validate(data, str(path))
        return cls(**data)

    def check_model(self, graph: Any, frontend: str) -> None:
        """Refuse a model other than the one the record was made on: on the same frontend
        its tensors (names and shapes before pruning) must be the record's; across frontends
        (a torch record on its ONNX export) every tensor both know must agree in shape."""
        if not self.shapes_before:
            return
        mine = {k: list(v.shape) for k, v in graph.state.items()}
        theirs = self.shapes_before
        differ = [k for k in theirs if k in mine and mine[k] != theirs[k]]
        problems = [f"{k} is {mine[k]}, the record's {theirs[k]}" for k in differ[:2]]
        if frontend == self.frontend:
            missing = [k for k in theirs if k not in mine]
            extra = [k for k in mine if k not in theirs]
            problems += [f"the model lacks {k}" for k in missing[:2]]
            problems += [f"the record does not know {k}" for k in extra[:2]]
        else:  # an exporter folds and renames some tensors; layers it keeps by name
            extra = [k for k in mine if k not in theirs and k.endswith((".weight", ".bias"))]
            problems += [f"the record does not know {k}" for k in extra[:2]]
        if problems:
            raise PlanError(f"the record was made on another model ({self.model}, "
                            f"{len(theirs)} tensors; this one has {len(mine)}): "
                            + "; ".join(problems))


_TYPES = {"model": str, "frontend": str, "pipeline": str, "format": str, "cost_before": dict,
          "cost_after": dict, "passes": list, "keep": dict, "shapes_before": dict,
          "shapes_after": dict, "energy_before": dict, "energy_after": dict,
          "energy_nodes_before": dict, "energy_nodes_after": dict, "output": dict,
          "given": str, "inputs": list, "versions": dict}
_REQUIRED = ("model", "frontend", "pipeline", "format")


def _index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31


def validate(data: Any, where: str) -> None:
    """A record file as written by Record.save: every field of its type, ``keep`` a map of
    tensor -> axis -> sorted unique channel indices within the tensor's shape."""
    if not isinstance(data, dict):
        raise PlanError(f"record {where} must be a JSON object, not {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PlanError(f"record {where} has format {data.get('format')!r}, expected {FORMAT}")
    for k in _REQUIRED:
        if k not in data:
            raise PlanError(f"record {where} lacks the field {k!r}")
    for k, v in data.items():
        if k not in _TYPES:
            raise PlanError(f"record {where} has an unknown field {k!r}")
        if not isinstance(v, _TYPES[k]):
            raise PlanError(f"record {where}: field {k!r} must be a JSON "
                            f"{'object' if _TYPES[k] is dict else _TYPES[k].__name__}")
    shapes = data.get("shapes_before", {})
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(_index(s) for s in shape):
            raise PlanError(f"record {where}: shapes_before[{name!r}] must be a list of sizes")
    for name, axes in data.get("keep", {}).items():
        if not isinstance(axes, dict):
            raise PlanError(f"record {where}: keep[{name!r}] must map axes to index lists")
        for axis, idx in axes.items():
            shape = shapes.get(name)
            if not axis.isdigit() or (shape is not None and int(axis) >= len(shape)):
                raise PlanError(f"record {where}: keep[{name!r}] names axis {axis!r}, which "
                                f"the tensor{f' of shape {shape}' if shape else ''} lacks")
            if not isinstance(idx, list) or not all(_index(i) for i in idx) or not idx:
                raise PlanError(f"record {where}: keep[{name!r}][{axis!r}] must be a "
                                "non-empty list of channel indices")
            if any(b <= a for a, b in zip(idx, idx[1:])):
                raise PlanError(f"record {where}: keep[{name!r}][{axis!r}] must be sorted "
                                "and without repeats")
            if shape is not None and idx[-1] >= shape[int(axis)]:
                raise PlanError(f"record {where}: keep[{name!r}][{axis!r}] holds index "
                                f"{idx[-1]}, beyond the axis's {shape[int(axis)]} channels")


VERSIONED = ("prunepass", "torch", "torchvision", "onnx", "onnxruntime", "apache-tvm",
             "transformers")


def versions() -> dict[str, str | None]:
    """Installed versions of prunepass and what it runs on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def describe_inputs(inputs: Any) -> list[dict[str, Any]]:
    """[{"name", "shape", "dtype"}] for every tensor or array in the example inputs
    (positional, keyword, nested), in order."""
    out: list[dict[str, Any]] = []

    def walk(x: Any, name: str) -> None:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            out.append({"name": name, "shape": [int(d) for d in x.shape],
                        "dtype": str(x.dtype).replace("torch.", "")})
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{name}[{i}]" if name else f"[{i}]")
    walk(getattr(inputs, "args", inputs), "")
    walk(getattr(inputs, "kwargs", {}), "")
    return out


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
