"""The chart of a run: who served the traffic over time, the errors, the faults and the health.

Two panels over virtual time.  The top one stacks each endpoint's share of the requests it
answered well, with the errors as their own band on top, so a failing endpoint's colour never
hides its errors; the timeline's fault windows are shaded; aggregate health transitions are
vertical lines, labelled in a strip above the panel on as many rows as it takes for no two
labels to overlap.  The bottom one shows the absolute request rate and error rate.

matplotlib is an optional dependency (the ``plot`` extra), imported only here and only when a
chart is asked for, with the Agg backend so that it works without a display.
:func:`require_matplotlib` lets a command fail before a long run rather than after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailableError", "label_rows", "require_matplotlib", "write_plot"]

_COLORS = {"unhealthy": "tab:red", "healthy": "tab:green", "unknown": "tab:gray"}


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> Any:
    """Import matplotlib's pyplot on the Agg backend, or raise :class:`PlotUnavailableError`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'tunnel-lb[plot]'"
        ) from exc
    return plt


def label_rows(spans: list[tuple[float, float]]) -> list[int]:
    """A row for each label occupying ``(start, end)`` so that no two labels on one row
    overlap: greedy in order of ``start``, lowest free row first."""
    ends: list[float] = []
    rows = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[i]
        for row, last in enumerate(ends):
            if start >= last:
                ends[row] = end
                rows[i] = row
                break
        else:
            ends.append(end)
            rows[i] = len(ends) - 1
    return rows


def write_plot(data: dict[str, Any], path: str | Path) -> None:
    """Draw the report ``data`` (the JSON document) into a PNG at ``path``."""
    plt = require_matplotlib()
    windows = data["windows"]
    keys = sorted({k for w in windows for k in w["by_endpoint"]})
    # Windows are intervals: step plots over their edges, the last value held to the end.
    edges = [w["start"] for w in windows] + [windows[-1]["end"] if windows else 0.0]

    def held(values: list[float]) -> list[float]:
        return [*values, values[-1]] if values else [0.0]

    def share(w: dict[str, Any], n: float) -> float:
        return n / w["requests"] if w["requests"] else 0.0

    good = [
        held(
            [
                share(w, w["by_endpoint"].get(k, 0) - w.get("errors_by_endpoint", {}).get(k, 0))
                for w in windows
            ]
        )
        for k in keys
    ]
    errors = held([share(w, w["errors"]) for w in windows])
    width = [max(w["end"] - w["start"], 1e-9) for w in windows]
    rate = held([w["requests"] / d for w, d in zip(windows, width, strict=True)])
    error_rate = held([w["errors"] / d for w, d in zip(windows, width, strict=True)])
    health = [t for t in data["transitions"] if t["vantage"] == "*"]

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7.5), dpi=100, sharex=True, height_ratios=(3, 1.2)
    )
    try:
        for fault in data.get("faults", ()):
            # Hatched over the shares (which fill the panel), tinted under the rates.
            top.axvspan(
                fault["start"],
                fault["end"],
                facecolor="none",
                edgecolor="tab:red",
                hatch="//",
                alpha=0.35,
                lw=0,
                zorder=3,
            )
            bottom.axvspan(fault["start"], fault["end"], color="tab:red", alpha=0.08, lw=0)
        if keys:
            top.stackplot(
                edges,
                [*good, errors],
                labels=[*keys, "errors"],
                alpha=0.85,
                step="post",
                colors=[*plt.get_cmap("tab10").colors[: len(keys)], "black"][: len(keys) + 1]
                if len(keys) <= 10
                else None,
            )
        for t in health:
            top.axvline(t["at"], color=_COLORS.get(t["to"], "tab:gray"), linewidth=1, alpha=0.8)
        duration = float(data["duration"]) or 1.0
        # A label is about 12 % of the axis wide; near the right edge it extends leftwards.
        wide = duration * 0.12
        right = [t["at"] > duration - wide for t in health]
        spans = [
            (t["at"] - wide, t["at"]) if r else (t["at"], t["at"] + wide)
            for t, r in zip(health, right, strict=True)
        ]
        rows = label_rows(spans)
        for t, row, flip in zip(health, rows, right, strict=True):
            top.annotate(
                f"{t['pool']}/{t['endpoint']} {t['to']}",
                xy=(t["at"], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-2 if flip else 2, 4 + 11 * row),
                ha="right" if flip else "left",
                textcoords="offset points",
                fontsize=7,
                color=_COLORS.get(t["to"], "tab:gray"),
                annotation_clip=False,
            )
        top.set_xlim(0, duration)
        top.set_ylim(0, 1)
        top.set_ylabel(f"share of requests per {data['report_interval']:g} s window")
        strip = 11 * (max(rows) + 1 if rows else 0)
        top.set_title(f"{data['scenario']} (seed {data['seed']})", pad=12 + strip)
        handles, labels = top.get_legend_handles_labels()
        if data.get("faults"):
            from matplotlib.patches import Patch

            handles.append(Patch(facecolor="none", edgecolor="tab:red", hatch="//", lw=0))
            labels.append("fault window")
        top.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        bottom.step(edges, rate, where="post", color="tab:blue", label="requests/s")
        bottom.step(edges, error_rate, where="post", color="black", label="errors/s")
        bottom.set_ylim(bottom=0)
        bottom.set_ylabel("rate (/s)")
        bottom.set_xlabel("virtual time (s)")
        bottom.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
