"""After the run: failovers (fail, detect, drain) and the verdict on each expectation.

A failover is measured against ground truth the simulator knows and a real LB does not: the
timeline says when an endpoint started failing; the recorded health events say when the
engine noticed (the first aggregate transition to unhealthy); the traffic tallies say when
steering stopped sending it requests (drained: the end of the last tick with a first attempt
to it before it recovered).  A failure that never stops traffic (a partition seen from one
data center while others still use the endpoint) has ``drained_at`` null.

A ``latency`` fails an endpoint when the proxy gives up on every answer users get from it (the
network's own answers, :meth:`lb.sim.network.Network.answers` with ``user``: the latency an
answer waits for, edge and origin together for the application's, above
``engine.limits.request_timeout``).  So such a failover starts at the event that makes every
answer too slow, whichever it is, and ends at the one that brings one back within (a
``recover`` of either layer, or a smaller ``latency``): :func:`_slow_spans`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lb.sim.network import HANG, Network
from lb.sim.record import Recorder
from lb.sim.scenario import Expectation, NetEvent, Scenario
from lb.sim.spec import FAULTS, TimelineAction, seconds

__all__ = ["Failover", "Verdict", "evaluate", "failovers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """One endpoint failing (by a timeline event) and what the engine and steering did."""

    pool: str
    endpoint: str
    cause: str
    failed_at: float
    detected_at: float | None
    drained_at: float | None
    recovered_at: float | None
    answered_at: float | None = None
    """The end of the last tick, before recovery, in which the endpoint answered a request
    steered to it (its connection did not fail); with zero-downtime retries it stops
    answering at once while steering still picks it until detection."""

    def as_json(self) -> dict[str, object]:
        """The JSON form (``docs/simulate.md``)."""
        return {
            "pool": self.pool,
            "endpoint": self.endpoint,
            "cause": self.cause,
            "failed_at": _r(self.failed_at),
            "detected_at": _r(self.detected_at),
            "drained_at": _r(self.drained_at),
            "answered_at": _r(self.answered_at),
            "recovered_at": _r(self.recovered_at),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """An expectation with its measured value and whether it held."""

    name: str
    ok: bool
    measured: float | None
    detail: str

    def as_json(self) -> dict[str, object]:
        """The JSON form (``docs/simulate.md``)."""
        measured = None if self.measured is None else _r(self.measured)
        return {"name": self.name, "ok": self.ok, "measured": measured, "detail": self.detail}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


_BROKEN = (TimelineAction.FLAP, TimelineAction.RESET, TimelineAction.TRUNCATE)


def _fails(e: NetEvent) -> bool:
    """Whether ``e`` makes its endpoint fail for users: a fault, a broken answer or a 5xx
    status (a ``latency`` fails it by the sum it makes: :func:`_slow_spans`)."""
    if e.action in FAULTS or e.action in _BROKEN:
        return True
    return e.action == TimelineAction.STATUS and e.status >= 500


def _slow_spans(scenario: Scenario) -> list[tuple[str, float, float | None, str]]:
    """``(address, start, end, cause)`` for every span in which a ``latency`` makes the proxy
    give up on every answer of an address; ``end`` None when it lasts to the end of the run.

    "Slow" is the network's own answer to a user (:meth:`lb.sim.network.Network.answers`
    with ``user``, the one rule of the request timeout), asked where users ask: from each
    data center with traffic, for its host (or the endpoint's Host) and path.  Every answer
    the edge may give there is the proxy's 524, and a latency played a part (an answer the
    network gives in time is one the proxy gave up on).  So an answer that never reaches the
    application (an ``http_status`` ingress rule, an edge ``status``) is not slowed by the
    application's latency, and a replica the edge skips (refused, down) is not one users can
    be answered by.  The answers change only at the address's events, so they are read just
    after each."""
    network = Network(scenario)
    times: dict[str, set[float]] = {}
    for e in scenario.events:
        times.setdefault(e.address, set()).add(e.at)
    askers = _askers(scenario)
    out: list[tuple[str, float, float | None, str]] = []
    for address in sorted(times):
        if not any(
            e.action == TimelineAction.LATENCY and e.address == address for e in scenario.events
        ):
            continue
        start: float | None = None
        cause = ""
        for t in sorted(times[address]):
            slow = any(_slow(network, address, *who, t) for who in askers.get(address, ()))
            if slow and start is None:
                start = t
                cause = " + ".join(e.label for e in network.latency_events(address, t))
            elif not slow and start is not None:
                out.append((address, start, t, cause))
                start = None
        if start is not None:
            out.append((address, start, None, cause))
    return out


def _askers(scenario: Scenario) -> dict[str, list[tuple[str, str, str]]]:
    """Per endpoint address, the ``(data center, host, path)`` users' requests to it may
    carry: each data center with traffic, with the endpoint's Host header if it has one
    (as :class:`lb.sim.traffic.DatacenterTraffic` sends them)."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for tr in scenario.traffic:
        for pool in scenario.config.pools:
            for o in pool.origins:
                address = o.address.lower().rstrip(".")
                who = (tr.datacenter, o.host_header or tr.host, tr.path)
                if who not in out.setdefault(address, []):
                    out[address].append(who)
    return out


