"""The cluster driver against a real redis-server: votes, warm start, sharding, bad data,
store outages.  In-process nodes (``tunnel-lb run`` replicas are in tests/e2e)."""

from __future__ import annotations

import gc
import logging
import random
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from redis_support import RedisServer, redis_server
from waiting import wait_until

from lb.cluster.driver import ClusterNode
from lb.cluster.service import ClusterCollector
from lb.cluster.shard import ShardedScheduler
from lb.config.model import Cluster, Config, EngineSettings, LoadBalancer, Monitor, Origin, Pool
from lb.core.health import Health, ProbeResult
from lb.engine import Engine as LbEngine
from monitors.network import NetworkTransport
from monitors.spec import jobs_for_config

pytestmark = [
    pytest.mark.integration,
    # coredis 6.9 leaves the anyio memory streams of a connection that failed (the store
    # killed under it) to the garbage collector, which warns; nothing of ours leaks.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <function MemoryObject\w+Stream.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

H, U, K = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN
ENDPOINTS = [f"e{i}" for i in range(12)]


def config(
    url: str, vantage: str, *, prefix: str = "t:", secret: str = "s3cret", interval: int = 60
) -> Config:
    pool = Pool(
        name="p",
        monitor="m",
        origins=tuple(Origin(name=e, address=f"10.0.0.{i + 1}") for i, e in enumerate(ENDPOINTS)),
    )
    return Config(
        monitors=(Monitor(id="m", type="https", interval=interval, timeout=1, retries=0),),
        pools=(pool,),
        load_balancers=(LoadBalancer(name="x.example", default_pools=("p",), fallback_pool="p"),),
        engine=EngineSettings(
            vantage_points=(vantage,),
            affinity_secret=secret,
            cluster=Cluster(
                redis=url, vantage=vantage, key_prefix=prefix, heartbeat=0.1, timeout=0.5
            ),
        ),
    )


@asynccontextmanager
async def node(url: str, vantage: str, **kw: Any) -> AsyncIterator[ClusterNode]:
    cfg = config(url, vantage, **kw)
    engine = LbEngine(cfg, now=trio.current_time())
    scheduler = ShardedScheduler(NetworkTransport(), engine.apply, rng=random.Random(0))
    scheduler.update(jobs_for_config(cfg, engine.targets()))
    n = ClusterNode(engine, scheduler)
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run)
        try:
            yield n
        finally:
            nursery.cancel_scope.cancel()


def probe(n: ClusterNode, endpoint: str, ok: bool) -> None:
    n.engine.apply(
        ProbeResult(pool="p", endpoint=endpoint, vantage=n.vantage, at=trio.current_time(), ok=ok)
    )


def health(n: ClusterNode, endpoint: str = "e0") -> Health:
    return n.engine.book.snapshot().pools["p"].endpoints[ENDPOINTS.index(endpoint)].health


@pytest.fixture(autouse=True)
def _collect_leftover_streams() -> Iterator[None]:
    """Collect the streams coredis leaves behind (see ``pytestmark``) at the end of each test
    here, under this module's filter: left to a later collection, their warnings would fail
    whichever test of another module happens to run then."""
    yield
    gc.collect()


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server


async def test_votes_cross_replicas_and_the_majority_decides(redis: RedisServer) -> None:
    async with (
        node(redis.url, "fra") as a,
        node(redis.url, "ams") as b,
        node(redis.url, "sin") as c,
    ):
        probe(a, "e0", False)
        for n in (b, c):
            probe(n, "e0", True)
        await wait_until(lambda: all(health(n) is H for n in (a, b, c)))
        assert a.engine.book.snapshot().pools["p"].endpoints[0].vantage_health == {
            "fra": U,
            "ams": H,
            "sin": H,
        }
        probe(b, "e0", False)
        await wait_until(lambda: all(health(n) is U for n in (a, b, c)))
        assert a.stats.store_ops > 0 and b.stats.received > 0


async def test_warm_start_reads_the_current_votes(redis: RedisServer) -> None:
    async with node(redis.url, "fra") as a, node(redis.url, "ams") as b:
        for n in (a, b):
            probe(n, "e1", True)
        await wait_until(lambda: health(a, "e1") is H and len(a.tally.votes) == 1)
        await wait_until(lambda: a.stats.published >= 1 and b.stats.published >= 1)
        # A new replica of a third vantage: correct health the moment it has started,
        # before it probed anything itself.
        async with node(redis.url, "sin") as c:
            assert health(c, "e1") is H
            assert c.engine.book.snapshot().pools["p"].endpoints[1].vantage_health == {
                "sin": K,
                "fra": H,
                "ams": H,
            }


