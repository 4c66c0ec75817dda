"""PNG charts of run records (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

from prunepass.record import Record


def energy_per_layer(rec: Record, path: str | Path, top: int = 30) -> Path:
    """Grouped bars: modelled energy of the costliest layers, dense vs pruned."""
    from prunepass.errors import need
    matplotlib = need("matplotlib", "plot", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rec.energy_before:
        raise ValueError("the record has no energy: run with a hardware profile")
    unit = rec.energy_before["unit"]
    scale, label = (1e-9, "mJ") if unit == "pJ" else (1.0, unit)
    # aggregate nodes by the module they came from
    def by_scope(nodes: dict) -> dict:
        out: dict[str, float] = {}
        for name, (scope, _op, e) in nodes.items():
            out[scope or name] = out.get(scope or name, 0.0) + e * scale
        return out
    before, after = by_scope(rec.energy_nodes_before), by_scope(rec.energy_nodes_after)
    names = sorted(before, key=lambda k: -before[k])[:top]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(names) + 2), 5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [before[n] for n in names], 0.4, label="dense")
    ax.bar([x + 0.2 for x in xs], [after.get(n, 0.0) for n in names], 0.4, label="pruned")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel(f"energy per inference ({label}, modelled)")
    tb, ta = rec.energy_before["total"] * scale, rec.energy_after["total"] * scale
    ax.set_title(f"{rec.model}: {tb:.3g} -> {ta:.3g} {label} (modelled, profile "
                 f"{rec.energy_before['profile']}); top {len(names)} layers")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
