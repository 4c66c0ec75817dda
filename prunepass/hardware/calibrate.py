"""Fit a profile to measurements by non-negative least squares.

Latency:  t = sum_k s_per_mac[k] * MACs_k + s_per_byte * bytes moved + s_per_node * nodes
              + s_per_loose_byte * bytes moved by loose nodes
          (k: dense conv, grouped/depthwise conv, matrix products; they run at very
          different speeds per MAC on CPUs. With a channel block B, each kind is split into
          layers whose channel counts are multiples of B and the rest ("_unaligned"): CPU
          kernels work on blocks of channels, and onnxruntime runs a convolution with
          unaligned channels in another layout, converting its neighbours' tensors, so
          each unaligned layer also costs s_per_unaligned_layer. fit_aligned_latency tries
          several B and keeps the one that fits best. A loose node is a memory-bound node
          no layer absorbs: a normalisation or activation applied to a concatenation or
          before a convolution (pre-activation), pooling, a concatenation itself; graph
          compilers fuse the others into the layer whose output they read, and eager
          execution does not, so the fit says what a loose byte costs beyond a fused one.)
Energy:   E = j_per_mac * MACs + j_per_byte * bytes moved + static_w * t_measured

The features come from the IR (cost analysis) of each measured model variant, so dense and
pruned variants of several models constrain the same few coefficients. The fitted profile
keeps the original's numbers, adds ``latency_model`` / ``energy_model`` (which the energy
analysis then prefers to the roofline and the per-op energies), and says where it came
from ("calibrated on <device>, <date>")."""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from prunepass.hardware.profile import HardwareProfile, ProfileError
from prunepass.ir import ops

VIEW_OPS = {ops.RESHAPE, ops.PERMUTE, ops.EXPAND, ops.SELECT, ops.SLICE, ops.FILL,
            ops.CONSTANT}


BASE_KINDS = ("conv", "grouped_conv", "gemm")
MAC_KINDS = BASE_KINDS + tuple(f"{k}_unaligned" for k in BASE_KINDS)
CHANNEL_BLOCKS = (1, 4, 8, 16)  # tried by fit_aligned_latency; 1: no alignment split
LATENCY_TERMS = ("s_per_byte", "s_per_node", "s_per_unaligned_layer",
                 "s_per_loose_byte")  # besides s_per_mac
MAC_OPS = {ops.CONV, ops.LINEAR, ops.MATMUL, ops.EINSUM, ops.ATTENTION}
FUSABLE_OPS = {ops.BATCHNORM, ops.UNARY, ops.BINARY}  # fused into the layer they follow


def mac_kind(node, block: int = 1) -> str:  # noqa: ANN001
    """The node's MAC kind; with ``block`` > 1, "_unaligned" when its input or output
    channels are not a multiple of the block (a convolution's input of fewer channels
    than a block, like an image, counts as aligned)."""
    if node.op == ops.CONV:
        groups = node.attrs.get("groups", 1) or 1
        kind = "grouped_conv" if groups > 1 else "conv"
        cin, cout = node.inputs[0].shape[1], node.outputs[0].shape[1]
        aligned = cout % block == 0 and (groups > 1 or cin % block == 0 or cin < block)
    else:
        kind = "gemm"
        cin, cout = node.inputs[0].shape[-1], node.outputs[0].shape[-1]
        aligned = cout % block == 0 and cin % block == 0
    return kind if block <= 1 or aligned else f"{kind}_unaligned"


@dataclass
class Run:
    """One measured model variant. ``macs`` is a total or a dict by MAC_KINDS."""
    name: str
    macs: float | dict[str, float]
    bytes: float
    nodes: int
    latency_s: float  # measured
    energy_j: float | None = None  # measured, where a meter exists
    layer_s: float | None = None  # its conv/linear layers timed alone, summed (LayerLatency)
    unaligned_layers: int = 0  # layers of an unaligned MAC kind (unaligned_layers())
    loose_bytes: float = 0.0  # of ``bytes``, those moved by loose nodes (loose_nodes())

    def mac_vector(self) -> list[float]:
        if isinstance(self.macs, dict):
            return [float(self.macs.get(k, 0.0)) for k in MAC_KINDS]
        return [float(self.macs)] + [0.0] * (len(MAC_KINDS) - 1)

    @property
    def total_macs(self) -> float:
        return sum(self.mac_vector())


def _macs_by_kind(graph, cost, block: int) -> tuple[dict[str, float], int]:  # noqa: ANN001
    """(MACs by mac_kind(node, block), how many MAC layers are of an unaligned kind)."""
    by_name = {n.name: n for n in graph.nodes}
    macs = {k: 0.0 for k in (MAC_KINDS if block > 1 else BASE_KINDS)}
    unaligned = 0
    for c in cost.nodes:
        if c.macs:
            kind = mac_kind(by_name[c.node], block)
            macs[kind] += c.macs
            unaligned += kind.endswith("_unaligned")
    return macs, unaligned


