"""Running a scenario: the LB's own engine, router and monitor scheduler, in virtual time.

What is real and what is swapped
================================

The run builds a :class:`lb.engine.Engine` and a :class:`monitors.scheduler.Scheduler` exactly
as the LB process does, and asks ``engine.router`` for every decision.  Only three things
differ: the clock (``trio.testing.MockClock(autojump_threshold=0)``: time jumps to the next
deadline whenever every task sleeps), the probe transport (:class:`lb.sim.network.SimTransport`)
and the seed of every random stream.

Canonical order
===============

trio wakes same-instant tasks in a random order, so nothing recorded may depend on it.  The
probe scheduler's ``on_result`` only queues results with their arrival time; the traffic task,
at the start of each tick ``t``, applies the results that arrived *before* ``t`` sorted by
(arrival, pool, endpoint, vantage), then the configuration changes due at ``t`` in file order,
then the attempts' outcomes the proxy learned by ``t`` (passive health, in time order:
:class:`lb.sim.traffic.PendingOutcomes`), then the tick's requests, data centers in sorted
order.  The network answers from time alone (:mod:`lb.sim.network`).  A health change
therefore reaches steering at the first tick after the probe that caused it, at most one
tick (100 ms by default) late; health events keep the probe's own time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import trio
import trio.testing

from lb.config.model import Config
from lb.core.health import ProbeResult
from lb.engine import Engine
from lb.sim.cluster import SimCluster
from lb.sim.expect import evaluate, failovers
from lb.sim.network import Network, SimTransport
from lb.sim.record import Recorder
from lb.sim.report import Report, build_report
from lb.sim.scenario import Scenario, config_with
from lb.sim.sessions import DatacenterSessions
from lb.sim.traffic import DatacenterTraffic, InFlight, PendingOutcomes, TrafficCounts, needs_live
from monitors.scheduler import Scheduler, probe_rng
from monitors.spec import jobs_for_config
from steering import Router

__all__ = ["Progress", "run_scenario"]

Progress = Callable[[float], None]
"""Called with the fraction of virtual time done (0..1), every few hundred ticks."""


def run_scenario(scenario: Scenario, *, progress: Progress | None = None) -> Report:
    """Simulate ``scenario`` and return its report (see the module docstring)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    report: Report = trio.run(_simulate, scenario, progress, clock=clock)
    return report


async def _simulate(sc: Scenario, progress: Progress | None) -> Report:
    start = trio.current_time()
    config: Config = sc.config
    secret = hashlib.sha256(f"tunnel-lb-sim:{sc.seed}".encode()).digest()
    engine = Engine(config, now=start, secret=secret)
    network = Network(sc)
    rec = Recorder(sc, start)
    engine.observers.health.append(rec.health)
    engine.observers.probes.append(rec.probe)
    inbox: list[tuple[float, ProbeResult]] = []

    def on_result(result: ProbeResult) -> None:
        inbox.append((trio.current_time(), result))

    scheduler = Scheduler(SimTransport(network, start), on_result, rng=probe_rng(sc.seed))
    cluster = None
    if sc.members:  # several replicas: lb.sim.cluster replaces the single engine's monitors
        cluster = SimCluster(sc, network, start, secret, rec.health, rec.probe)
        engine.observers.health.remove(rec.health)
        engine.observers.probes.remove(rec.probe)
    else:
        scheduler.update(jobs_for_config(config, engine.targets()))
    outcomes = PendingOutcomes()  # one for the run: an answer comes whoever else sends
    in_flight = InFlight(config) if needs_live(config) else None  # likewise, attempts end
    if cluster is not None:
        cluster.on_kill.append(outcomes.kill)
    users = [
        DatacenterTraffic(t, i, sc.seed, config, network, rec.runs, outcomes, in_flight)
        for i, t in enumerate(sc.traffic)
    ]
    counts = [TrafficCounts() for _ in users]
    sessions = [
        DatacenterSessions(t, i, sc.seed, network)
        for i, t in enumerate(sc.traffic)
        if t.sessions_rate > 0
    ]

    def flush(at: float) -> None:
        for u, c in zip(users, counts, strict=True):
            u.harvest(c)
        rec.fold(at, [(u.dc, c) for u, c in zip(users, counts, strict=True)])
        counts[:] = [TrafficCounts() for _ in users]

    changes = list(sc.changes)
    tick = sc.tick
    ticks = max(1, math.ceil(sc.duration / tick - 1e-9))
    router: Router | None = None
    routers: list[Router] = []
    fresh_until = -math.inf
    span: object = None
    span_start = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run if cluster is None else cluster.run)
        for k in range(ticks):
            t = k * tick
            await trio.sleep_until(start + t)
            if cluster is not None:
                cluster.tick(start + t)
            elif inbox:
                _apply_due(engine, inbox, start + t)
            while changes and changes[0].at <= t + 1e-9:
                config = config_with(config, changes.pop(0))
                if cluster is not None:
                    cluster.reconfigure(config, now=start + t)
                    continue
                engine.reconfigure(config, now=start + t)
                scheduler.update(jobs_for_config(config, engine.targets()))
            outcomes.settle(start + t)  # answers come and deadlines fire: traffic or none
            if in_flight is not None:
                in_flight.settle(start + t)
            engines = [engine] * len(users)
            if cluster is not None:
                engines = [cluster.serving(u.dc) for u in users]
            current = engine.router if cluster is None else engines[0].router
            now_routers = [current] * len(users) if cluster is None else [e.router for e in engines]
            stale = (
                current is not router
                or t >= fresh_until
                or any(a is not b for a, b in zip(now_routers, routers, strict=False))
                or len(now_routers) != len(routers)
            )
            here = rec.span(t)
            if here != span or stale:
                if span is not None:
                    flush(span_start)
                span, span_start = here, t
            if stale:
                moved = t >= fresh_until  # else only the snapshot changed, not the network
                router, fresh_until = current, network.next_change(t)
                routers = now_routers
                for u in users:
                    u.invalidate(network=moved)
            assert router is not None
            length = min(tick, sc.duration - t)
            for u, c, r, e in zip(users, counts, routers, engines, strict=True):
                u.run(t, k, u.batch(t, length), length, start + t, r, e, c)
            for s in sessions:
                e = engine if cluster is None else cluster.serving(s.dc)
                s.tick(t, length, start + t, e)
            if progress is not None and k % 256 == 0:
                progress(k / ticks)
        outcomes.settle(start + sc.duration)  # those due after the last request
        flush(span_start)
        for s in sessions:
            rec.sessions(s.finish())
        nursery.cancel_scope.cancel()
    if progress is not None:
        progress(1.0)
    found = failovers(sc, rec)
    verdicts = evaluate(sc, rec, found, network.probes_sent)
    return build_report(rec, found, verdicts, network.probes_sent)


def _apply_due(engine: Engine, inbox: list[tuple[float, ProbeResult]], before: float) -> None:
    """Apply queued results that arrived before ``before``, in canonical order."""
    due = [item for item in inbox if item[0] < before]
    if not due:
        return
    inbox[:] = [item for item in inbox if item[0] >= before]
    due.sort(key=lambda item: (item[0], item[1].pool, item[1].endpoint, item[1].vantage))
    for _, result in due:
        engine.apply(result)
