"""sparsity: zeros per weight layer and in total, effective (non-zero) parameters, N:M
compliance, and what the parameters would cost stored dense, deflated (zip) and in a
sparse bitmask format.

Also the shared definition of a *weight layer*: a conv, linear or matmul whose weight is a
trainable parameter, with the axis its product reduces over (N:M blocks run along it)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from prunepass.errors import PipelineError
from prunepass.ir import ops
from prunepass.ir.graph import PARAM, Graph
from prunepass.pm import AnalysisPass, Option, register
from prunepass.pm.options import at_least, matches_any


@dataclass(frozen=True)
class WeightLayer:
    param: str
    node: str
    op: str
    shape: tuple[int, ...]
    axis: int  # the reduction axis of the weight in its product

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def weight_layers(graph: Graph) -> list[WeightLayer]:
    """Conv and linear weights reduce over their input channels / features (axis 1; axis 0
    for a transposed conv); a matmul with a parameter operand over its inner dimension.
    A conv's N:M blocks run along input channels at each kernel position, the layout of
    implicit-GEMM kernels on channels-last data."""
    out: list[WeightLayer] = []
    seen: set[str] = set()
    for n in graph.nodes:
        w, axis = None, 0
        if n.op in (ops.CONV, ops.LINEAR) and len(n.inputs) >= 2:
            w = n.inputs[1]
            axis = 0 if n.op == ops.CONV and n.attrs.get("transposed") else 1
        elif n.op == ops.MATMUL and len(n.inputs) == 2:
            a, b = n.inputs
            if b.kind == PARAM and b.ndim >= 2:
                w, axis = b, b.ndim - 2
            elif a.kind == PARAM and a.ndim >= 2:
                w, axis = a, a.ndim - 1
        if w is None or w.kind != PARAM or w.ndim < 2 or w.param in seen:
            continue
        seen.add(w.param)
        out.append(WeightLayer(w.param, n.name, n.op, tuple(w.shape), axis))
    return out


def unweighted_layers(graph: Graph) -> list[str]:
    """Conv/linear/matmul nodes whose operands are not parameters (for error messages)."""
    have = {l.node for l in weight_layers(graph)}
    return [f"{n.name} ({n.op})" for n in graph.nodes
            if n.op in (ops.CONV, ops.LINEAR, ops.MATMUL) and n.name not in have]


def ignored(param: str, patterns: list[str]) -> bool:
    return matches_any(param, patterns)


def nm_blocks(w: np.ndarray, m: int, axis: int) -> np.ndarray:
    """``w`` with ``axis`` cut into blocks of ``m``: shape (..., size // m, m)."""
    moved = np.moveaxis(w, axis, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_violations(w: np.ndarray, n: int, m: int, axis: int) -> int:
    """How many blocks of ``m`` consecutive entries along ``axis`` hold more than ``n``
    non-zeros (0: the weight obeys N:M)."""
    if w.shape[axis] % m:
        raise ValueError(f"axis {axis} of size {w.shape[axis]} is not a multiple of {m}")
    return int(((nm_blocks(w, m, axis) != 0).sum(-1) > n).sum())


@dataclass
class LayerSparsity:
    param: str
    op: str
    shape: tuple[int, ...]
    numel: int
    nonzero: int
    masked: bool  # carries a weight mask in the native model
    nm: bool | None  # obeys N:M along its reduction axis; None: axis not a multiple of M

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    n: int
    m: int
    layers: list[LayerSparsity]
    totals: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes, computed from the arrays


def bitmask_bytes(a: np.ndarray) -> int:
    """Non-zero values plus one bit per entry (the cheaper sparse format at moderate
    sparsity; CSR's 2-4 byte indices only win above ~90%)."""
    return int(np.count_nonzero(a)) * a.itemsize + (a.size + 7) // 8


def measure(graph: Graph, model, n: int = 2, m: int = 4, sizes: bool = True) -> SparsityReport:  # noqa: ANN001
    masks = model.weight_masks()
    layers = []
    weights = {l.param for l in weight_layers(graph)}
    for l in weight_layers(graph):
        w = model.state_array(l.param)
        nm = None if l.shape[l.axis] % m else nm_violations(w, n, m, l.axis) == 0
        layers.append(LayerSparsity(l.param, l.op, l.shape, w.size, int(np.count_nonzero(w)),
                                    l.param in masks, nm))
    numel = sum(l.numel for l in layers)
    nonzero = sum(l.nonzero for l in layers)
    params = nz_params = 0
    dense = sparse = 0
    deflate = zlib.compressobj(6)  # zip's default level
    packed = 0
    for name, v in graph.state.items():
        if v.kind != PARAM:
            continue
        a = model.state_array(name).astype(v.dtype if v.dtype in np.sctypeDict else "float32")
        params += a.size
        nz_params += int(np.count_nonzero(a))
        if sizes:
            dense += a.nbytes
            sparse += bitmask_bytes(a) if name in weights else a.nbytes
            packed += len(deflate.compress(np.ascontiguousarray(a).tobytes()))
    totals = {"weights": numel, "weights_nonzero": nonzero,
              "weight_sparsity": 1.0 - nonzero / numel if numel else 0.0,
              "params": params, "effective_params": nz_params,
              "param_sparsity": 1.0 - nz_params / params if params else 0.0}
    out = SparsityReport(n, m, layers, totals)
    if sizes:
        packed += len(deflate.flush())
        out.sizes = {"dense": dense, "zip": packed, "bitmask": sparse}
    return out


@register
class SparsityAnalysis(AnalysisPass):
    """Zeros per weight layer and in total, effective parameters, N:M check, stored sizes."""
    name = "sparsity"
    options = (
        Option("n", int, 2, "N of the N:M pattern checked per layer", check=at_least(1)),
        Option("m", int, 4, "M of the N:M pattern checked per layer", check=at_least(1)),
        Option("sizes", bool, True, "compute stored sizes (dense, zip, bitmask)"),
    )

    def __init__(self, **opts) -> None:  # noqa: ANN003
        super().__init__(**opts)
        if self["n"] > self["m"]:
            raise PipelineError(f"pass 'sparsity': n={self['n']} of every m={self['m']} "
                                "weights cannot be non-zero; need n <= m")

    def run(self, graph: Graph, am) -> SparsityReport:  # noqa: ANN001
        return measure(graph, am.model, self["n"], self["m"], self["sizes"])


def _kib(b: float) -> str:
    return f"{b / 1024:.1f} KiB" if b < 2**20 else f"{b / 2**20:.2f} MiB"


def format_sparsity(r: SparsityReport, top: int | None = None) -> str:
    rows = sorted(r.layers, key=lambda l: -l.numel)[:top] if top else r.layers
    lines = [f"  {'weight':40} {'shape':>18} {'params':>9} {'nonzero':>9} {'sparsity':>8} "
             f"{f'{r.n}:{r.m}':>4} mask"]
    for l in rows:
        nm = "-" if l.nm is None else ("yes" if l.nm else "no")
        lines.append(f"  {l.param:40} {str(list(l.shape)):>18} {l.numel:>9} {l.nonzero:>9} "
                     f"{l.sparsity * 100:7.2f}% {nm:>4} {'yes' if l.masked else 'no'}")
    t = r.totals
    lines.append(f"  weights: {t['weights']} of which {t['weights_nonzero']} non-zero "
                 f"(sparsity {t['weight_sparsity'] * 100:.2f}%)")
    lines.append(f"  all parameters: {t['params']}, effective (non-zero) "
                 f"{t['effective_params']} (sparsity {t['param_sparsity'] * 100:.2f}%)")
    skipped = sum(l.nm is None for l in r.layers)
    if skipped:
        lines.append(f"  {r.n}:{r.m} '-': {skipped} layers whose reduction dimension is not a "
                     f"multiple of {r.m}")
    if r.sizes:
        s = r.sizes
        lines.append(f"  parameter storage: dense {_kib(s['dense'])}, zip (deflate) "
                     f"{_kib(s['zip'])}, bitmask sparse {_kib(s['bitmask'])} "
                     "(computed from the arrays)")
    return "\n".join(lines)