def features(graph, cost, block: int = 1) -> tuple[dict[str, float], float, int]:  # noqa: ANN001
    """(MACs by kind, bytes read+written, compute nodes) of a graph from its cost; MACs
    split by channel alignment when ``block`` > 1 (see mac_kind)."""
    return (_macs_by_kind(graph, cost, block)[0], *_moved_and_nodes(graph, cost))


def _moved_and_nodes(graph, cost) -> tuple[float, int]:  # noqa: ANN001
    """(bytes read+written, compute nodes)."""
    return (float(sum(c.read_bytes + c.act_bytes for c in cost.nodes)),
            sum(1 for n in graph.nodes if n.op not in VIEW_OPS))


def loose_nodes(graph) -> set[str]:  # noqa: ANN001
    """Compute nodes without MACs that no layer absorbs: all but the elementwise nodes and
    batch norms that read, as the only reader, the output of a MAC layer or of a node
    already absorbed (conv -> bn -> add -> relu is one kernel in a graph compiler)."""
    made_by: dict[str, str] = {}
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for v in n.outputs:
            made_by[v.name] = n.name
        for v in n.inputs:
            readers[v.name] = readers.get(v.name, 0) + 1
    absorbed: set[str] = set()
    loose: set[str] = set()
    for n in graph.nodes:
        if n.op in VIEW_OPS:
            continue
        if n.op in MAC_OPS:
            absorbed.add(n.name)  # a layer: what follows it may fuse into it
            continue
        if n.op in FUSABLE_OPS and any(
                readers.get(v.name) == 1 and made_by.get(v.name) in absorbed
                for v in n.inputs):
            absorbed.add(n.name)
        else:
            loose.add(n.name)
    return loose


def loose_bytes(graph, cost) -> float:  # noqa: ANN001
    """Bytes read+written by loose_nodes(graph)."""
    loose = loose_nodes(graph)
    return float(sum(c.read_bytes + c.act_bytes for c in cost.nodes if c.node in loose))


def unaligned_layers(graph, cost, block: int) -> int:  # noqa: ANN001
    """How many MAC layers mac_kind(node, block) calls unaligned."""
    return _macs_by_kind(graph, cost, block)[1]


def measured_run(name: str, graph, cost, latency_s: float,  # noqa: ANN001
                 block: int = 1) -> Run:
    """A Run of a measured graph, its MACs split by ``block``."""
    macs, unaligned = _macs_by_kind(graph, cost, block)
    return Run(name, macs, *_moved_and_nodes(graph, cost), latency_s,
               unaligned_layers=unaligned, loose_bytes=loose_bytes(graph, cost))


@dataclass
class FitRow:
    name: str
    measured: float
    predicted: float

    @property
    def rel_error(self) -> float:
        return (self.predicted - self.measured) / self.measured


@dataclass
class Calibration:
    profile: HardwareProfile
    latency: list[FitRow]
    energy: list[FitRow]

    def mean_abs_pct_error(self, which: str = "latency") -> float:
        return mean_abs_pct_error(self.latency if which == "latency" else self.energy)


def mean_abs_pct_error(rows: list[FitRow]) -> float:
    return float(np.mean([abs(r.rel_error) for r in rows]) * 100) if rows else float("nan")


def latency_features(run: Run) -> list[float]:
    """The run's row of the latency fit: MACs by MAC_KINDS, then one value per
    LATENCY_TERMS entry."""
    return [*run.mac_vector(), run.bytes, run.nodes, run.unaligned_layers, run.loose_bytes]


def predict_latency(model: dict, run: Run) -> float:
    """A fitted latency model's prediction (s) for a whole run, its MACs split by the
    model's channel_block."""
    per_mac = model["s_per_mac"]
    coef = [per_mac[k] for k in MAC_KINDS] + [model.get(t, 0.0) for t in LATENCY_TERMS]
    return float(np.dot(latency_features(run), coef))


def fit_latency(runs: list[Run], block: int = 1) -> tuple[dict, list[FitRow]]:
    """Coefficients minimising the squared *relative* errors: each run's row is divided by
    its measured latency, so a 2 ms model counts as much as a 200 ms one. ``block``: the
    channel block the runs' MACs were split by (features(..., block)), kept in the model."""
    a = np.array([latency_features(r) for r in runs], dtype=float)
    y = np.array([r.latency_s for r in runs])
    if (y <= 0).any():
        raise ProfileError("calibration needs positive measured latencies")
    scale = np.where(a.max(0) > 0, a.max(0), 1.0)  # conditioning: solve on scaled columns
    coef, _ = nnls(a / scale / y[:, None], np.ones_like(y))
    coef = coef / scale
    n = len(MAC_KINDS)
    used = dict(zip(MAC_KINDS, a.max(0)[:n] > 0))
    per_mac = {k: float(c) for k, c in zip(MAC_KINDS, coef)}
    # a kind no run has: assume it costs what its nearest measured kind does
    for kind, like in (("grouped_conv", "conv"), ("gemm", "conv")):
        if not used[kind]:
            per_mac[kind] = per_mac[like]
    for kind in BASE_KINDS:
        if not used[f"{kind}_unaligned"]:
            per_mac[f"{kind}_unaligned"] = per_mac[kind]
    model = {"s_per_mac": per_mac, **{t: float(c) for t, c in zip(LATENCY_TERMS, coef[n:])},
             "channel_block": block}
    pred = a @ coef
    return model, [FitRow(r.name, r.latency_s, float(p)) for r, p in zip(runs, pred)]


