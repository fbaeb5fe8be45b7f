"""The cluster driver: this replica's votes out to Redis, the others' in, membership, sharding.

Theory of operation
===================

One :class:`ClusterNode` per ``tunnel-lb run`` process with ``engine.cluster``.  Everything it
decides is computed by the pure modules (:mod:`lb.cluster.votes`, :mod:`~lb.cluster.members`,
:mod:`~lb.cluster.tally`); this module only moves bytes and keeps time.

Keys (``P`` is ``cluster.key_prefix``):

``P votes`` (hash)
    One field per (vantage, pool, endpoint), the latest vote.  Read whole at start and on
    every reconnection (warm start); written with every batch.
``P votes`` (pub/sub channel, same name)
    Every batch of votes as one JSON list.  Followers apply them as they arrive.
``P member:<id>`` (string with a TTL)
    The member's :class:`~lb.cluster.votes.Heartbeat`, refreshed every ``heartbeat`` seconds,
    expiring after ``member_ttl``; deleted on a clean stop.

Request path: nothing here runs on a request.  Probe results reach :meth:`ClusterNode.on_probe`
through the engine's probe observers (synchronous, no I/O: a vote is queued); a publisher task
sends queued votes every ``cluster.batch`` seconds as one pipelined ``HSET`` + ``PUBLISH``, so
a probe costs at most two store operations, fewer when probes finish close together.

Failures: every store call runs under ``cluster.timeout``.  Any failure (refused, reset, slow,
a protocol error) ends the session: the node is *degraded* (``cluster_degraded`` is logged
once per outage), owns every probe of its vantage point, keeps serving with the votes it
holds until they expire, then with its own vantage point only, and reconnects with a backoff
of up to 5 s.  On reconnection (``cluster_rejoined``) it reads the votes again, republishes
its own latest votes and resumes sharding.  Bad records are counted by kind and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import coredis
import trio

from lb import logs
from lb.cluster.fingerprint import config_hash, secret_fingerprint
from lb.cluster.members import live_members, owner, probe_key
from lb.cluster.shard import ShardedScheduler
from lb.cluster.tally import Tally, verdict
from lb.cluster.votes import (
    Heartbeat,
    Rejected,
    Vote,
    decode_heartbeat,
    decode_votes,
    encode_heartbeat,
    encode_vote,
    encode_votes,
    vote_field,
    vote_ttl,
)
from lb.config.model import Cluster, Config
from lb.core.health import ProbeResult
from lb.engine import SECRET_ENV, Engine
from monitors.spec import Job

__all__ = ["ClusterNode", "ClusterStats", "member_id", "redacted"]

_QUEUE = 10_000
"""Votes queued for sending; past this (a store slower than probing) new votes are dropped
and counted: the hash keeps the latest vote per endpoint anyway."""


def member_id(vantage: str) -> str:
    """A new member id: vantage, host, pid and a random suffix (one per process life)."""
    return f"{vantage}/{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def redacted(url: str) -> str:
    """``url`` without its password, for logs and ``/status``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class ClusterStats:
    """Counters for metrics and ``/status``."""

    published: int = 0
    received: int = 0
    dropped: int = 0
    store_ops: int = 0
    results: int = 0
    """Local probe verdicts (one per probe and endpoint) queued for publishing."""
    bad: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    """Outages seen (degraded periods)."""

    def reject(self, rejected: Iterable[Rejected]) -> None:
        for r in rejected:
            self.bad[r.kind] = self.bad.get(r.kind, 0) + 1


