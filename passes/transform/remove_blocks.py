"""remove-blocks: depth pruning. Whole residual blocks go where they change the residual
stream least.

A residual add ``out = r + f(r)`` whose branch ``f`` reads ``r`` is a block; the adds of one
module (a decoder layer's attention and MLP residuals) are one block. Its score is
ShortGPT's block influence on the calibration inputs: 1 - the mean cosine similarity
between the residual stream entering the block and leaving it (per token along the last
axis, per position along the channel axis of a 4-D map). Removing a block makes each of its
adds give ``r``: the result equals the model with the block replaced by the identity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from prunepass.errors import PipelineError, PlanError
from prunepass.ir import ops
from prunepass.ir.graph import Graph, Node, Value
from prunepass.pm import Option, PreservedAnalyses, TransformPass, TransformResult, register
from prunepass.pm.options import at_least, in_range, matches_any


@dataclass
class Block:
    scope: str
    adds: list[tuple[Node, int]]  # each residual add and the input that is the residual

    @property
    def entry(self) -> Value:
        node, r = self.adds[0]
        return node.inputs[r]

    @property
    def exit(self) -> Value:
        return self.adds[-1][0].output


def _reads(branch: Value, residual: Value, made_by: dict[int, Node]) -> bool:
    """Whether ``branch`` is computed from ``residual`` through a layer with parameters."""
    stack, seen, layer = [branch], set(), False
    found = False
    while stack:
        v = stack.pop()
        if v is residual:
            found = True
            continue
        node = made_by.get(id(v))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        layer |= any(i.kind == "param" for i in node.inputs)
        stack.extend(node.inputs)
    return found and layer


def residual_blocks(graph: Graph) -> list[Block]:
    made_by = {id(o): n for n in graph.nodes for o in n.outputs}
    blocks: dict[str, Block] = {}
    for n in graph.nodes:
        fn = n.attrs.get("fn")
        if n.op != ops.BINARY or fn not in ("add", "add_") or len(n.inputs) != 2:
            continue
        if any(v.kind != "act" or v.shape != n.output.shape for v in n.inputs):
            continue
        for r in (0, 1):
            # in place (out += identity): the written tensor must be the branch, read by
            # nothing else, so that nothing sees it change
            if fn == "add_" and (r == 0 or len(n.inputs[0].users) != 1):
                continue
            if _reads(n.inputs[1 - r], n.inputs[r], made_by):
                blocks.setdefault(n.scope, Block(n.scope, [])).adds.append((n, r))
                break
    return list(blocks.values())


def influence(am: Any, blocks: list[Block]) -> np.ndarray:  # noqa: ANN401
    """1 - mean cosine(entry, exit) of each block on the calibration inputs."""
    import torch
    entries: dict[int, Any] = {}
    sims: dict[int, list[float]] = {}

    def axis_of(t: Any) -> int:  # noqa: ANN401
        return 1 if t.ndim == 4 else -1

    def keep_entry(i: int):  # noqa: ANN202
        return lambda t: entries.__setitem__(i, t.float())

    def compare(i: int):  # noqa: ANN202
        def f(t: Any) -> None:  # noqa: ANN401
            cos = torch.nn.functional.cosine_similarity(entries.pop(i), t.float(),
                                                        dim=axis_of(t), eps=1e-8)
            sims.setdefault(i, []).append(float(cos.mean()))
        return f
    wanted: dict[str, Any] = {}
    for i, b in enumerate(blocks):
        wanted[b.entry.name] = _both(wanted.get(b.entry.name), keep_entry(i))
        wanted[b.exit.name] = _both(wanted.get(b.exit.name), compare(i))
    am.model.watch(am.calibration, wanted)
    return np.array([1.0 - float(np.mean(sims.get(i, [1.0]))) for i in range(len(blocks))])


def _both(f: Any, g: Any) -> Any:  # noqa: ANN401
    """One callback doing two things (a value may end one block and enter the next)."""
    if f is None:
        return g

    def h(t: Any) -> None:  # noqa: ANN401
        f(t)
        g(t)
    return h


@register
class RemoveBlocks(TransformPass):
    """Remove the residual blocks (whole transformer layers, residual units) that change
    the residual stream least (block influence on the calibration inputs)."""
    name = "remove-blocks"
    options = (
        Option("count", int, 0, "how many blocks to remove", check=at_least(0)),
        Option("ratio", float, 0.0, "or: this fraction of the blocks (rounded down)",
               check=in_range(0.0, 0.95)),
        Option("ignore", list, [], "module scopes (fnmatch) whose blocks stay, e.g. "
               "[model.layers.0,model.layers.1]"),
        Option("scopes", list, [], "or: remove exactly these blocks (what a record "
               "re-applies)"),
    )

    def run(self, graph: Graph, am) -> TransformResult:  # noqa: ANN001
        if getattr(am, "plan", None) is not None:
            raise PipelineError(f"{self.name}: a prune plan is open; apply it first")
        if not hasattr(am.model, "bypass"):
            raise PlanError(f"{self.name}: the {am.model.frontend} frontend cannot remove "
                            "blocks yet (use a torch model)")
        blocks = [b for b in residual_blocks(graph)
                  if not matches_any(b.scope, self["ignore"])]
        if self["scopes"]:
            return self._apply(am, blocks, np.zeros(len(blocks)), {
                i for i, b in enumerate(blocks) if b.scope in self["scopes"]})
        n = self["count"] or int(self["ratio"] * len(blocks))
        if not self["count"] and not self["ratio"]:
            raise PipelineError(f"{self.name}: give count, ratio or scopes")
        if n > len(blocks):
            raise PlanError(f"{self.name}: {n} blocks asked, the model has {len(blocks)} "
                            f"removable residual blocks")
        scores = influence(am, blocks) if n else np.zeros(len(blocks))
        return self._apply(am, blocks, scores, set(np.argsort(scores, kind="stable")[:n]
                                                   .tolist()))

    def _apply(self, am, blocks: list[Block], scores: np.ndarray,  # noqa: ANN001
               gone: set[int]) -> TransformResult:
        missing = set(self["scopes"]) - {blocks[i].scope for i in gone}
        if missing:
            raise PlanError(f"{self.name}: {sorted(missing)[0]} is not a removable residual "
                            f"block of this model (it has {[b.scope for b in blocks][:4]}...)")
        n = len(gone)
        am.model.bypass({node.name: r for i in sorted(gone) for node, r in blocks[i].adds},
                        [blocks[i].scope for i in sorted(gone)])
        return TransformResult(PreservedAnalyses.none() if n else PreservedAnalyses.all(), {
            "blocks": [{"scope": b.scope, "influence": round(float(s), 6),
                        "removed": i in gone} for i, (b, s) in enumerate(zip(blocks, scores))],
            "removed": [blocks[i].scope for i in sorted(gone)]})
