"""The real run's report, in the simulator's shape, from what the processes logged.

Every request the driver sent is joined, by its ``X-Request-Id``, with the LB's access-log
line for it (its attempts, the endpoint that answered, the retry, the status the client got),
and counted in the tick in which the *LB received it* (the line's ``mono`` minus its
``duration``; the driver's send time only when no line came), per entry data center, exactly
as the simulator counts its batches.  The LB's time is the one that matters: a client that
falls behind its schedule on a busy machine must not move a request into another window.
The counts are then folded by the simulator's own :class:`~lb.sim.record.Recorder`, and the
failovers and expectations are measured by :mod:`lb.sim.expect`, so one report schema
(``docs/simulate.md``) describes both runs.

Health transitions come from the LB's ``health_transition`` lines; their ``mono`` field is
``time.monotonic()``, the clock the driver noted at the start, so both time bases align
without trusting the wall clock.  A request with no access-log line (the client gave up, or
its connection failed) counts as an error on no endpoint.  ``by_replica`` counts the
requests an edge stand-in (:mod:`lb.rehearse.edge`) answered through each replica, joined by
the same request id; tunnels with one replica have no edge and are not counted.  A ``status``
of the whole tunnel that the edge stand-in handed over to a replica's connector is still
the edge's own answer, as in the simulator: the edge stand-in records no replica for it
(:mod:`lb.rehearse.edge`), so it is counted for none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lb.rehearse.drive import Sent
from lb.sim.expect import evaluate, failovers
from lb.sim.record import Recorder, Transition
from lb.sim.report import Report, build_report
from lb.sim.scenario import Scenario
from lb.sim.traffic import TrafficCounts

__all__ = ["log_lines", "real_report"]


def log_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a log file (other lines skipped)."""
    for line in path.read_text("utf-8", "replace").splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


_NO_ANSWER = frozenset({521, 522, 523, 524})
"""What the proxy answers when the endpoint did not: its connection failed (521-523), or
no response came on a kept-alive connection before the timeout (524)."""


def _add(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def real_report(
    sc: Scenario,
    sent: dict[str, Sent],
    log: Path,
    mono: float,
    probes: int = 0,
    replicas: dict[str, str] | None = None,
) -> Report:
    """Build the report of a real run (see the module docstring); ``replicas`` maps a
    request id to the replica label an edge stand-in sent it to (``by_replica``)."""
    replicas = replicas or {}
    requests: dict[str, dict[str, Any]] = {}
    rec = Recorder(sc, 0.0)
    for line in log_lines(log):
        event = line.get("event")
        if event == "request" and isinstance(line.get("request_id"), str):
            requests[line["request_id"]] = line
        elif event == "health_transition":
            rec.transitions.append(
                Transition(
                    at=round(float(line["mono"]) - mono, 3),
                    pool=line["pool"],
                    endpoint=line["endpoint"],
                    vantage=line["vantage"],
                    before=line["before"],
                    after=line["after"],
                    reason=line.get("reason", ""),
                )
            )
    rec.transitions.sort(key=lambda tr: tr.at)
    tick = sc.tick
    ticks = max(1, math.ceil(sc.duration / tick - 1e-9))
    dcs = [t.datacenter for t in sc.traffic]
    counts: list[dict[str, TrafficCounts]] = [
        {dc: TrafficCounts() for dc in dcs} for _ in range(ticks)
    ]
    for rid, s in sent.items():
        logged = requests.get(rid)
        at = s.at
        if logged is not None and "mono" in logged:
            at = float(logged["mono"]) - float(logged.get("duration") or 0.0) - mono
        k = min(ticks - 1, max(0, int(at / tick)))
        c = counts[k][s.datacenter]
        c.requests += 1
        if rid in replicas:
            _add(c.replicas, replicas[rid])
        if logged is None:
            _add(c.errors, "")
            c.statuses[s.status] = c.statuses.get(s.status, 0) + 1
            continue
        attempts = [a for a in logged.get("attempts") or [] if isinstance(a, str)]
        final = logged.get("endpoint") or ""
        status = int(logged.get("status") or 0)
        if attempts:
            first = attempts[0]
            _add(c.first, first)
            failover = logged.get("retried") == "zero_downtime_failover"
            connect_failed = failover or (len(attempts) == 1 and status in _NO_ANSWER)
            rec.mark(first, k, not connect_failed)
            if failover:
                c.retries += 1
                _add(c.moved_from, first)
                _add(c.moved_to, final)
            elif logged.get("retried") == "retry_on":
                c.retry_on += len(logged.get("retry_on") or [None])
                if final != first:  # moved to another endpoint (docs/semantics.md)
                    _add(c.moved_from, first)
                    _add(c.moved_to, final)
            elif logged.get("retried"):
                c.stale_retries += 1
        elif status == 530:
            c.unrouted += 1
        if status != 200:
            c.statuses[status] = c.statuses.get(status, 0) + 1
            if status >= 500 or status == 0:
                _add(c.errors, final if attempts else "")
    for k, per_dc in enumerate(counts):
        rec.fold(k * tick, [(dc, per_dc[dc]) for dc in dcs])
    found = failovers(sc, rec)
    verdicts = evaluate(sc, rec, found, probes)
    return build_report(rec, found, verdicts, probes)
