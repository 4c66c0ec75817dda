"""Terminal tables for run records."""
from __future__ import annotations

from prunepass.record import Record


def _si(x: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suffix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _bytes(x: float) -> str:
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.1f} {suffix}"
    return f"{x:.0f} B"


def format_output(rec: Record) -> list[str]:
    """What came back: the user's class, or the graph module and why."""
    out = rec.output
    lines = []
    if out.get("returned") == "own-class":
        lines.append(f"  returned: {out.get('class')} (your class; {len(out.get('updated', []))} "
                     "size attributes updated, outputs equal to the pruned graph's)")
    elif out.get("returned") == "graph-module":
        lines.append(f"  returned: the pruned graph module, because {out.get('reason')}")
    config = out.get("config", {})
    if config.get("updated"):
        lines.append(f"  config: {config['updated']} (proved: {config.get('proved')})")
    elif config.get("not_updated"):
        lines.append(f"  config unchanged: {config['not_updated']}")
    lines += [f"  note: {n}" for n in out.get("notes", [])]
    return lines


def _approximate(groups: list[dict]) -> str:
    """' (2 approximate: ...)' for the pruned groups that are not exact, by kind."""
    kinds = [g.get("approximate", [] if g["exact"] else ["statistic"]) for g in groups]
    stat = sum("statistic" in k for k in kinds)
    dist = sum("distribution" in k for k in kinds)
    parts = ([f"{stat} where norm statistics span the channels"] if stat else []) + \
        ([f"{dist} whose channels a softmax is over"] if dist else [])
    return f" (approximate: {'; '.join(parts)})" if parts else ""


def format_record(rec: Record, top_layers: int = 8) -> str:
    b, a = rec.cost_before, rec.cost_after
    rows = [("params", _si(b["params"]), _si(a["params"]), b["params"], a["params"]),
            ("MACs", _si(b["macs"]), _si(a["macs"]), b["macs"], a["macs"]),
            ("param bytes", _bytes(b["param_bytes"]), _bytes(a["param_bytes"]),
             b["param_bytes"], a["param_bytes"]),
            ("activation bytes", _bytes(b["act_bytes"]), _bytes(a["act_bytes"]),
             b["act_bytes"], a["act_bytes"])]
    lines = [f"{rec.model} ({rec.frontend})  pipeline: {rec.given or rec.pipeline}",
             f"  {'':18}{'before':>14}{'after':>14}{'change':>10}"]
    for name, sb, sa, nb, na in rows:
        change = f"{(na - nb) / nb * 100:+.1f}%" if nb else "-"
        lines.append(f"  {name:18}{sb:>14}{sa:>14}{change:>10}")
    lines.append("  (counted from the IR for the example input shapes)")
    lines += format_output(rec)
    lines += format_energy(rec)
    for p in rec.passes:
        ch = p.get("changes", {})
        extra = ""
        if "groups_total" in ch:
            extra = f"groups pruned {ch['groups_pruned']}/{ch['groups_total']}"
            extra += _approximate(ch["groups"])
            if "max_rel_error_vs_masked" in ch:
                extra += f", max rel. error vs masked {ch['max_rel_error_vs_masked']:.1e}"
            check = ch.get("hw_check", {})
            if "snapped_ms" in check:
                extra += (f"; hw-check kept the {check['kept']} counts (snapped "
                          f"{check['snapped_ms']['median']:.2f} ms, as asked "
                          f"{check['asked_ms']['median']:.2f} ms, measured)")
        elif "folded" in ch:
            extra = f"folded {len(ch['folded'])} batch norms"
        elif "removed_nodes" in ch:
            extra = f"removed {ch['removed_nodes']} nodes"
        elif "removed_classes" in ch:
            extra = f"removed {ch['removed_classes']} channels"
        elif "zero_weights" in ch:
            extra = (f"{ch['zero_weights']}/{ch['weights']} weights zero "
                     f"({ch['zero_weights'] / max(ch['weights'], 1) * 100:.1f}%)")
            if ch.get("skipped"):
                extra += f", {len(ch['skipped'])} layers skipped (not a multiple of m)"
        secs = f"{p['seconds']:.2f}s" if "seconds" in p else ""
        lines.append(f"  pass {p['pass']:16} {secs:>7} (measured)  {extra}")
    barriers = rec.barriers
    if barriers:
        ops = sorted({b["op"] for b in barriers})
        lines.append(f"  barriers ({len(barriers)} nodes; their channels are kept): "
                     + ", ".join(ops))
    else:
        lines.append("  barriers: none")
    layers = rec.layers()
    if layers:
        lines.append(f"  largest changed tensors ({len(layers)} changed):")
        def size(s: list[int]) -> int:
            n = 1
            for d in s:
                n *= d
            return n
        for name, sb, sa in sorted(layers, key=lambda t: -size(t[1]))[:top_layers]:
            lines.append(f"    {name:48} {str(sb):>20} -> {sa if sa else 'removed'}")
    return "\n".join(lines)


