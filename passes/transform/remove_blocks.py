"""remove-blocks: depth pruning. Whole residual layers go where they change the residual
stream least.

A block is an entry of a module list (``model.layers.3``, ``layer1.1``) that holds a residual
add, reads one tensor shaped like the one it gives back (the stream) and gives back one
tensor; the outermost such entries are the blocks (a decoder layer, not its sublayers). Its
score is ShortGPT's block influence on the calibration inputs: 1 - the mean cosine
similarity between the stream entering the block and leaving it (per token along the last
axis, per position along the channel axis of a 4-D map). Removing a block hands its input
to whatever read its output: the result equals the model with the block replaced by the
identity, pre-norm or post-norm alike."""
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
    entry: Value  # the stream going in
    exit: Value  # the stream coming out
    last: Node  # the node that makes ``exit``


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


def _residual_scopes(graph: Graph, made_by: dict[int, Node]) -> set[str]:
    """Scopes of the adds ``r + f(r)`` whose branch reads ``r`` through a layer."""
    out = set()
    for n in graph.nodes:
        if n.op != ops.BINARY or n.attrs.get("fn") not in ("add", "add_") or \
                len(n.inputs) != 2 or any(v.kind != "act" for v in n.inputs):
            continue
        if any(_reads(n.inputs[1 - r], n.inputs[r], made_by) for r in (0, 1)):
            out.add(n.scope)
    return out


def residual_blocks(graph: Graph) -> list[Block]:
    made_by = {id(o): n for n in graph.nodes for o in n.outputs}
    residual = _residual_scopes(graph, made_by)
    entries = sorted({".".join(parts[:k + 1]) for n in graph.nodes
                      for parts in [n.scope.split(".")] for k in range(len(parts))
                      if parts[k].isdigit()}, key=lambda s: (s.count("."), s))
    graph_outputs = {id(v) for v in graph.outputs}
    blocks: list[Block] = []
    for scope in entries:
        if any(scope.startswith(b.scope + ".") for b in blocks):
            continue  # inside a block already found: the outermost entry is the unit
        inside = [n for n in graph.nodes if n.scope == scope or n.scope.startswith(scope + ".")]
        if not any(s == scope or s.startswith(scope + ".") for s in residual):
            continue
        made = {id(o) for n in inside for o in n.outputs}
        names = {n.name for n in inside}
        outs = [o for n in inside for o in n.outputs
                if id(o) in graph_outputs or any(u.name not in names for u in o.users)]
        if len(outs) != 1 or "." in outs[0].name:
            continue
        streams = {id(v): v for n in inside for v in n.inputs if v.kind in ("act", "input")
                   and id(v) not in made and v.shape == outs[0].shape}
        if len(streams) == 1:
            entry = next(iter(streams.values()))
            blocks.append(Block(scope, entry, outs[0], made_by[id(outs[0])]))
    blocks.sort(key=lambda b: graph.nodes.index(b.last))
    return blocks


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
        am.model.bypass({blocks[i].last.name: blocks[i].entry.name for i in sorted(gone)},
                        [blocks[i].scope for i in sorted(gone)])
        return TransformResult(PreservedAnalyses.none() if n else PreservedAnalyses.all(), {
            "blocks": [{"scope": b.scope, "influence": round(float(s), 6),
                        "removed": i in gone} for i, (b, s) in enumerate(zip(blocks, scores))],
            "removed": [blocks[i].scope for i in sorted(gone)]})
