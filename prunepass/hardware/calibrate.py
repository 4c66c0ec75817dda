"""Fit a profile to measurements by non-negative least squares.

Latency:  t = s_per_mac * MACs + s_per_byte * bytes moved + s_per_node * compute nodes
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


@dataclass
class Run:
    """One measured model variant."""
    name: str
    macs: float
    bytes: float
    nodes: int
    latency_s: float  # measured
    energy_j: float | None = None  # measured, where a meter exists


def features(graph, cost) -> tuple[float, float, int]:  # noqa: ANN001
    """(MACs, bytes read+written, compute nodes) of a graph from its cost analysis."""
    macs = float(cost.totals["macs"])
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


def fit_latency(runs: list[Run]) -> tuple[dict[str, float], list[FitRow]]:
    a = np.array([[r.macs, r.bytes, r.nodes] for r in runs], dtype=float)
    y = np.array([r.latency_s for r in runs])
    scale = np.where(a.max(0) > 0, a.max(0), 1.0)  # conditioning: solve on scaled columns
    coef, _ = nnls(a / scale, y)
    coef = coef / scale
    model = {"s_per_mac": float(coef[0]), "s_per_byte": float(coef[1]),
             "s_per_node": float(coef[2])}
    pred = a @ coef
    return model, [FitRow(r.name, r.latency_s, float(p)) for r, p in zip(runs, pred)]


def fit_energy(runs: list[Run]) -> tuple[dict[str, float], list[FitRow]]:
    a = np.array([[r.macs, r.bytes, r.latency_s] for r in runs], dtype=float)
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
