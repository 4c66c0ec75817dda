"""apply-record: remove exactly the channels a saved record removed."""
from __future__ import annotations

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir.graph import Graph
from prunepass.passes.analysis.channel_groups import UNITS
from prunepass.plan import PrunePlan
from prunepass.pm import Option, TransformPass, TransformResult, register
from prunepass.passes.transform.remove_channels import apply_plan
from prunepass.record import Record


def removed_from_record(cg, graph: Graph, record: Record) -> np.ndarray:  # noqa: ANN001
    """Classes to remove so that every tensor the record names keeps what it kept."""
    removed = np.zeros(cg.n_classes, bool)
    matched = 0
    for name, axes in record.keep.items():
        v = graph.state.get(name)
        if v is None:
            continue
        matched += 1
        before = record.shapes_before.get(name)
        if before is not None and list(before) != list(v.shape):
            raise PlanError(f"the record's {name} had shape {list(before)}, this model's has "
                            f"{list(v.shape)}: the record was made on another model")
        for axis, kept in axes.items():
            axis = int(axis)
            if not 0 <= axis < v.ndim:
                raise PlanError(f"the record keeps channels of {name} along axis {axis}, "
                                f"which a tensor of shape {list(v.shape)} lacks")
            cls = cg.classes_of(v.name, axis)
            kept = np.asarray(kept, dtype=np.int64)
            if kept.size == 0 or kept.min() < 0 or kept.max() >= len(cls):
                raise PlanError(f"the record keeps channels of {name} axis {axis} outside "
                                f"its {len(cls)} channels")
            gone = np.ones(len(cls), bool)
            gone[kept] = False
            removed[cls[gone]] = True
    if record.keep and not matched:
        raise PlanError("the record names no tensor of this model: was it made for another "
                        f"model? (it starts with {next(iter(record.keep))!r})")
    return removed


def _disagreement(cg, graph: Graph, record: Record, removed: np.ndarray) -> str:  # noqa: ANN001
    for (name, axis), idx in cg.keep_for(removed).items():
        v = next((s for s in graph.state.values() if s.name == name), None)
        if v is not None and v.param in record.keep and str(axis) in record.keep[v.param] \
                and list(idx) != list(record.keep[v.param][str(axis)]):
            return (f"record and model disagree on {v.param} axis {axis}: the coupled "
                    "channels differ from those the record kept")
    return ""


@register
class ApplyRecord(TransformPass):
    """Remove the channels listed in a saved run record (re-apply a pruning)."""
    name = "apply-record"
    options = (Option("path", str, "", "the record JSON written by `prunepass run --report`"),)

    def __init__(self, record: Record | None = None, **opts) -> None:  # noqa: ANN003
        super().__init__(**opts)
        self.record = record

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        if self.record is None and not self["path"]:
            raise PipelineError("pass 'apply-record' needs path=FILE, the record JSON that "
                                "`prunepass run --report` wrote")
        record = self.record or Record.load(self["path"])
        for unit in UNITS:  # a record of whole heads is not a set of head_dim channels
            cg = am.get("channel-groups", unit=unit)
            removed = removed_from_record(cg, graph, record)
            disagree = _disagreement(cg, graph, record, removed)
            if not disagree:
                break
        if disagree:
            raise PlanError(disagree)
        plan = PrunePlan(cg, np.zeros(cg.n_classes), "the record")
        plan.limits.tie_sizes = False
        plan.select(self.text(), lambda finish: (removed, {}))
        return apply_plan(self.name, plan, am, "remove")
