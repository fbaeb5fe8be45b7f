"""The chart of a rehearsal: each pool's share and the errors per window, real over the band.

One panel per pool share and one for errors; the simulated 5-95 % band is shaded, its
median dashed, the real run drawn as dots (red when outside the band); the timeline's faults
are shaded grey.  matplotlib comes from the ``plot`` extra, as for ``simulate --plot``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lb.sim.plot import require_matplotlib

if TYPE_CHECKING:
    from lb.rehearse import Rehearsal

__all__ = ["write_rehearsal_plot"]


def write_rehearsal_plot(result: Rehearsal, path: str | Path) -> None:
    """Write the chart to ``path`` (PNG)."""
    plt = require_matplotlib()
    pools = [p.name for p in result.scenario.config.pools]
    keys = [f"share {p}" for p in pools] + ["errors"]
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.2 * len(keys)), sharex=True)
    by_name = {p.name: p for p in result.points}
    windows = result.real.data["windows"]
    for ax, key in zip(axes, keys, strict=True):
        xs, low, mid, high, real, colors = [], [], [], [], [], []
        for w in windows:
            p = by_name.get(f"window {w['start']:g}-{w['end']:g}s {key}")
            if p is None:
                continue
            xs.append((w["start"] + w["end"]) / 2)
            low.append(p.low)
            mid.append(p.median)
            high.append(p.high)
            real.append(p.real)
            colors.append("tab:blue" if p.inside else "tab:red")
        for f in result.real.data["faults"]:
            ax.axvspan(f["start"], f["end"], color="0.9", zorder=0)
        ax.fill_between(xs, low, high, color="tab:orange", alpha=0.3, label="simulated 5-95 %")
        ax.plot(xs, mid, "--", color="tab:orange", linewidth=1, label="simulated median")
        ax.scatter(xs, real, c=colors, s=18, zorder=3, label="real")
        ax.set_ylabel(key)
    axes[0].legend(loc="best", fontsize=8)
    axes[0].set_title(
        fontsize=10,
        label=f"rehearsal {result.scenario.name} (speed {result.speed:g}, rate x{result.rate:g}, "
        f"{len(result.sims)} seeds): {result.outside:.0%} of points outside the band",
    )
    axes[-1].set_xlabel("seconds (scaled)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