async def test_replicas_of_one_vantage_share_the_probes(redis: RedisServer) -> None:
    async with node(redis.url, "fra") as a:
        await wait_until(lambda: a.probes_owned == len(ENDPOINTS))
        async with node(redis.url, "fra") as b:
            await wait_until(lambda: a.probes_owned + b.probes_owned == len(ENDPOINTS))
            assert 0 < a.probes_owned < len(ENDPOINTS)
            owned_a = {j.fanout for j in a.scheduler.jobs}
            owned_b = {j.fanout for j in b.scheduler.jobs}
            assert not owned_a & owned_b
            assert len(owned_a | owned_b) == len(ENDPOINTS)
            # b probes what it owns; a learns those states from b's votes
            for ((_, endpoint),) in owned_b:
                probe(b, endpoint, False)
            await wait_until(lambda: all(health(a, e) is U for ((_, e),) in owned_b))
        # b left (its heartbeat key deleted on a clean stop): a owns everything again
        await wait_until(lambda: a.probes_owned == len(ENDPOINTS))


async def test_bad_records_are_counted_and_ignored(redis: RedisServer) -> None:
    await redis.command("HSET", "t:votes", "junk", "not-json")
    await redis.command("HSET", "t:votes", "other", '{"v":99}')
    await redis.command("SET", "t:member:zz", "garbage")
    async with node(redis.url, "fra") as a:
        # the two votes at warm start, the member key at the first heartbeat
        assert a.stats.bad == {"garbage": 2, "format": 1}
        await redis.command("PUBLISH", "t:votes", "[1,2]")
        await wait_until(lambda: a.stats.bad.get("invalid") == 2)
        await redis.command("HSET", "t:votes", "big", "[" + " " * (1 << 20) + "]")
        await redis.command("PUBLISH", "t:votes", "[" + " " * (1 << 20) + "]")
        await wait_until(lambda: a.stats.bad.get("too_large") == 1)
        probe(a, "e0", True)
        assert health(a) is H and a.connected


async def test_store_outage_degrades_and_rejoins(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunnel_lb")
    async with node(redis.url, "fra") as a, node(redis.url, "ams") as b:
        probe(a, "e0", True)
        probe(b, "e0", False)
        await wait_until(lambda: health(a) is U and health(b) is U)  # 1 of 2 is no majority
        await redis.stop()
        await wait_until(lambda: not a.connected and not b.connected)
        status = a.status()
        assert status["degraded"] and status["peers"][0]["self"]
        assert [r.getMessage() for r in caplog.records].count("cluster_degraded") == 2
        # alone, each falls back to its own vantage once the other's votes expire
        for n in (a, b):
            for vote in list(n.tally.votes.values()):
                n.tally.votes[vote.key] = type(vote)(**{**_fields(vote), "at": 0.0})
            n.tally.expire(now=n.wall(), at=trio.current_time())
        assert health(a) is H and health(b) is U
        await redis.start()
        await wait_until(lambda: a.connected and b.connected)
        await wait_until(lambda: health(a) is U and health(b) is U)
        await wait_until(
            lambda: [r.getMessage() for r in caplog.records].count("cluster_rejoined") == 2
        )


def _fields(vote: object) -> dict[str, object]:
    return {k: getattr(vote, k) for k in vote.__slots__}  # type: ignore[attr-defined]


async def test_a_frozen_store_is_a_failure_too(redis: RedisServer) -> None:
    async with node(redis.url, "fra") as a:
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            await wait_until(lambda: not a.connected)  # heartbeat over timeout
            probe(a, "e0", True)  # no store call on the way: the book still moves at once
            assert health(a) is H and a.probes_owned == len(ENDPOINTS)
        finally:
            redis.process.send_signal(signal.SIGCONT)
        await wait_until(lambda: a.connected)


async def test_status_and_metrics_flag_config_and_secret_drift(redis: RedisServer) -> None:
    async with node(redis.url, "fra") as a, node(redis.url, "ams") as b:
        await wait_until(lambda: len(a.members) == 2 and len(b.members) == 2)
        status = a.status()
        assert not status["config_mismatch"] and not status["secret_mismatch"]
        assert "s3cret" not in repr(status)
        async with node(redis.url, "sin", secret="other", interval=30) as c:
            await wait_until(lambda: len(a.members) == 3)
            status = a.status()
            assert status["config_mismatch"] and status["secret_mismatch"]
            (sin,) = [p for p in status["peers"] if p["vantage"] == "sin"]
            assert not sin["config_matches"] and not sin["secret_matches"]
            assert c.status()["config_hash"] != status["config_hash"]
            registry = CollectorRegistry()
            registry.register(ClusterCollector(a))
            text = generate_latest(registry).decode()
            assert "lb_cluster_store_connected 1.0" in text
            assert 'lb_cluster_members{vantage="sin"} 1.0' in text
            hashes = [line for line in text.splitlines() if line.startswith("lb_cluster_config_")]
            assert sorted(line.rsplit(" ", 1)[1] for line in hashes) == ["1.0", "2.0"]
            assert "lb_cluster_probes_owned 12.0" in text
