"""Timeouts the scenario does not explain: the real stack held back by its machine.

Why a rule of its own
=====================

:attr:`lb.rehearse.Rehearsal.behind` measures the rehearsal's own process (the traffic) and
``lag`` the timeline's POSTs and reloads; neither sees the LB and the stand-ins, which do
most of the work.  On a two-core machine with a load average of 13 to 19, the driver ran
at most 0.18 to 0.97 s behind in ``retry-on-truncated`` (under half of its 2 s window:
judged), while the LB, its CPU share below what 50 requests a second need, answered in 0.5
to 1.5 s instead of 2 ms: the probes of every endpoint timed out (0.4 s at speed 5), the
pool went critical within 3 s, passive health had nothing to eject, and hundreds of cut
responses reached users.  One check that times out is enough to move a point: passive
health puts an ejected endpoint back at its first passing check after the ejection time,
so a check of that endpoint that times out then keeps it out, and its drain is measured
seconds early (``docs/rehearse.md``, "A busy machine").

The simulator has no CPU: its probes and requests time out only where the timeline makes an
answer hang or wait (``blackhole``, ``latency``, an ``unreachable`` or ``partition``, a flap
of those).  So a probe or a request that timed out at an endpoint, or at an instant, the
scenario does not make hang is the machine's doing or the stack's own: which one, the
kernel says (:func:`cpu_times`).  When the LB and the stand-ins waited for a CPU at least
as long as they ran, the machine held them back, and the comparison of that run says
nothing of the simulator: it is inconclusive, like a run that fell behind
(:attr:`lb.rehearse.Rehearsal.held_back`).  A stack that timed out while barely waiting
did so by itself, and is judged.  Timeouts while the scenario makes the endpoint hang are
compared as they are, even when the machine may have added some: the rule never excuses
the fault's own timeouts, so a simulator wrong about them is still caught.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lb.sim.scenario import Scenario
from lb.sim.spec import TimelineAction

__all__ = [
    "PROBE_TIMEOUTS",
    "TIMEOUT_STATUSES",
    "cpu_times",
    "hang_spans",
    "probe_timeouts",
    "unexplained",
    "user_timeouts",
]

_HANGS = frozenset(
    {
        TimelineAction.BLACKHOLE,
        TimelineAction.LATENCY,
        TimelineAction.UNREACHABLE,
        TimelineAction.PARTITION,
    }
)
"""Faults after which an answer may not come in time, in the simulator too."""

PROBE_TIMEOUTS = ("TCP timeout", "HTTP timeout occurred")
"""The failure reasons of a check that got nothing back in time (``monitors.reasons``)."""

TIMEOUT_STATUSES = frozenset({522, 524})
"""The proxy's answers when an endpoint did not answer in time (connect, response)."""


def hang_spans(sc: Scenario) -> dict[str, list[tuple[float, float]]]:
    """``pool/endpoint`` -> the spans of the timeline (scenario seconds) in which an answer
    of it may not come in time: from each event that can make it hang (any layer, any
    replica; a flap of such a fault from its start) to the next ``recover`` of that address
    (any layer), or to the end.  Wide on purpose: the rule stays on the side of judging."""
    spans: dict[str, list[tuple[float, float]]] = {}
    events = sorted(sc.events, key=lambda e: (e.at, e.index))
    for i, e in enumerate(events):
        if not (e.action in _HANGS or (e.action == TimelineAction.FLAP and e.how in _HANGS)):
            continue
        end = next(
            (
                x.at
                for x in events[i + 1 :]
                if x.address == e.address and x.action == TimelineAction.RECOVER
            ),
            math.inf,
        )
        spans.setdefault(e.address, []).append((e.at, end))
    return {
        f"{p.name}/{o.name}": spans[o.address.lower().rstrip(".")]
        for p in sc.config.pools
        for o in p.origins
        if o.address.lower().rstrip(".") in spans
    }


def _explained(spans: list[tuple[float, float]], begun: float, ended: float) -> bool:
    """Whether something that ran from ``begun`` to ``ended`` met a span of ``spans``."""
    return any(start <= ended and begun <= end for start, end in spans)