def _slow(network: Network, address: str, dc: str, host: str, path: str, t: float) -> bool:
    """Whether the proxy gives up, for a latency, on every answer users entering at ``dc``
    get from ``address`` at ``t``."""
    answers = network.answers(address, (dc,), dc, host, path, t, user=True)
    if not all(a.failure == HANG for a in answers):
        return False
    given = network.answers(address, (dc,), dc, host, path, t)
    return any(a.failure != HANG for a in given)


def failovers(scenario: Scenario, rec: Recorder) -> list[Failover]:
    """Every endpoint failure the timeline causes, measured (see the module docstring)."""
    by_address: dict[str, list[tuple[str, str]]] = {}
    for p in scenario.config.pools:
        for o in p.origins:
            by_address.setdefault(o.address.lower().rstrip("."), []).append((p.name, o.name))
    out: list[Failover] = []
    for e in scenario.events:
        every = {r.name for r in scenario.replicas.get(e.address, ())}
        if not _fails(e) or set(e.replicas) != every:
            continue
        back = _recovery(scenario.events, e)
        for pool, name in by_address.get(e.address, []):
            out.append(_measure(scenario, rec, pool, name, e.label, e.at, back, monitored=True))
    for address, start, end, cause in _slow_spans(scenario):
        for pool, name in by_address.get(address, []):
            out.append(_measure(scenario, rec, pool, name, cause, start, end, monitored=True))
    for c in scenario.changes:
        if c.action != TimelineAction.DISABLE:
            continue
        back = next(
            (
                x.at
                for x in scenario.changes
                if x.at > c.at
                and x.action == TimelineAction.ENABLE
                and x.pool == c.pool
                and x.endpoint == c.endpoint
            ),
            None,
        )
        origins = scenario.config.pool(c.pool).origins
        names = [c.endpoint] if c.endpoint else [o.name for o in origins]
        for name in names:
            assert name is not None
            out.append(_measure(scenario, rec, c.pool, name, c.label, c.at, back, monitored=False))
    return sorted(out, key=lambda f: (f.failed_at, f.pool, f.endpoint, f.cause))


def _recovery(events: tuple[NetEvent, ...], e: NetEvent) -> float | None:
    for x in events:
        if (
            x.at > e.at
            and x.action == TimelineAction.RECOVER
            and x.address == e.address
            and x.layer == e.layer
            and set(e.replicas) <= set(x.replicas)
            and (not x.scope or x.scope == e.scope)
        ):
            return x.at
    return None


