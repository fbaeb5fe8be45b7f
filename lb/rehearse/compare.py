"""Where the real run falls in the simulator's spread.

Why a band and not a tolerance
==============================

Two seeds of the simulator differ by more than any fixed tolerance in a good share of
windows, so "within 2 pp" is the wrong test.  The honest one: run the simulator with N seeds
on the same (scaled) scenario and ask, point by point, whether the real value lies within the
5-95 % band of the simulated ones.  A point is

* per report window: each pool's share of the window's requests, and the window's errors;
* per failover: detection, last-answer and drain delays (``detected_at``, ``answered_at``,
  ``drained_at`` minus ``failed_at``).

The band is widened by what no seed can show: the measurement's grain (one request for shares
and error counts, one tick for delays) and ``lag``, how late the real run's timeline events
took effect (a fault is dated and enacted by its stand-in at its instant unless its POST
arrives after it; a configuration change is a reload, answered a good part of a second
late on a busy machine, while the simulator applies both at their exact instant): delays
get ``lag`` more, a window's counts the requests of ``lag`` seconds more.  Both also get
``cost``, how long the slowest real probe took (a TLS exchange, the first with a handshake,
on a loaded machine, where the scaled simulation has a scaled round trip of a few
milliseconds): a health transition that late moves the requests of that many seconds.  A
window's counts also get the requests of ``behind`` seconds more, how late the driver sent a
request after its scheduled instant: a request sent that late can meet the state of that
much later (the delays are the LB's probes', which the driver's lateness does not move).

The real run is also one seed: ``tunnel-lb run --seed S`` probes on the schedule of
``simulate --seed S`` (``monitors.scheduler.probe_rng``, both counted from the schedule's
start), so the simulation with the real run's own seed, the *replay*, is the simulator's
prediction of this very run.  A point that lies outside the band but on its replay (within
the same widening) is inside: the real run drew an extreme seed, and the simulator predicted
it.  Without that, a scenario whose seed happens to sit in a tail would fail every time, and
the three delays of one failover, which move together, would count three times.

The rehearsal fails when more than 5 % of the points fall outside their band.  Most windows
are steady (every seed agrees, the band is one value), so a correct simulator leaves very few
points outside; a wrong one moves whole stretches of windows and the failover delays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["OUTSIDE_LIMIT", "Point", "compare", "outside_share", "percentile"]

OUTSIDE_LIMIT = 0.05
"""The share of points that may fall outside their band."""


def _finite(x: float | None) -> float | None:
    """JSON has no infinity: None stands for "never"."""
    return None if x is None or math.isinf(x) or math.isnan(x) else round(x, 6)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    if xs[lo] == xs[hi]:
        return xs[lo]  # also when both are inf (inf - inf is nan)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Point:
    """One compared value."""

    name: str
    real: float | None
    low: float
    median: float
    high: float
    rank: float
    """Share of simulated values at or below the real one (0..1)."""
    inside: bool
    replay: float | None = math.nan
    """The value of the simulation with the real run's seed (nan: no replay)."""

    def as_json(self) -> dict[str, object]:
        """The JSON form (``docs/rehearse.md``)."""
        return {
            "name": self.name,
            "real": _finite(self.real),
            "p5": _finite(self.low),
            "median": _finite(self.median),
            "p95": _finite(self.high),
            "replay": _finite(self.replay),
            "rank": round(self.rank, 3),
            "inside": self.inside,
        }


def _point(
    name: str,
    real: float | None,
    sims: list[float | None],
    slack: float,
    replay: tuple[float | None, ...] = (),
) -> Point | None:
    """None (never: a failover never detected or drained) counts as later than any time;
    ``replay`` holds the replay's value, if there is one."""
    if real is None and all(v is None for v in sims):
        return None  # neither side had it
    values = [math.inf if v is None else v for v in sims]
    mine = math.inf if real is None else real
    low, high = percentile(values, 0.05), percentile(values, 0.95)
    rank = sum(1 for v in values if v <= mine + 1e-12) / len(values)
    inside = low - slack - 1e-9 <= mine <= high + slack + 1e-9
    shown: float | None = math.nan
    for shown in replay:
        again = math.inf if shown is None else shown
        inside = inside or again == mine or abs(again - mine) <= slack + 1e-9
    return Point(name, real, low, percentile(values, 0.5), high, rank, inside, shown)


def _window_values(w: dict[str, Any], pools: list[str]) -> dict[str, float]:
    out: dict[str, float] = {"errors": float(w["errors"])}
    total = w["requests"]
    if total:
        for p in pools:
            out[f"share {p}"] = w["by_pool"].get(p, 0) / total
    return out


def _delay(f: dict[str, Any], key: str) -> float | None:
    at = f.get(key)
    return None if at is None else float(at) - float(f["failed_at"])


def compare(
    real: dict[str, Any],
    sims: list[dict[str, Any]],
    pools: list[str],
    *,
    lag: float = 0.0,
    cost: float = 0.0,
    behind: float = 0.0,
    replay: dict[str, Any] | None = None,
) -> list[Point]:
    """Every point of ``real`` against the same point of each simulated report, and of
    ``replay`` (the simulation with the real run's seed) when given; ``cost`` is the slowest
    real probe's duration, which widens like ``lag``; ``behind`` (how late the driver sent a
    request) widens the windows' counts alone."""
    points: list[Point] = []
    tick = float(real["tick"]) + lag + cost
    for i, w in enumerate(real["windows"]):
        mine = _window_values(w, pools)
        theirs = [_window_values(s["windows"][i], pools) for s in sims if i < len(s["windows"])]
        again: dict[str, float] | None = None
        if replay is not None and i < len(replay["windows"]):
            again = _window_values(replay["windows"][i], pools)
        label = f"window {w['start']:g}-{w['end']:g}s"
        total = w["requests"] or 1
        # A late event or probe moves the outcome of the requests of that long, besides one.
        late = lag + cost + behind
        moved = 1.0 + w["requests"] * late / max(w["end"] - w["start"], 1e-9)
        for key, value in mine.items():
            slack = moved if key == "errors" else moved / total
            replayed: tuple[float | None, ...] = () if again is None else (again.get(key),)
            p = _point(f"{label} {key}", value, [t.get(key) for t in theirs], slack, replayed)
            if p is not None:
                points.append(p)
    for j, f in enumerate(real["failovers"]):
        same = [s["failovers"][j] for s in sims if j < len(s["failovers"])]
        mirror = None
        if replay is not None and j < len(replay["failovers"]):
            mirror = replay["failovers"][j]
        label = f"failover {f['pool']}/{f['endpoint']} at {f['failed_at']:g}s"
        for key, word in (
            ("detected_at", "detected"),
            ("answered_at", "answered"),
            ("drained_at", "drained"),
        ):
            replayed = () if mirror is None else (_delay(mirror, key),)
            delay = _delay(f, key)
            p = _point(f"{label} {word}", delay, [_delay(s, key) for s in same], tick, replayed)
            if p is not None:
                points.append(p)
    return points


def outside_share(points: Sequence[Point]) -> float:
    """The share of points outside their band (0 without points)."""
    return sum(1 for p in points if not p.inside) / len(points) if points else 0.0