def fit_aligned_latency(runs_by_block: dict[int, list[Run]]) -> tuple[dict, list[FitRow]]:
    """fit_latency for each channel block (the same runs, MACs split by that block) and
    the fit with the smallest mean relative error: the block is calibrated too."""
    fits = [fit_latency(runs, block) for block, runs in sorted(runs_by_block.items())]
    return min(fits, key=lambda f: mean_abs_pct_error(f[1]))


def fit_layer_latency(runs: list[Run]) -> tuple[dict[str, float], list[FitRow]]:
    """t = per_layer * (the run's conv/linear layers timed alone, summed) + s_per_byte *
    bytes + s_per_node * nodes, on relative error. Timed layers carry what MACs cannot:
    kernels that run fast or slow for their channel counts."""
    if any(r.layer_s is None for r in runs):
        raise ProfileError("a layer-table fit needs every run's layer_s")
    a = np.array([[r.layer_s, r.bytes, r.nodes] for r in runs], dtype=float)
    y = np.array([r.latency_s for r in runs])
    scale = np.where(a.max(0) > 0, a.max(0), 1.0)
    coef, _ = nnls(a / scale / y[:, None], np.ones_like(y))
    coef = coef / scale
    model = {"per_layer": float(coef[0]), "s_per_byte": float(coef[1]),
             "s_per_node": float(coef[2])}
    return model, [FitRow(r.name, r.latency_s, float(p)) for r, p in zip(runs, a @ coef)]


def latency_of(model: dict, kind: str, macs: float, moved: float, is_compute: bool,
               loose: bool = False) -> float:
    """A node's latency under a fitted model; ``kind`` from mac_kind(node,
    model["channel_block"]); ``loose``: the node is in loose_nodes()."""
    per_mac = model["s_per_mac"]
    if isinstance(per_mac, dict):
        per_mac = per_mac.get(kind, per_mac.get(kind.removesuffix("_unaligned"),
                                                per_mac.get("conv", 0.0)))
    unaligned = model.get("s_per_unaligned_layer", 0.0) if macs and \
        kind.endswith("_unaligned") else 0.0
    per_byte = model["s_per_byte"] + (model.get("s_per_loose_byte", 0.0) if loose else 0.0)
    return per_mac * macs + per_byte * moved + unaligned + \
        (model["s_per_node"] if is_compute else 0.0)


def fit_energy(runs: list[Run]) -> tuple[dict[str, float], list[FitRow]]:
    a = np.array([[r.total_macs, r.bytes, r.latency_s] for r in runs], dtype=float)
    y = np.array([r.energy_j for r in runs], dtype=float)
    scale = np.where(a.max(0) > 0, a.max(0), 1.0)
    coef, _ = nnls(a / scale, y)
    coef = coef / scale
    model = {"j_per_mac": float(coef[0]), "j_per_byte": float(coef[1]),
             "static_w": float(coef[2])}
    return model, [FitRow(r.name, float(r.energy_j), float(p)) for r, p in zip(runs, a @ coef)]


def calibrate(profile: HardwareProfile, runs: list[Run], device: str,
              date: str | None = None,
              aligned: dict[int, list[Run]] | None = None) -> Calibration:
    """Fit the latency (and, where runs carry measured energy, the energy) model. With
    ``aligned`` (the same runs with MACs split per channel block), the latency model is
    fitted by fit_aligned_latency instead."""
    if len(runs) < 3:
        raise ProfileError(f"calibration needs at least 3 measured runs, got {len(runs)}")
    date = date or dt.date.today().isoformat()
    lat_model, lat_rows = fit_aligned_latency(aligned) if aligned else fit_latency(runs)
    extra = dict(profile.extra)
    extra["latency_model"] = {**lat_model, "source": f"calibrated on {device}, {date}, "
                              f"{len(runs)} runs"}
    energy_rows: list[FitRow] = []
    if all(r.energy_j is not None for r in runs):
        e_model, energy_rows = fit_energy(runs)
        extra["energy_model"] = {**e_model, "source": f"calibrated on {device}, {date}, "
                                 f"{len(runs)} runs"}
    fitted = dataclasses.replace(
        profile, name=f"{profile.name}-calibrated",
        provenance=f"calibrated on {device}, {date} (from {profile.name})", extra=extra)
    return Calibration(fitted, lat_rows, energy_rows)
