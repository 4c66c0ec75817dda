"""Pareto plots (matplotlib, Agg: no display needed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prunepass.search.pareto import non_dominated


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    front: bool = True  # draw the non-dominated points as a connected front
    style: dict = field(default_factory=dict)  # extra matplotlib keyword arguments


def pareto_plot(path: str | Path, series: Sequence[Series], *, xlabel: str, ylabel: str,
                title: str = "", maximize: tuple[bool, bool] = (False, True),
                dense: tuple[float, float] | None = None, xscale: float = 1.0,
                logx: bool = False) -> Path:
    """Scatter each series; join the non-dominated points of the ``front`` series as a
    staircase; mark the dense model with a star. ``xscale`` divides the x values."""
    from prunepass.errors import need
    matplotlib = need("matplotlib", "plot", "the search's Pareto plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for s in series:
        if not s.points:
            continue
        xs = [p[0] / xscale for p in s.points]
        ys = [p[1] for p in s.points]
        if not s.front:
            ax.scatter(xs, ys, s=12, alpha=0.5, label=s.label, **s.style)
            continue
        idx = sorted(non_dominated(s.points, maximize), key=lambda i: s.points[i][0])
        line = ax.step([xs[i] for i in idx], [ys[i] for i in idx], where="post", **s.style)
        ax.scatter(xs, ys, s=22, color=line[0].get_color(), label=s.label)
    if dense is not None:
        ax.scatter([dense[0] / xscale], [dense[1]], marker="*", s=160, color="black",
                   label="dense", zorder=5)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