_SERIES = re.compile(r"^lb_probes_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def probe_timeouts(metrics: str) -> dict[str, int]:
    """``pool/endpoint`` -> checks that timed out, from the LB's ``lb_probes_total`` (a
    Prometheus text exposition)."""
    out: dict[str, int] = {}
    for line in metrics.splitlines():
        found = _SERIES.match(line)
        if found is None:
            continue
        labels = dict(_LABEL.findall(found["labels"]))
        if labels.get("reason") not in PROBE_TIMEOUTS:
            continue
        count = int(float(found["value"]))
        if count:
            key = f"{labels.get('pool', '')}/{labels.get('endpoint', '')}"
            out[key] = out.get(key, 0) + count
    return out


def user_timeouts(
    lines: Iterable[Mapping[str, Any]], zero: float, duration: float
) -> list[tuple[str, float, float]]:
    """``(pool/endpoint, received, answered)`` (seconds after time 0, ``zero`` on the
    ``mono`` clock) of every request the LB received during the scenario whose attempt at
    that endpoint timed out (:data:`TIMEOUT_STATUSES`), from its access-log lines."""
    out: list[tuple[str, float, float]] = []
    for line in lines:
        if line.get("event") != "request" or line.get("status") not in TIMEOUT_STATUSES:
            continue
        endpoint = line.get("endpoint")
        answered = float(line.get("mono") or 0.0) - zero
        received = answered - float(line.get("duration") or 0.0)
        if isinstance(endpoint, str) and endpoint and 0.0 <= received <= duration:
            out.append((endpoint, received, answered))
    return out


def unexplained(
    sc: Scenario,
    probes: Mapping[str, int],
    users: Iterable[tuple[str, float, float]],
    transitions: Iterable[Mapping[str, Any]] = (),
) -> str:
    """The timeouts the scenario does not explain, in words ("" when none): ``2 probes of
    app/a, 12 requests to app/c``.

    A timed-out check counts when it changed what the LB did: from ``transitions`` (the
    real report's, with ``at``, ``pool``, ``endpoint``, ``vantage``, ``to``, ``reason``), one
    that turned an endpoint unhealthy, unless a span of :func:`hang_spans` had begun by
    then (a span is taken to last one probe interval past its recovery: a check sent just
    before may still time out); from ``probes`` (the LB's count per endpoint, no instant),
    every one at an endpoint that passive health covers and the timeline never makes hang
    (a failed check keeps an ejected endpoint out, with no transition to show it).  A check
    that timed out and changed nothing (one of ``consecutive_down``) is left alone.  Each of
    ``users`` (:func:`user_timeouts`) counts unless it met a span."""
    spans = hang_spans(sc)
    grace = max((m.interval for m in sc.config.monitors), default=0.0)
    passive = {
        f"{p.name}/{o.name}" for p in sc.config.pools if sc.config.passive(p) for o in p.origins
    }
    held = {e: n for e, n in probes.items() if n and e in passive and e not in spans}
    counted = set(held)
    for t in transitions:
        if t.get("to") != "unhealthy" or t.get("reason") not in PROBE_TIMEOUTS:
            continue
        if t.get("vantage") in ("*", "passive"):
            continue  # the combined view repeats a vantage point's transition
        endpoint = f"{t.get('pool')}/{t.get('endpoint')}"
        at = float(t.get("at") or 0.0)
        mine = [(start, end + grace) for start, end in spans.get(endpoint, [])]
        if endpoint not in counted and not _explained(mine, at, at):
            held[endpoint] = held.get(endpoint, 0) + 1
    requests: dict[str, int] = {}
    for endpoint, received, answered in users:
        if not _explained(spans.get(endpoint, []), received, answered):
            requests[endpoint] = requests.get(endpoint, 0) + 1
    parts = [
        f"{n} {what}{'' if n == 1 else 's'} {to} {endpoint}"
        for what, to, counts in (("probe", "of", held), ("request", "to", requests))
        for endpoint, n in sorted(counts.items())
    ]
    return ", ".join(parts)


def cpu_times(pids: Iterable[int], proc: Path = Path("/proc")) -> tuple[float, float] | None:
    """Seconds the processes ``pids`` (every thread) have run on a CPU and waited, runnable,
    for one (Linux's ``/proc/PID/task/TID/schedstat``), summed; None where the kernel does
    not say (another system, or a process gone).

    The wait is the machine's doing and nothing else's: a process waiting for a socket or a
    timer is not runnable.  So a stack that waited as long as it ran had half the CPU it
    asked for, and one that timed out while barely waiting did so by itself."""
    ran = waited = 0.0
    try:
        for pid in pids:
            for task in (proc / str(pid) / "task").iterdir():
                fields = (task / "schedstat").read_text("ascii").split()
                ran += int(fields[0]) / 1e9
                waited += int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return ran, waited
