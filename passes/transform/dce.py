"""dce: remove nodes whose results nothing uses, and the parameters only they read."""
from __future__ import annotations

from prunepass.ir.graph import Graph
from prunepass.pm import PreservedAnalyses, TransformPass, TransformResult, register


@register
class DeadCodeElimination(TransformPass):
    """Remove nodes and parameters that no output depends on."""
    name = "dce"

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        removed = am.model.erase_dead()
        return TransformResult(PreservedAnalyses.none() if removed else PreservedAnalyses.all(),
                               {"removed_nodes": removed})