def _energy_value(x: float, unit: str) -> str:
    if unit == "pJ":
        return f"{x / 1e9:.3f} mJ"
    return f"{x:.3g} {unit}"


def format_energy(rec: Record, top: int = 5) -> list[str]:
    eb, ea = rec.energy_before, rec.energy_after
    if not eb:
        return []
    unit = eb["unit"]
    lines = [f"  energy per inference, {eb['source']}:"]
    for k in ("compute", "memory", "static", "total"):
        change = f"{(ea[k] - eb[k]) / eb[k] * 100:+.1f}%" if eb[k] else "-"
        lines.append(f"    {k:16}{_energy_value(eb[k], unit):>14}"
                     f"{_energy_value(ea[k], unit):>14}{change:>10}")
    lines.append(f"    {'latency (model)':16}{eb['latency_s'] * 1e3:>11.2f} ms"
                 f"{ea['latency_s'] * 1e3:>11.2f} ms")
    hot = sorted(rec.energy_nodes_before.items(), key=lambda kv: -kv[1][2])[:top]
    if hot:
        lines.append("    hot spots before pruning (modelled):")
        for name, (scope, op, e) in hot:
            after = rec.energy_nodes_after.get(name, [None, None, 0.0])[2]
            lines.append(f"      {(scope or name)[:40]:40} {op:10} {_energy_value(e, unit):>12}"
                         f" -> {_energy_value(after, unit)}")
    return lines


def format_plan(rec: Record) -> str:
    """Every plan the run applied: per pruned group, its channels, what it kept and the
    passes that decided the count."""
    lines = []
    for p in rec.passes:
        ch = p.get("changes", {})
        if "selected_by" not in ch:
            continue
        lines.append(f"plan applied by {p['pass']} (selected by {ch['selected_by']}): "
                     f"{ch['groups_pruned']} of {ch['groups_total']} groups pruned")
        if "budget" in ch:
            b = ch["budget"]
            lines.append(f"  budget: {b['budget']} {b['achieved']:.4g} <= {b['target']:.4g} "
                         f"(dense {b['dense']:.4g}), global ratio {b['ratio']:.3f}")
        if not ch["groups"]:
            continue
        lines.append(f"  {'group':40} {'channels':>8} {'kept':>6}  decided by")
        for g in ch["groups"]:
            kinds = g.get("approximate", [] if g["exact"] else ["statistic"])
            kept = f"{g['kept']}" + ("~" if "statistic" in kinds else "") + \
                ("*" if "distribution" in kinds else "")
            lines.append(f"  {g['name'][:40]:40} {g['channels']:>8} {kept:>6}  "
                         + " -> ".join(g.get("decided_by", [])))
        if any(not g["exact"] for g in ch["groups"]):
            lines.append("  ~ approximate: a norm or mean spans the group's channels; "
                         "* a softmax is over them (limit-channels<distributions=true>)")
    return "\n".join(lines) if lines else "no plan was applied"
