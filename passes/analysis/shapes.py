"""shapes: every value's shape and dtype, checked against the ops that constrain them."""
from __future__ import annotations

from prunepass.ir.graph import Graph
from prunepass.ir.verifier import verify
from prunepass.pm import AnalysisPass, register


@register
class ShapesAnalysis(AnalysisPass):
    """Shape and dtype of every value (from the frontend's shape inference), verified."""
    name = "shapes"

    def run(self, graph: Graph, am) -> dict[str, tuple[tuple[int, ...], str]]:  # noqa: ANN001
        verify(graph)
        return {v.name: (v.shape, v.dtype) for v in graph.values()}