class ClusterNode:
    """One replica's membership of the cluster; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        scheduler: ShardedScheduler,
        *,
        wall: Callable[[], float] = time.time,
        member: str | None = None,
    ) -> None:
        cluster = engine.config.engine.cluster
        if cluster is None:
            raise ValueError("ClusterNode needs engine.cluster")
        self.engine = engine
        self.scheduler = scheduler
        self.settings: Cluster = cluster
        self.vantage = cluster.vantage
        self.wall = wall
        self.me = member or member_id(self.vantage)
        self.started_wall = wall()
        self.tally = Tally(engine, me=self.me)
        self.stats = ClusterStats()
        self.connected = False
        self.degraded_since: float | None = None
        self.members: dict[str, Heartbeat] = {}
        self.mine: dict[tuple[str, str, str], Vote] = {}
        """This replica's latest vote per endpoint, republished on every (re)connection."""
        self._send, self._receive = trio.open_memory_channel[Vote](_QUEUE)
        self._ttl: dict[str, float] = {}
        self._config_hash = ""
        self._peers: tuple[str, ...] | None = None
        self._on_config(engine.config)
        engine.observers.probes.append(self.on_probe)
        engine.observers.config.append(self._on_config)
        engine.status_sections["cluster"] = self.status

    # ------------------------------------------------------------------ engine side (sync)

    @property
    def secret_fingerprint(self) -> str:
        return secret_fingerprint(self.engine.secret)

    def on_probe(self, result: ProbeResult) -> None:
        """A local probe result was applied: queue this vantage point's verdict."""
        vote = verdict(
            result,
            self.engine.book.state(result.pool, result.endpoint, result.vantage),
            member=self.me,
            now=self.wall(),
            ttl=self._ttl.get(result.pool, 60.0),
        )
        if vote is None:
            return
        self.mine[vote.key] = vote
        self.stats.results += 1
        if not self.connected:
            return
        try:
            self._send.send_nowait(vote)
        except trio.WouldBlock:
            self.stats.dropped += 1

    def _on_config(self, config: Config) -> None:
        cluster = config.engine.cluster
        settings = cluster if cluster is not None else self.settings
        ttl: dict[str, float] = {}
        for pool in config.pools:
            # R16: with a monitor group, the slowest member bounds how long a vote stands
            ttl_of = [
                settings.vote_ttl
                or vote_ttl(m.interval, m.timeout, m.retries, factor=settings.vote_factor)
                for m in config.pool_monitors(pool)
            ]
            if ttl_of:
                ttl[pool.name] = max(ttl_of)
        self._ttl = ttl
        self._config_hash = config_hash(config)
        self.tally.reapply(now=self.wall(), at=trio.current_time())
        self._reshard(force=True)

    # ------------------------------------------------------------------ sharding

    def peers_here(self) -> list[str]:
        """Live members of this vantage point (this replica included)."""
        if not self.connected:
            return [self.me]
        return sorted(m for m, hb in self.members.items() if hb.vantage == self.vantage)

    def _reshard(self, *, force: bool = False) -> None:
        """Own the probes whose rendezvous owner among this vantage point's live members is
        this replica.  The rule is kept, not a list of keys, so that jobs a reload adds are
        placed at once by :meth:`ShardedScheduler.update`."""
        members = tuple(self.peers_here())
        if not force and members == self._peers:
            return
        self._peers = members
        me = self.me

        def owns(job: Job) -> bool:
            return owner(probe_key(job.fanout), members) == me

        self.scheduler.reshard(owns)

    @property
    def probes_owned(self) -> int:
        """Probe identities this replica runs now."""
        return len(self.scheduler.jobs)

    # ------------------------------------------------------------------ status

    def heartbeat(self) -> Heartbeat:
        """This replica's heartbeat as of now."""
        return Heartbeat(
            member=self.me,
            vantage=self.vantage,
            datacenter=self.engine.config.engine.datacenter,
            config=self._config_hash,
            secret=self.secret_fingerprint,
            owned=self.probes_owned,
            at=self.wall(),
            ttl=self.settings.member_ttl,
            started=self.started_wall,
        )

    def status(self) -> dict[str, Any]:
        """The ``cluster`` section of ``/status``."""
        now = self.wall()
        me = self.heartbeat()
        peers = live_members(self.members.values(), now=now, me=me) if self.connected else {}
        peers[self.me] = me
        config_mismatch = any(p.config != me.config for p in peers.values())
        secret_mismatch = any(p.secret != me.secret for p in peers.values())
        return {
            "member": self.me,
            "vantage": self.vantage,
            "store": redacted(self.settings.redis),
            "connected": self.connected,
            "degraded": not self.connected,
            "degraded_for": None
            if self.degraded_since is None
            else round(now - self.degraded_since, 3),
            "config_hash": me.config,
            "config_mismatch": config_mismatch,
            "secret_mismatch": secret_mismatch,
            "probes_owned": self.probes_owned,
            "probes_total": len({probe_key(j.fanout) for j in self.scheduler.all_jobs}),
            "peers": [
                {
                    "member": p.member,
                    "vantage": p.vantage,
                    "datacenter": p.datacenter,
                    "last_heartbeat_age": round(max(0.0, now - p.at), 3),
                    "config_hash": p.config,
                    "config_matches": p.config == me.config,
                    "secret_matches": p.secret == me.secret,
                    "probes_owned": p.owned,
                    "self": p.member == self.me,
                }
                for p in sorted(peers.values(), key=lambda p: p.member)
            ],
            "vote_age": {v: round(a, 3) for v, a in sorted(self.tally.ages(now).items())},
            "votes": {
                "published": self.stats.published,
                "received": self.stats.received,
                "dropped": self.stats.dropped,
                "held": len(self.tally.votes),
            },
            "bad_records": dict(sorted(self.stats.bad.items())),
        }

    def config_counts(self) -> dict[str, int]:
        """Live replicas per configuration hash (this one included)."""
        now = self.wall()
        me = self.heartbeat()
        peers = live_members(self.members.values(), now=now, me=me) if self.connected else {}
        peers[self.me] = me
        counts: dict[str, int] = {}
        for p in peers.values():
            counts[p.config] = counts.get(p.config, 0) + 1
        return counts

    # ------------------------------------------------------------------ the task

    def _key(self, *parts: str) -> str:
        return self.settings.key_prefix + ":".join(parts)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, warm-start, then follow and publish until cancelled; ``started()`` after
        the first warm start (or the first failed attempt: then degraded)."""
        if not self.engine.config.engine.affinity_secret and not (
            self.engine.config.engine.affinity_secret_file or os.environ.get(SECRET_ENV)
        ):
            logs.event(
                "cluster_random_affinity_secret",
                logging.WARNING,
                detail="no shared affinity secret: __cflb cookies hold on this replica only",
            )
        started = False

        def on_ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        backoff = 0.1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_loop)
            while True:
                ready = trio.Event()
                try:
                    await self._session(ready, on_ready)
                except BaseExceptionGroup as group:
                    # Cancelled (a stop) wins over errors the client raises while it is torn
                    # down (coredis's subscriber cleanup writes to a closed connection).
                    cancelled, errors = group.split(trio.Cancelled)
                    if cancelled is not None:
                        raise cancelled from None
                    self._degrade(errors or group)
                except Exception as exc:  # any store failure ends the session
                    self._degrade(exc)
                on_ready()
                if ready.is_set():
                    backoff = 0.1
                await trio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    async def _session(self, ready: trio.Event, on_ready: Callable[[], None]) -> None:
        timeout = self.settings.timeout
        client = coredis.Redis.from_url(
            self.settings.redis,
            stream_timeout=timeout,
            connect_timeout=timeout,
            retry_policy=coredis.retry.NoRetryPolicy(),
        )
        # The client and its subscription hold task groups: they are entered here, in this
        # task, and never inside a deadline scope that ends before them.
        async with contextlib.AsyncExitStack() as stack:
            await self._connected_session(stack, client, ready, on_ready)

    async def _connected_session(
        self,
        stack: contextlib.AsyncExitStack[Any],
        client: coredis.Redis[bytes],
        ready: trio.Event,
        on_ready: Callable[[], None],
    ) -> None:
        timeout = self.settings.timeout
        channel = self._key("votes")
        await stack.enter_async_context(client)
        pubsub = await stack.enter_async_context(
            client.pubsub(
                channels=[channel],
                ignore_subscribe_messages=True,
                retry_policy=None,
                subscription_timeout=timeout,
            )
        )
        with trio.fail_after(timeout * 3):
            stored = await client.hgetall(channel)
            self.stats.store_ops += 1
        now, at = self.wall(), trio.current_time()
        for value in stored.values():
            self._offer_all(value, now, at)
        # Drain what was queued while away: the full set of own votes is republished below.
        while True:
            try:
                self._receive.receive_nowait()
            except trio.WouldBlock:
                break
        self.connected = True
        await self._beat(client)
        if self.mine:
            await self._publish(client, list(self.mine.values()))
        if self.degraded_since is not None:
            logs.event(
                "cluster_rejoined",
                member=self.me,
                after=round(self.wall() - self.degraded_since, 3),
            )
            self.degraded_since = None
        ready.set()
        logs.event(
            "cluster_joined",
            member=self.me,
            vantage=self.vantage,
            store=redacted(self.settings.redis),
            members=len(self.members),
            votes=len(self.tally.votes),
        )
        on_ready()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, pubsub)
                nursery.start_soon(self._publish_loop, client)
                nursery.start_soon(self._beat_loop, client)
        finally:
            # A clean stop (or a failure) leaves the member set at once when the store
            # still answers: peers take the probes over without waiting for the TTL.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(timeout),
                contextlib.suppress(Exception),
            ):
                await client.delete([self._key("member", self.me)])

    def _offer_all(self, value: bytes | str, now: float, at: float) -> None:
        votes, rejected = decode_votes(value)
        self.stats.reject(rejected)
        for vote in votes:
            if self.tally.offer(vote, now=now, at=at):
                self.stats.received += 1

    async def _follow(self, pubsub: Any) -> None:
        async for message in pubsub:
            data = message.get("data")
            if isinstance(data, bytes | str):
                self._offer_all(data, self.wall(), trio.current_time())

    async def _publish_loop(self, client: coredis.Redis[bytes]) -> None:
        while True:
            first = await self._receive.receive()
            if self.settings.batch:
                await trio.sleep(self.settings.batch)
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._publish(client, batch)

    async def _publish(self, client: coredis.Redis[bytes], batch: list[Vote]) -> None:
        latest = {v.key: v for v in batch}
        fields: dict[str | bytes, str | bytes] = {
            vote_field(v): encode_vote(v) for v in latest.values()
        }
        with trio.fail_after(self.settings.timeout):
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(self._key("votes"), fields)
                pipe.publish(self._key("votes"), encode_votes(batch))
        self.stats.store_ops += 2
        self.stats.published += len(batch)

    async def _beat_loop(self, client: coredis.Redis[bytes]) -> None:
        while True:
            await trio.sleep(self.settings.heartbeat)
            await self._beat(client)

    async def _beat(self, client: coredis.Redis[bytes]) -> None:
        """Refresh this member's key, read every member's, reshard when they changed."""
        timeout = self.settings.timeout
        hb = self.heartbeat()
        with trio.fail_after(timeout * 2):
            await client.set(
                self._key("member", self.me),
                encode_heartbeat(hb),
                px=max(1, math.ceil(hb.ttl * 1000)),
            )
            keys = [k async for k in client.scan_iter(match=self._key("member", "*"), count=1000)]
            values = await client.mget(keys) if keys else ()
        self.stats.store_ops += 3
        beats: list[Heartbeat] = []
        for value in values:
            if value is None:
                continue  # expired between SCAN and MGET
            decoded = decode_heartbeat(value)
            if isinstance(decoded, Rejected):
                self.stats.reject([decoded])
            else:
                beats.append(decoded)
        self.members = live_members(beats, now=self.wall(), me=self.heartbeat())
        self._reshard()

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(1.0, self.settings.heartbeat))
            self.tally.expire(now=self.wall(), at=trio.current_time())

    def _degrade(self, exc: BaseException) -> None:
        self.connected = False
        self.members = {}
        self._reshard()
        if self.degraded_since is None:  # once per outage
            self.degraded_since = self.wall()
            self.stats.degraded += 1
            logs.event(
                "cluster_degraded",
                logging.WARNING,
                member=self.me,
                store=redacted(self.settings.redis),
                error=_describe(exc),
                detail="serving with this replica's own vantage point until the store is back",
            )


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]
