"""Per-op channel rules: how channel indices flow through each canonical op.

A rule is ``fn(node, ctx)`` registered for one or more canonical ops; it links, pins or
flags elements through ``ctx`` (see ``context.RuleContext``). An op without a rule is a
barrier. Add a rule in one of the modules below (or a new one imported here)."""
from __future__ import annotations

from typing import Callable

from prunepass.ir.graph import Node
from prunepass.passes.rules.context import RuleContext

Rule = Callable[[Node, RuleContext], None]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register


from prunepass.passes.rules import elementwise, linear, norm, shape  # noqa: E402,F401

__all__ = ["RULES", "RuleContext", "rule"]
