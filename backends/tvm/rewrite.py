"""Running a Relax expression rewriter over every Relax function of a module."""
from __future__ import annotations

from typing import Any


def rewrite_functions(mod: Any, rewriter_class: type) -> Any:
    """``mod`` with each of its Relax functions replaced by what ``rewriter_class(mod)``
    (a PyExprMutator) makes of it; TIR functions are kept as they are."""
    from tvm import relax
    rewriter = rewriter_class(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
