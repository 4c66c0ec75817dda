"""The prune plan: which channels of each coupled group go, and what decided it.

Plan passes build it, one concern each; remove-channels or mask-channels applies it:

    score-channels   opens a plan: a score for every channel class
    limit-channels   what may go (ignore, exact-only) and in what steps (round-to,
                     min-channels, max-ratio, tie-sizes, uniform-layers); every selection keeps to them
    select-*         the one selection of the plan: how many channels go, and which
    refinements      passes that move a selection (hw-round, your own RefinePass)
    hw-check         times the plan with and without hw-round and keeps the faster

A refinement added after a selection that is a search (a budget) makes the search run
again with the refinement inside, so the refined plan still meets the budget."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from prunepass.errors import PipelineError
from prunepass.pm.options import matches_any
from prunepass.pm.passes import PreservedAnalyses, TransformPass, TransformResult

# a refinement: (plan, removed-class mask) -> the new mask (may be the same array, changed)
Refine = Callable[["PrunePlan", np.ndarray], np.ndarray]
# a selection: finish (the refinements, applied to a candidate mask) -> (the chosen
# selection's own mask, before refinements; notes for the record such as a budget search)
Search = Callable[[Callable[[np.ndarray], np.ndarray]], tuple[np.ndarray, dict[str, Any]]]


@dataclass
class Limits:
    """What a plan may remove. Selections and refinements keep to these."""
    ignore: list[str] = field(default_factory=list)
    exact_only: bool = False
    round_to: int = 1
    min_channels: int = 1
    max_ratio: float = 0.9
    tie_sizes: bool = True
    distributions: bool = False
    uniform_layers: bool = False

    def ignores(self, group: Any) -> bool:  # noqa: ANN401
        return any(matches_any(p, self.ignore) for p, _ in group.producers)


@dataclass
class _Step:
    name: str  # the pass that made it, in pipeline syntax
    fn: Refine


class PrunePlan:
    """Channel classes to remove over one model's channel groups (``cg``)."""

    def __init__(self, cg: Any, scores: np.ndarray, scored_by: str) -> None:  # noqa: ANN401
        self.cg = cg
        self.scores = scores
        self.scored_by = scored_by
        self.limits = Limits()
        self.selected_by: str | None = None
        self._search: Search | None = None
        self.refinements: list[_Step] = []
        self.removed = np.zeros(cg.n_classes, bool)
        self.notes: dict[str, Any] = {}  # for the record: budget search, hw_check
        self.tied: dict[int, list[int]] = {}  # group id -> groups it was tied to
        self._stages: list[tuple[str, np.ndarray]] = []
        self.cache: dict[str, Any] = {}  # what passes derive from cg once (segments)

    # -- what users read -------------------------------------------------------------
    @property
    def groups(self) -> list[Any]:
        return self.cg.groups

    def candidates(self, group: Any) -> np.ndarray:  # noqa: ANN401
        """The classes of ``group`` that the limits let go: prunable, not ignored, exact if
        asked, and not a distribution's axis unless asked."""
        if self.limits.ignores(group):
            return group.classes[:0]
        ok = group.prunable & (group.exact if self.limits.exact_only else True)
        if not self.limits.distributions:
            ok = ok & ~group.distribution
        return group.classes[ok]

    def kept(self, group: Any, removed: np.ndarray | None = None) -> int:  # noqa: ANN401
        removed = self.removed if removed is None else removed
        return int(group.size - removed[group.classes].sum())

    def keep(self) -> dict[tuple[str, int], np.ndarray]:
        """{(value, axis): indices kept} for every axis the plan shrinks."""
        return self.cg.keep_for(self.removed)

    @property
    def selected(self) -> bool:
        return self.selected_by is not None

    # -- what passes do ---------------------------------------------------------------
    def select(self, name: str, search: Search) -> None:
        if self.selected:
            raise PipelineError(f"{name}: the plan already has a selection ({self.selected_by}); "
                                "one selection per plan, then remove-channels or mask-channels")
        self.selected_by, self._search = name, search
        self.resolve()

    def refine(self, name: str, fn: Refine) -> None:
        self.refinements.append(_Step(name, fn))
        self.resolve()

    def drop_refinement(self, prefix: str) -> None:
        self.refinements = [s for s in self.refinements if not s.name.startswith(prefix)]
        self.resolve()

    def finish(self, removed: np.ndarray) -> np.ndarray:
        """``removed`` with every refinement applied, no tensor left empty."""
        out = removed.copy()
        for step in self.refinements:
            out = step.fn(self, out)
        keep_every_tensor_alive(self.cg, self.scores, out)
        return out

    def resolve(self) -> None:
        assert self._search is not None
        base, notes = self._search(self.finish)
        self.notes.update(notes)
        stages = [(self.selected_by or "", base.copy())]
        cur = base.copy()
        for step in self.refinements:
            cur = step.fn(self, cur.copy())
            stages.append((step.name, cur.copy()))
        keep_every_tensor_alive(self.cg, self.scores, cur)
        self.removed, self._stages = cur, stages

    def without(self, prefix: str) -> np.ndarray:
        """The plan's mask had the refinements named ``prefix...`` not been made."""
        saved = self.refinements
        self.refinements = [s for s in saved if not s.name.startswith(prefix)]
        try:
            base, _ = self._search(self.finish)  # type: ignore[misc]
            return self.finish(base)
        finally:
            self.refinements = saved

    # -- what the record keeps ---------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """One entry per group: its summary, ``kept``, and ``decided_by``: the selection
        and every refinement that moved its count. ``requested``: the selection's own
        count where a refinement moved it."""
        out = []
        for g in self.cg.groups:
            s = g.summary()
            s["kept"] = self.kept(g)
            counts = [(name, self.kept(g, m)) for name, m in self._stages]
            if s["kept"] < g.size or any(c < g.size for _, c in counts):
                decided = [counts[0][0]] + [name for (name, c), (_, prev)
                                            in zip(counts[1:], counts) if c != prev]
                s["decided_by"] = decided
                if counts[0][1] != s["kept"]:
                    s["requested"] = counts[0][1]
            if g.id in self.tied:
                s["tied_to"] = self.tied[g.id]
            out.append(s)
        return out


def keep_every_tensor_alive(cg: Any, scores: np.ndarray, removed: np.ndarray) -> None:  # noqa: ANN401
    """A group can span several tensors holding different subsets of its channels (a
    channel split after a shuffle). Never empty one: give back its best channel."""
    for b, n in cg.spaces.values():
        if n == 0:
            continue
        lab = cg.labels[b:b + n]
        if removed[lab].all():
            removed[lab[np.argmax(scores[lab])]] = False


class PlanPass(TransformPass):
    """A pass that builds or refines the open prune plan (``am.plan``); the model is not
    touched, so every analysis stays valid."""
    kind = "plan"

    def run(self, graph, am) -> TransformResult:  # noqa: ANN001
        return TransformResult(PreservedAnalyses.all(), self.update(am) or {})

    def update(self, am: Any) -> dict[str, Any] | None:  # noqa: ANN401
        raise NotImplementedError

    def open_plan(self, am: Any, selected: bool | None = None) -> PrunePlan:  # noqa: ANN401
        """The open plan; ``selected`` True/False: it must / must not have a selection."""
        plan = getattr(am, "plan", None)
        if plan is None:
            dropped = getattr(am, "plan_dropped_by", None)
            why = (f"; {dropped} changed the model after the last plan was made, which "
                   "ends it: put the plan passes after it" if dropped else "")
            raise PipelineError(f"{self.name} works on a prune plan and none is open{why}: "
                                "put score-channels (or a named pipeline such as "
                                "prune-channels) before it")
        if selected and not plan.selected:
            raise PipelineError(f"{self.name} needs a selection to work on and the plan has "
                                "none yet: put select-channels, select-budget or "
                                "select-threshold before it")
        if selected is False and plan.selected:
            raise PipelineError(f"{self.name} comes after the plan's selection "
                                f"({plan.selected_by}): put it before the selection")
        return plan


class RefinePass(PlanPass):
    """Moves the plan's selection: override ``refine(plan, removed)`` and return the new
    removed-class mask. Runs again whenever the selection is searched again."""

    def refine(self, plan: PrunePlan, removed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update(self, am: Any) -> dict[str, Any]:  # noqa: ANN401
        plan = self.open_plan(am, selected=True)
        before = plan.removed.copy()
        plan.refine(self.text(), self.refine)
        moved = [g.id for g in plan.groups
                 if plan.kept(g, before) != plan.kept(g)]
        return {"groups_moved": len(moved), "removed_classes": int(plan.removed.sum())}
