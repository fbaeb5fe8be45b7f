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
scenario does not make hang (:func:`unexplained`) is the machine's doing or the stack's
own, and the kernel tells which only within that timeout's own window: a timeout is the
machine's when the LB or the endpoint's stand-in waited, runnable, for a CPU at least half
of it (:func:`held`, from readings of :func:`cpu_times` every fraction of a second).  A run
averaged whole would not do: on a two-core machine the stack waits longer than it runs in
runs that pass, and such a rule would excuse any timeout, a real bug's too.  When every
timeout of a run is the machine's, its comparison says nothing of the simulator:
inconclusive, like a run that fell behind (:attr:`lb.rehearse.Rehearsal.held_back`); one
that is not is judged.  An LB that blocks its event loop is *running*, not waiting, so it
is judged, unless the machine held it back in the same windows too.  Timeouts while the
scenario makes the endpoint hang are compared as they are: the rule never excuses the
fault's own timeouts, so a simulator wrong about them is still caught.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb.sim.scenario import NetEvent, Scenario
from lb.sim.spec import TimelineAction
from monitors.reasons import TIMEOUTS

__all__ = [
    "HELD_SHARE",
    "TIMEOUT_STATUSES",
    "Samples",
    "Snapshot",
    "Timeout",
    "cpu_times",
    "hang_spans",
    "held",
    "in_words",
    "probe_timeouts",
    "spent",
    "unexplained",
    "user_timeouts",
    "wait_between",
    "waited",
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

TIMEOUT_STATUSES = frozenset({522, 524})
"""The proxy's answers when an endpoint did not answer in time (connect, response)."""


def hang_spans(sc: Scenario) -> dict[str, list[tuple[float, float]]]:
    """``pool/endpoint`` -> the spans of the timeline (scenario seconds) in which an answer
    of it may not come in time: from each event that can make it hang (any layer, any
    replica; a flap of such a fault from its start) to the next ``recover`` that clears it
    (:func:`_recovers`), or to the end."""
    spans: dict[str, list[tuple[float, float]]] = {}
    events = sorted(sc.events, key=lambda e: (e.at, e.index))
    for i, e in enumerate(events):
        if not (e.action in _HANGS or (e.action == TimelineAction.FLAP and e.how in _HANGS)):
            continue
        end = next(
            (x.at for x in events[i + 1 :] if x.address == e.address and _recovers(x, e)),
            math.inf,
        )
        spans.setdefault(e.address, []).append((e.at, end))
    return {
        f"{p.name}/{o.name}": spans[o.address.lower().rstrip(".")]
        for p in sc.config.pools
        for o in p.origins
        if o.address.lower().rstrip(".") in spans
    }


def _recovers(x: NetEvent, e: NetEvent) -> bool:
    """Whether ``x`` is a ``recover`` that clears fault ``e`` (of the same address) as the
    simulator's tracks do (one per address, replica and layer; a recover clears its own
    scope, or every condition when it has none: :func:`lb.sim.network.conditions_after`):
    of ``e``'s layer, naming every replica ``e`` names (a ``tunnel:`` target names them
    all).  A fault cleared piecewise by recovers of some replicas each keeps its span to
    the end: a longer span excuses nothing (it only compares more as the fault's)."""
    return (
        x.action == TimelineAction.RECOVER
        and x.layer == e.layer
        and set(e.replicas) <= set(x.replicas)
        and (not x.scope or x.scope == e.scope)
    )


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
        if labels.get("reason") not in TIMEOUTS:
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


@dataclass(frozen=True, slots=True)
class Timeout:
    """A probe or a request that timed out where the scenario does not make it hang, and
    the window (scenario seconds) in which the machine may have held it back."""

    endpoint: str
    what: str
    """``probe`` or ``request``."""
    begun: float
    ended: float


def unexplained(
    sc: Scenario,
    probes: Iterable[tuple[str, float, float, int]],
    users: Iterable[tuple[str, float, float]],
    transitions: Iterable[Mapping[str, Any]] = (),
) -> list[Timeout]:
    """The timeouts the scenario does not explain, each with its window.

    A timed-out check counts when it changed what the LB did: from ``transitions`` (the
    real report's, with ``at``, ``pool``, ``endpoint``, ``vantage``, ``to``, ``reason``), one
    that turned an endpoint unhealthy, unless a span of :func:`hang_spans` had begun by
    then (a span is taken to last one probe interval past its recovery: a check sent just
    before may still time out); its window is the probe timeout before it.  From ``probes``
    (``(pool/endpoint, after, by, n)``: ``n`` checks that timed out between two readings of
    the LB's counter, :func:`probe_timeouts`), every one at an endpoint that passive health
    ejected in the real run (a ``passive`` transition) and the timeline never makes hang: a
    failed check keeps an ejected endpoint out, with no transition to show it; its window
    runs from a probe timeout before ``after`` to ``by``.  A check that timed out and
    changed nothing (one of ``consecutive_down``) is left alone.  Each of ``users``
    (:func:`user_timeouts`) counts unless it met a span, its window its own."""
    spans = hang_spans(sc)
    grace = max((m.interval for m in sc.config.monitors), default=0.0)
    timeout = max((m.timeout for m in sc.config.monitors), default=0.0)
    transitions = list(transitions)
    ejected = {
        f"{t.get('pool')}/{t.get('endpoint')}"
        for t in transitions
        if t.get("vantage") == "passive" and t.get("to") == "unhealthy"
    }
    passive = {
        f"{p.name}/{o.name}" for p in sc.config.pools if sc.config.passive(p) for o in p.origins
    }
    kept = passive & ejected - set(spans)
    out: list[Timeout] = []
    for endpoint, after, by, n in probes:
        if endpoint in kept:
            out += [Timeout(endpoint, "probe", after - timeout, by)] * n
    for t in transitions:
        if t.get("to") != "unhealthy" or t.get("reason") not in TIMEOUTS:
            continue
        if t.get("vantage") in ("*", "passive"):
            continue  # the combined view repeats a vantage point's transition
        endpoint = f"{t.get('pool')}/{t.get('endpoint')}"
        at = float(t.get("at") or 0.0)
        mine = [(start, end + grace) for start, end in spans.get(endpoint, [])]
        if endpoint not in kept and not _explained(mine, at, at):
            out.append(Timeout(endpoint, "probe", at - timeout, at))
    for endpoint, received, answered in users:
        if not _explained(spans.get(endpoint, []), received, answered):
            out.append(Timeout(endpoint, "request", received, answered))
    return out


def in_words(timeouts: Iterable[Timeout]) -> str:
    """``2 probes of app/a, 12 requests to app/c`` ("" when none)."""
    counts: dict[tuple[str, str], int] = {}
    for t in timeouts:
        counts[t.what, t.endpoint] = counts.get((t.what, t.endpoint), 0) + 1
    return ", ".join(
        f"{n} {what}{'' if n == 1 else 's'} {'of' if what == 'probe' else 'to'} {endpoint}"
        for (what, endpoint), n in sorted(counts.items())
    )


Snapshot = dict[tuple[int, int], tuple[float, float]]
"""``(pid, tid)`` -> seconds that thread has run on a CPU and waited, runnable, for one."""

HELD_SHARE = 0.5
"""The share of a timeout's window a process on its path must have waited for a CPU for the
timeout to be the machine's (:func:`held`)."""


def cpu_times(pids: Iterable[int], proc: Path = Path("/proc")) -> Snapshot:
    """Every thread of the processes ``pids`` and of their children, with the seconds it
    has run on a CPU and waited, runnable, for one (Linux's
    ``/proc/PID/task/TID/schedstat``); empty where the kernel does not say.  A thread or a
    process that ends while it is read is left out (:func:`waited` counts only threads
    present at the end of a span).

    The wait is the machine's doing and nothing else's: a process waiting for a socket or a
    timer is not runnable."""
    out: Snapshot = {}
    todo = list(pids)
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "schedstat").read_text("ascii").split()
                out[pid, int(task.name)] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
                children = task / "children"
                if children.exists():
                    todo += [int(c) for c in children.read_text("ascii").split()]
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between the listing and the read
    return out


