"""energy: modelled energy per node from a hardware profile.

compute = MACs x energy per MAC (by dtype); memory = bytes read and written x energy per
byte of the memory level that serves the node (the first level its working set, inputs
plus outputs, fits in); static = static power x latency, with latency from a roofline of
the profile's peak throughput and that level's bandwidth (or a measured per-node latency
when one is given). Every number is *modelled*; reports say so."""
from __future__ import annotations

from dataclasses import dataclass

from prunepass.hardware import HardwareProfile, load_profile
from prunepass.ir.graph import Graph
from prunepass.pm import AnalysisPass, Option, register

PJ_PER_J = 1e12


@dataclass
class NodeEnergy:
    node: str
    op: str
    scope: str
    macs: int
    bytes: int
    level: str
    latency_s: float
    compute: float  # in the profile's unit (pJ, or MAC-equivalents)
    memory: float
    static: float

    @property
    def total(self) -> float:
        return self.compute + self.memory + self.static


@dataclass
class Energy:
    profile: str
    unit: str
    nodes: list[NodeEnergy]
    latency_source: str

    @property
    def totals(self) -> dict:
        t = {"compute": sum(n.compute for n in self.nodes),
             "memory": sum(n.memory for n in self.nodes),
             "static": sum(n.static for n in self.nodes)}
        t["total"] = t["compute"] + t["memory"] + t["static"]
        t["latency_s"] = sum(n.latency_s for n in self.nodes)
        t["unit"] = self.unit
        t["profile"] = self.profile
        t["source"] = f"modelled (profile {self.profile}; latency {self.latency_source})"
        return t

    def total_mj(self) -> float | None:
        """Total in millijoules, when the profile is in pJ."""
        return self.totals["total"] / 1e9 if self.unit == "pJ" else None


def node_dtype(graph_node) -> str:  # noqa: ANN001
    for v in [*graph_node.inputs, *graph_node.outputs]:
        if v.dtype.startswith(("float", "bfloat", "int")) and v.kind != "const":
            return v.dtype
    return "float32"


def compute_energy(graph: Graph, cost, profile: HardwareProfile,  # noqa: ANN001
                   node_latency: dict[str, float] | None = None) -> Energy:
    from prunepass.hardware.calibrate import VIEW_OPS, latency_of, loose_nodes, mac_kind
    rows = []
    by_name = {n.name: n for n in graph.nodes}
    lat_model = profile.extra.get("latency_model")  # from calibration, when fitted
    e_model = profile.extra.get("energy_model")
    loose = loose_nodes(graph) if lat_model and lat_model.get("s_per_loose_byte") else set()
    to_unit = PJ_PER_J if profile.unit == "pJ" else 0.0
    for c in cost.nodes:
        node = by_name[c.node]
        dtype = node_dtype(node)
        moved = c.read_bytes + c.act_bytes
        level = profile.level_for(moved)
        if node_latency is not None and c.node in node_latency:
            latency = node_latency[c.node]
        elif lat_model:
            kind = mac_kind(node, lat_model.get("channel_block", 1)) if c.macs else "conv"
            latency = latency_of(lat_model, kind, c.macs, moved, node.op not in VIEW_OPS,
                                 c.node in loose)
        else:
            latency = max(c.macs / profile.peak(dtype), moved / (level.bandwidth_gbs * 1e9))
        if e_model:
            compute = c.macs * e_model["j_per_mac"] * to_unit
            memory = moved * e_model["j_per_byte"] * to_unit
            static = e_model["static_w"] * latency * to_unit
        else:
            compute = c.macs * profile.mac_energy(dtype)
            memory = moved * level.pj_per_byte
            static = profile.static_power_w * latency * to_unit
        rows.append(NodeEnergy(c.node, c.op, c.scope, c.macs, moved, level.name, latency,
                               compute, memory, static))
    source = ("measured per node" if node_latency else
              "calibrated linear model" if lat_model else "roofline")
    return Energy(profile.name, profile.unit, rows, source)


@register
class EnergyAnalysis(AnalysisPass):
    """Modelled energy per node (compute, memory, static) from a hardware profile."""
    name = "energy"
    options = (Option("profile", str, "x86-epyc", "a shipped profile name or a YAML path "
                      "(prunepass.hardware.available_profiles())"),)

    def run(self, graph: Graph, am) -> Energy:  # noqa: ANN001
        latency = getattr(am, "node_latency", None)
        return compute_energy(graph, am.get("cost"), load_profile(self["profile"]), latency)
