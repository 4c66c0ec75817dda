"""Budgets, schedules with recovery, and multi-objective search over per-group ratios.

``search`` (NSGA-II over per-group ratios, Pareto set with records), ``prune_with_recovery``
(one-shot, iterative and polynomial channel schedules with fine-tuning), ``allocate``
(per-group ratios for a budget, guided by the sensitivity analysis).

The package itself is callable: ``prunepass.search(model, inputs, evaluate, ...)`` is
``prunepass.search.search(...)``."""
import sys
import types
from typing import Any

from prunepass.search.allocate import Allocation, allocate
from prunepass.search.pareto import dominates, hypervolume_2d, non_dominated
from prunepass.search.recovery import (ChannelSchedule, RecoveryResult, classification_trainer,
                                       prune_with_recovery, schedule_amount)
from prunepass.search.result import ParetoPoint, SearchResult
from prunepass.search.study import TrialFailed, search

__all__ = ["Allocation", "ChannelSchedule", "ParetoPoint", "RecoveryResult", "SearchResult",
           "TrialFailed", "allocate", "classification_trainer", "dominates", "hypervolume_2d", "non_dominated",
           "prune_with_recovery", "schedule_amount", "search"]


class _CallablePackage(types.ModuleType):
    """``prunepass.search(...)`` calls ``prunepass.search.search(...)``, while
    ``prunepass.search.recovery`` and friends stay reachable: a plain function exported
    under the package's own name would hide the package."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
