"""Fit a profile to measurements by non-negative least squares.

Latency:  t = sum_k s_per_mac[k] * MACs_k + s_per_byte * bytes moved + s_per_node * nodes
          (k: dense conv, grouped/depthwise conv, matrix products; they run at very
          different speeds per MAC on CPUs)
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


MAC_KINDS = ("conv", "grouped_conv", "gemm")


def mac_kind(node) -> str:  # noqa: ANN001
    if node.op == ops.CONV:
        return "grouped_conv" if node.attrs.get("groups", 1) > 1 else "conv"
    return "gemm"


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

    def mac_vector(self) -> list[float]:
        if isinstance(self.macs, dict):
            return [float(self.macs.get(k, 0.0)) for k in MAC_KINDS]
        return [float(self.macs), 0.0, 0.0]

    @property
    def total_macs(self) -> float:
        return sum(self.mac_vector())


def features(graph, cost) -> tuple[dict[str, float], float, int]:  # noqa: ANN001
    """(MACs by kind, bytes read+written, compute nodes) of a graph from its cost."""
    by_name = {n.name: n for n in graph.nodes}
    macs = {k: 0.0 for k in MAC_KINDS}
    for c in cost.nodes:
        if c.macs:
            macs[mac_kind(by_name[c.node])] += c.macs
    moved = float(sum(c.read_bytes + c.act_bytes for c in cost.nodes))
    nodes = sum(1 for n in graph.nodes if n.op not in VIEW_OPS)
    return macs, moved, nodes


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
        rows = self.latency if which == "latency" else self.energy
        return float(np.mean([abs(r.rel_error) for r in rows]) * 100) if rows else float("nan")


def fit_latency(runs: list[Run]) -> tuple[dict, list[FitRow]]:
    """Coefficients minimising the squared *relative* errors: each run's row is divided by
    its measured latency, so a 2 ms model counts as much as a 200 ms one."""
    a = np.array([[*r.mac_vector(), r.bytes, r.nodes] for r in runs], dtype=float)
    y = np.array([r.latency_s for r in runs])
    if (y <= 0).any():
        raise ProfileError("calibration needs positive measured latencies")
    scale = np.where(a.max(0) > 0, a.max(0), 1.0)  # conditioning: solve on scaled columns
    coef, _ = nnls(a / scale / y[:, None], np.ones_like(y))
    coef = coef / scale
    used = a.max(0) > 0
    per_mac = {k: float(c) for k, c, u in zip(MAC_KINDS, coef, used)}
    if not used[1]:  # no grouped convs measured: assume they cost what dense ones do
        per_mac["grouped_conv"] = per_mac["conv"]
    if not used[2]:
        per_mac["gemm"] = per_mac["conv"]
    model = {"s_per_mac": per_mac, "s_per_byte": float(coef[3]), "s_per_node": float(coef[4])}
    pred = a @ coef
    return model, [FitRow(r.name, r.latency_s, float(p)) for r, p in zip(runs, pred)]


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


def latency_of(model: dict, kind: str, macs: float, moved: float, is_compute: bool) -> float:
    per_mac = model["s_per_mac"]
    per_mac = per_mac.get(kind, per_mac.get("conv", 0.0)) if isinstance(per_mac, dict) \
        else per_mac
    return per_mac * macs + model["s_per_byte"] * moved + \
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
              date: str | None = None) -> Calibration:
    if len(runs) < 3:
        raise ProfileError(f"calibration needs at least 3 measured runs, got {len(runs)}")
    date = date or dt.date.today().isoformat()
    lat_model, lat_rows = fit_latency(runs)
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