def spent(first: Snapshot, last: Snapshot) -> tuple[float, float]:
    """Seconds the threads of ``last`` ran on a CPU and waited for one since ``first`` (a
    thread new since starts at 0; one gone by ``last`` is not counted)."""
    ran = wait = 0.0
    for key, (r, w) in last.items():
        r0, w0 = first.get(key, (0.0, 0.0))
        ran += max(0.0, r - r0)
        wait += max(0.0, w - w0)
    return ran, wait


def waited(first: Snapshot, last: Snapshot) -> float:
    """Seconds the threads of ``last`` waited for a CPU since ``first`` (:func:`spent`)."""
    return spent(first, last)[1]


Samples = list[tuple[float, dict[int, Snapshot]]]
"""Readings at scenario seconds: each process of the stack (by pid) -> :func:`cpu_times`."""


def wait_between(samples: Samples, pid: int, begun: float, ended: float) -> float | None:
    """The most one thread of process ``pid`` (or of one of its children) waited for a CPU
    from ``begun`` to ``ended`` (scenario seconds); None when the readings do not cover the
    span.

    A lower bound, so that a timeout errs towards being judged: only the intervals between
    two readings wholly inside the span count (spreading an interval's wait evenly would
    count wait outside the window inside it), and a thread is taken alone (a sum over
    threads and processes would let many that each waited a little reach the share)."""
    times = [t for t, _ in samples]
    if not samples or begun < times[0] or ended > times[-1] or pid not in samples[0][1]:
        return None
    first = bisect.bisect_left(times, begun)
    last = bisect.bisect_right(times, ended) - 1
    if last <= first:
        return 0.0
    a, b = samples[first][1].get(pid, {}), samples[last][1].get(pid, {})
    return max((max(0.0, w - a.get(key, (0.0, 0.0))[1]) for key, (_, w) in b.items()), default=0.0)


def held(timeout: Timeout, samples: Samples, path: Iterable[int]) -> bool:
    """Whether a thread on ``timeout``'s path (of the LB, of the endpoint's stand-ins)
    waited for a CPU at least :data:`HELD_SHARE` of the timeout's own window
    (:func:`wait_between`): the machine's."""
    need = HELD_SHARE * (timeout.ended - timeout.begun)
    for pid in path:
        w = wait_between(samples, pid, timeout.begun, timeout.ended)
        if w is not None and w >= need:
            return True
    return False