def _measure(
    scenario: Scenario,
    rec: Recorder,
    pool: str,
    name: str,
    cause: str,
    failed: float,
    back: float | None,
    *,
    monitored: bool,
) -> Failover:
    tick = scenario.tick
    until = back if back is not None else scenario.duration
    detected = rec.went_unhealthy(pool, name, failed) if monitored else failed
    if detected is not None and detected >= until:
        detected = None
    k_fail, k_until = int(failed / tick + 1e-9), math.ceil(until / tick - 1e-9)
    end_of_run = math.ceil(scenario.duration / tick - 1e-9)

    def last_of(runs: list[list[int]]) -> float | None:
        last = k_fail
        for start, end in runs:
            if end > k_fail and start < k_until:
                last = max(last, end)
        if last >= k_until and (back is not None or last >= end_of_run):
            return None
        return max(failed, last * tick)

    key = f"{pool}/{name}"
    drained = last_of(rec.active_ticks(key))
    answered = last_of(rec.answered_ticks(key))
    return Failover(
        pool=pool,
        endpoint=name,
        cause=cause,
        failed_at=failed,
        detected_at=detected,
        drained_at=drained,
        recovered_at=back,
        answered_at=answered,
    )


def evaluate(
    scenario: Scenario, rec: Recorder, found: list[Failover], probes: int
) -> list[Verdict]:
    """The verdict on every expectation, in file order."""
    return [
        _verdict(x, i, scenario, rec, found, probes) for i, x in enumerate(scenario.expectations)
    ]


def _bounds(x: Expectation, value: float, unit: str = "") -> Verdict:
    ok = (x.at_least is None or value >= x.at_least - 1e-12) and (
        x.at_most is None or value <= x.at_most + 1e-12
    )
    bounds = []
    if x.at_least is not None:
        bounds.append(f">= {x.at_least:g}")
    if x.at_most is not None:
        bounds.append(f"<= {x.at_most:g}")
    shown = f"{value:.4f}" if x.kind == "share" else f"{value:g}"
    detail = f"measured {shown}{unit}, bound {' and '.join(bounds)}"
    return Verdict(name=x.name, ok=ok, measured=value, detail=detail)


def _verdict(
    x: Expectation, i: int, scenario: Scenario, rec: Recorder, found: list[Failover], probes: int
) -> Verdict:
    if x.kind == "share":
        tally = rec.tallies[i]
        if tally.den == 0:
            return Verdict(name=x.name, ok=False, measured=None, detail="no requests in range")
        return _bounds(x, tally.num / tally.den)
    if x.kind in ("requests", "errors"):
        return _bounds(x, float(rec.tallies[i].num))
    if x.kind == "sessions_broken":
        return _bounds(x, float(rec.affinity.get("broken", 0)))
    if x.kind == "sessions_dropped":
        dropped = rec.long_sessions.dropped
        n = sum(
            v
            for k, v in dropped.items()
            if (not x.pool or k.split("/", 1)[0] == x.pool) and (not x.endpoint or k == x.endpoint)
        )
        return _bounds(x, float(n))
    if x.kind == "probes":
        return _bounds(x, float(probes))
    if x.kind == "transitions":
        count = sum(
            1
            for tr in rec.transitions
            if tr.vantage == "*"
            and (not x.pool or tr.pool == x.pool)
            and (not x.endpoint or f"{tr.pool}/{tr.endpoint}" == x.endpoint)
        )
        return _bounds(x, float(count))
    return _delay(x, found)


def _delay(x: Expectation, found: list[Failover]) -> Verdict:
    """``drained`` / ``detected``: every failure of the endpoint handled within the bound."""
    assert x.within is not None
    mine = [f for f in found if f"{f.pool}/{f.endpoint}" == x.endpoint]
    if not mine:
        return Verdict(
            name=x.name, ok=False, measured=None, detail="the timeline never fails this endpoint"
        )
    worst = 0.0
    for f in mine:
        at = f.drained_at if x.kind == "drained" else f.detected_at
        if at is None:
            what = "never drained" if x.kind == "drained" else "never detected"
            detail = (
                f"{what} after failing at {seconds(f.failed_at)} ({f.cause}); "
                f"bound {seconds(x.within)}"
            )
            return Verdict(name=x.name, ok=False, measured=None, detail=detail)
        worst = max(worst, at - f.failed_at)
    ok = worst <= x.within + 1e-9
    return Verdict(
        name=x.name,
        ok=ok,
        measured=worst,
        detail=f"measured {seconds(worst)}, bound {seconds(x.within)}",
    )
