"""Simulated cluster members: several replicas' engines over an in-memory store, in virtual time.

Each :class:`SimMember` is what one ``tunnel-lb run --cluster`` replica holds: its own
:class:`~lb.engine.Engine` (probing from its own vantage point), its own
:class:`~lb.cluster.shard.ShardedScheduler`, a :class:`~lb.cluster.tally.Tally` of the other
members' votes, and its view of the membership.  The vote, expiry, membership and sharding
rules are the cluster's own pure code (:mod:`lb.cluster`); only the transport differs: a
:class:`~lb.cluster.memory.MemoryStore`, and deliveries made by :meth:`SimCluster.tick` at
the start of each tick in a canonical order (members in file order, results sorted), so a
seed gives one report.  Votes therefore travel in at most one tick (100 ms by default).

Timeline events: ``kill`` stops a member (no probes, no heartbeats; peers take its probes
over once its heartbeat expires, and its vantage point leaves their majority once its votes
expire); ``partition`` cuts a member from the store (it keeps probing and serving, alone);
``recover`` (or ``until``) restarts a killed member as a new incarnation with a warm start,
or reconnects a partitioned one.  Users are served by the first live member whose
``datacenter`` is theirs, else by the first live member; the first member is the *observed*
one whose health transitions the report shows.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import trio

from lb.cluster.members import live_members, owner, probe_key
from lb.cluster.memory import MemoryStore
from lb.cluster.shard import ShardedScheduler
from lb.cluster.tally import Tally, verdict
from lb.cluster.votes import Heartbeat, Vote, vote_ttl
from lb.config.model import Config
from lb.core.health import HealthEvent, ProbeResult
from lb.engine import Engine
from lb.sim.network import Network, SimTransport
from lb.sim.scenario import Member, MemberEvent, Scenario
from lb.sim.spec import TimelineAction
from monitors.spec import Job, jobs_for_config

__all__ = ["SimCluster", "SimMember"]


def member_config(config: Config, vantage: str) -> Config:
    """The configuration as a replica of ``vantage`` resolves it (one vantage point)."""
    return dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, vantage_points=(vantage,))
    )


class SimMember:
    """One simulated replica; see the module docstring."""

    def __init__(self, spec: Member, cluster: SimCluster, incarnation: int = 0) -> None:
        self.spec = spec
        self.cluster = cluster
        self.id = f"{spec.vantage}/{spec.name}#{incarnation}"
        self.incarnation = incarnation
        self.alive = True
        self.connected = True
        self.inbox: list[tuple[float, ProbeResult]] = []
        self.outbox: list[Vote] = []
        self.mine: dict[tuple[str, str, str], Vote] = {}
        self.members: dict[str, Heartbeat] = {}
        self.owned: frozenset[str] = frozenset()
        self._peers: tuple[str, ...] | None = None
        sc = cluster.scenario
        config = member_config(cluster.config, spec.vantage)
        self.engine = Engine(config, now=trio.current_time(), secret=cluster.secret)
        self.tally = Tally(self.engine, me=self.id)
        self.engine.observers.probes.append(self._vote)
        self.scheduler = ShardedScheduler(
            SimTransport(cluster.network, cluster.start),
            self._arrived,
            rng=random.Random(f"{sc.seed}:monitors:{spec.name}:{incarnation}"),
        )
        self.scheduler.update(jobs_for_config(config, self.engine.targets()))

    def _arrived(self, result: ProbeResult) -> None:
        if self.alive:
            self.inbox.append((trio.current_time(), result))

    def _vote(self, result: ProbeResult) -> None:
        state = self.engine.book.state(result.pool, result.endpoint, result.vantage)
        vote = verdict(
            result,
            state,
            member=self.id,
            now=self.cluster.now(),
            ttl=self.cluster.ttl.get(result.pool, 60.0),
        )
        if vote is not None:
            self.mine[vote.key] = vote
            self.outbox.append(vote)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            member=self.id,
            vantage=self.spec.vantage,
            datacenter=self.spec.datacenter,
            owned=len(self.owned),
            at=self.cluster.now(),
            ttl=self.cluster.scenario.heartbeat_ttl,
        )

    def reshard(self) -> None:
        """Run the probes this member owns among the live members of its vantage point."""
        if not self.alive:
            self.scheduler.reshard(lambda job: False)
            return
        peers = sorted(m for m, hb in self.members.items() if hb.vantage == self.spec.vantage)
        if not self.connected:
            peers = [self.id]
        members = tuple(peers)
        if members == self._peers:
            return
        self._peers = members
        me = self.id

        def owns(job: Job) -> bool:
            return owner(probe_key(job.fanout), members) == me

        self.scheduler.reshard(owns)
        self.owned = frozenset(probe_key(j.fanout) for j in self.scheduler.jobs)

    def apply_due(self, before: float) -> None:
        due = [item for item in self.inbox if item[0] < before]
        if not due:
            return
        self.inbox[:] = [item for item in self.inbox if item[0] >= before]
        due.sort(key=lambda item: (item[0], item[1].pool, item[1].endpoint, item[1].vantage))
        for _, result in due:
            self.engine.apply(result)


class SimCluster:
    """The members of one simulated cluster and their store; see the module docstring."""

    def __init__(
        self,
        scenario: Scenario,
        network: Network,
        start: float,
        secret: bytes,
        observe: Callable[[HealthEvent], None],
        probes: Callable[[ProbeResult], None],
    ) -> None:
        self.scenario = scenario
        self.network = network
        self.start = start
        self.secret = secret
        self.config = scenario.config
        self.store = MemoryStore()
        self.ttl: dict[str, float] = {}
        self._observe = observe
        self._probes = probes
        self._set_ttl(self.config)
        self.members = [SimMember(m, self) for m in scenario.members]
        self._watch(self.members[0], first=True)
        for m in self.members[1:]:
            self._watch(m, first=False)
        self.events = list(scenario.member_events)
        self.next_beat = 0.0
        self._nursery: trio.Nursery | None = None
        self.on_kill: list[Callable[[Engine, float], None]] = []
        """Told the engine of a member and the kill's time (engine clock) as it is killed,
        while it is still alive: what it learned by then counts, the rest of its pending
        work dies with it.  The kill's time, not the tick's that applies it: a kill
        between two ticks is applied at the later one."""

    def now(self) -> float:
        """Seconds of virtual time since the start: the members' shared "wall clock"."""
        return trio.current_time() - self.start

    def _set_ttl(self, config: Config) -> None:
        ttl = {}
        for pool in config.pools:
            factor = self.scenario.vote_factor
            ttl_of = [
                vote_ttl(m.interval, m.timeout, m.retries, factor=factor)
                for m in config.pool_monitors(pool)
            ]
            if ttl_of:
                ttl[pool.name] = max(ttl_of)
        self.ttl = ttl

    def _watch(self, member: SimMember, *, first: bool) -> None:
        if first:
            member.engine.observers.health.append(self._observe)
        member.engine.observers.probes.append(self._probes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every member's scheduler until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.tick(self.start)  # heartbeats and shares before the first probe
            for m in self.members:
                await nursery.start(m.scheduler.run)
            task_status.started()

    def serving(self, datacenter: str) -> Engine:
        """The engine that answers users entering at ``datacenter``."""
        alive = [m for m in self.members if m.alive]
        for m in alive:
            if m.spec.datacenter == datacenter:
                return m.engine
        return (alive or self.members)[0].engine

    def reconfigure(self, config: Config, *, now: float) -> None:
        """A timeline configuration change: every member applies it."""
        self.config = config
        self._set_ttl(config)
        for m in self.members:
            mc = member_config(config, m.spec.vantage)
            m.engine.reconfigure(mc, now=now)
            m.scheduler.update(jobs_for_config(mc, m.engine.targets()))
            m.tally.reapply(now=self.now(), at=now)

    def tick(self, at: float) -> None:
        """Everything due before ``at`` (engine clock), in canonical order."""
        t = at - self.start
        while self.events and self.events[0].at <= t + 1e-9:
            self._event(self.events.pop(0), at)
        for m in self.members:
            if m.alive:
                m.apply_due(at)
        now = self.now()
        for m in self.members:
            if not (m.alive and m.connected and m.outbox):
                m.outbox.clear()
                continue
            batch, m.outbox = m.outbox, []
            self.store.publish(batch)
            for other in self.members:
                if other is not m and other.alive and other.connected:
                    for vote in batch:
                        other.tally.offer(vote, now=now, at=at)
        if t + 1e-9 >= self.next_beat:
            self.next_beat = t + self.scenario.heartbeat
            for m in self.members:
                if m.alive and m.connected:
                    self.store.beat(m.heartbeat())
            for m in self.members:
                if m.alive:
                    me = m.heartbeat()
                    beats = self.store.beats.values() if m.connected else ()
                    m.members = live_members(beats, now=now, me=me)
                    m.reshard()
        for m in self.members:
            if m.alive:
                m.tally.expire(now=now, at=at)

    def _event(self, e: MemberEvent, at: float) -> None:
        i = next(i for i, m in enumerate(self.members) if m.spec.name == e.member)
        m = self.members[i]
        if e.action == TimelineAction.KILL:
            for forget in self.on_kill:
                forget(m.engine, self.start + e.at)
            m.alive = False
            m.inbox.clear()
            m.reshard()
        elif e.action == TimelineAction.PARTITION:
            m.connected = False
            m.members = {}
            m.reshard()
        elif not m.alive:  # recover a killed member: a new process, warm start
            fresh = SimMember(m.spec, self, m.incarnation + 1)
            self.members[i] = fresh
            self._watch(fresh, first=i == 0)
            now = self.now()
            for vote in sorted(self.store.votes.values(), key=lambda v: v.key):
                fresh.tally.offer(vote, now=now, at=at)
            if self._nursery is not None:
                self._nursery.start_soon(fresh.scheduler.run)
            self.next_beat = min(self.next_beat, at - self.start)
        else:  # reconnect a partitioned member: read the votes, republish its own
            m.connected = True
            now = self.now()
            for vote in sorted(self.store.votes.values(), key=lambda v: v.key):
                m.tally.offer(vote, now=now, at=at)
            m.outbox = sorted(m.mine.values(), key=lambda v: v.key)
            self.next_beat = min(self.next_beat, at - self.start)
