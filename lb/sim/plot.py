"""The chart of a run: traffic share per endpoint over time, stacked, health transitions marked.

matplotlib is an optional dependency (the ``plot`` extra), imported only here and only when
a chart is asked for, with the Agg backend so that it works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailableError", "write_plot"]


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def write_plot(data: dict[str, Any], path: str | Path) -> None:
    """Draw the report ``data`` (the JSON document) into a PNG at ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'tunnel-lb[plot]'"
        ) from exc
    windows = data["windows"]
    keys = sorted({k for w in windows for k in w["by_endpoint"]})
    # Windows are intervals: step plots over their edges, the last value held to the end.
    edges = [w["start"] for w in windows] + [windows[-1]["end"] if windows else 0.0]

    def held(values: list[float]) -> list[float]:
        return [*values, values[-1]] if values else [0.0]

    shares = [
        held(
            [w["by_endpoint"].get(k, 0) / w["requests"] if w["requests"] else 0.0 for w in windows]
        )
        for k in keys
    ]
    errors = held([w["errors"] / w["requests"] if w["requests"] else 0.0 for w in windows])
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    try:
        if keys:
            ax.stackplot(edges, shares, labels=keys, alpha=0.85, step="post")
        ax.step(edges, errors, where="post", color="black", linestyle=":", label="error share")
        colors = {"unhealthy": "tab:red", "healthy": "tab:green", "unknown": "tab:gray"}
        for tr in data["transitions"]:
            if tr["vantage"] != "*":
                continue
            ax.axvline(tr["at"], color=colors.get(tr["to"], "tab:gray"), linewidth=1, alpha=0.8)
            ax.text(
                tr["at"],
                1.01,
                f"{tr['pool']}/{tr['endpoint']} {tr['to']}",
                rotation=90,
                fontsize=7,
                va="bottom",
                ha="center",
                transform=ax.get_xaxis_transform(),
            )
        ax.set_xlim(0, data["duration"])
        ax.set_ylim(0, 1)
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel(f"share of requests per {data['report_interval']:g} s window")
        ax.set_title(f"{data['scenario']} (seed {data['seed']})", pad=60)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
