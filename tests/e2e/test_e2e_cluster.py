"""End to end: three `tunnel-lb run` replicas with different vantage points share health
through a real redis-server; two `tunnel-lb connector` processes are the endpoints.

One story, in order: an endpoint unreachable from one replica stays healthy everywhere, from
two it goes unhealthy everywhere; a `__cflb` cookie from one replica routes to the same
endpoint through the others, and one pinned to the endpoint a replica cannot reach gets that
replica's 521 (R45, `zero_downtime_failover: none`); a killed replica's vantage point drops
out and a restarted one serves the cluster's health from its first request; Redis killed
under load costs no request and every replica reports `cluster_degraded`; Redis back, they
converge.  A second test runs
two replicas in one vantage point and kills one: the other takes its probes over.
"""

from __future__ import annotations

import http.cookiejar
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ports_support import dead_port
from redis_support import RedisServer, redis_server
from stack_support import (
    APP,
    EU,
    LB,
    US,
    connector_config,
    processes,
    start_connector_process,
    start_lb_process,
    tunnel_certs,
    until_url,
)
from waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SECRET = "shared-affinity-secret"
DEAD = f"127.0.0.1:{dead_port()}"
"""A loopback port held for the session, never listening: connections are refused."""

WAIT = 60.0
"""Seconds any awaited state may take.  Every event awaited here has a documented bound of a
few seconds (docs/cluster.md, "Timing bounds", with the settings below); the margin is for a
shared machine with several times more runnable processes than cores."""

MONITOR = {"interval": 1, "timeout": 2, "retries": 1}
"""One slow probe (a TLS handshake stalled by the machine's load) must not flip a verdict: the
three-replica story keeps ``eu`` healthy by a 2-of-3 majority, where one dissenting vantage
point already decides.  A refused connection (how an endpoint is made unreachable here) fails
both attempts at once, so detection stays quick.  Vote TTL: 3 x 1 + 2 x 2 = 7 s."""

CLUSTER = {"heartbeat": 0.5, "timeout": 2}
"""Membership expires after 3 x heartbeat = 1.5 s and a store call may take 2 s: a replica
whose event loop is stalled for a second by the load neither drops out of its peers' view nor
degrades.  A killed Redis is still seen at once (refused and reset connections)."""


class Replica:
    """One `tunnel-lb run` of the cluster: its ports, files and process.  Its file says port
    0; :meth:`start` reads the ports it got (a restart gets new ones: nobody reaches a
    replica by a port it had before)."""

    def __init__(self, name: str, vantage: str, tmp: Path, redis: str) -> None:
        self.name, self.vantage, self.redis = name, vantage, redis
        self.key_prefix = f"e2e-{tmp.name}:"
        """Each test's own keys, should a store ever be shared."""
        self.listen = self.admin = 0
        """The ports of the running process (0 before the first start)."""
        self.path = tmp / f"{name}.json"
        self.log = tmp / f"{name}.log"
        self.process: trio.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}/status"

    def write(self, ports: dict[str, int], ca: Path, *, dead: frozenset[str] = frozenset()) -> None:
        """The shared configuration; ``dead`` endpoints are unreachable from this replica."""
        connect_to = {
            f"{uuid}.cfargotunnel.com:443": DEAD if uuid in dead else f"127.0.0.1:{ports[uuid]}"
            for uuid in (EU, US)
        }
        self.path.write_text(
            json.dumps(
                {
                    "monitors": [
                        {
                            "id": "app",
                            "type": "https",
                            "path": "/healthz",
                            **MONITOR,
                            "header": {"Host": [APP]},
                        }
                    ],
                    "pools": [
                        {
                            "name": "app",
                            "monitor": "app",
                            "origins": [
                                {
                                    "name": name,
                                    "address": f"{uuid}.cfargotunnel.com",
                                    "header": {"Host": [APP]},
                                }
                                for name, uuid in (("eu", EU), ("us", US))
                            ],
                        }
                    ],
                    "load_balancers": [
                        {
                            "name": LB,
                            "proxied": True,
                            "default_pools": ["app"],
                            "fallback_pool": "app",
                            "session_affinity": "cookie",
                        }
                    ],
                    "connect_to": connect_to,
                    "engine": {
                        "minimum_interval": 1,
                        "listen": [{"address": "127.0.0.1", "port": 0}],
                        "admin": "127.0.0.1:0",
                        "upstream_ca": str(ca),
                        "drain_timeout": 1,
                        "affinity_secret": SECRET,
                        "cluster": {
                            "redis": self.redis,
                            "vantage": self.vantage,
                            "key_prefix": self.key_prefix,
                            **CLUSTER,
                        },
                    },
                },
                indent=1,
            )
        )

    async def start(self, nursery: trio.Nursery) -> None:
        self.process, ready = await start_lb_process(nursery, self.path, log=self.log)
        [self.listen], self.admin = ready.listen, ready.admin

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()


async def until_json(client: httpx.AsyncClient, url: str, ok: Callable[[Any], Any]) -> Any:
    """Poll ``url`` (JSON) until ``ok(json)`` is truthy; bounded, returns that JSON."""

    def check(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            return None
        return body if response.status_code == 200 and ok(body) else None

    return await until_url(client, url, check, seconds=WAIT)


def endpoint(status: dict[str, Any], name: str) -> dict[str, Any]:
    (pool,) = status["pools"]
    found: dict[str, Any] = next(e for e in pool["endpoints"] if e["name"] == name)
    return found


def health(name: str, want: str, **vantages: str) -> Callable[[dict[str, Any]], bool]:
    def ok(status: dict[str, Any]) -> bool:
        ep = endpoint(status, name)
        seen = {v: x["health"] for v, x in ep["vantages"].items()}
        return ep["health"] == want and all(seen.get(v) == h for v, h in vantages.items())

    return ok


def cookieless_client() -> httpx.AsyncClient:
    """A client that keeps no cookie: every request carries only the ``__cflb`` it is given.

    With a jar, a cookie a response set rides on the next request: once, the one a restarted
    replica set on its first answer (pinned to ``eu`` when that replica's own probe of ``eu``
    had finished by then) went with the first request of the Redis outage's load, to ``a``,
    which cannot reach ``eu`` and answers a pinned session's refused connection with 521
    (``zero_downtime_failover: none``, as Cloudflare does; asserted below).  The outage was
    not the cause; the jar was.  A policy that accepts no domain keeps nothing, and
    ``response.cookies`` still reads what a response set."""
    refuse = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    return httpx.AsyncClient(timeout=5, cookies=http.cookiejar.CookieJar(policy=refuse))


async def tunnel_of(client: httpx.AsyncClient, base: str, cookie: str = "") -> tuple[int, str]:
    """One request through a replica (with a ``__cflb`` cookie when given): status, tunnel."""
    headers = {"Host": LB, **({"Cookie": f"__cflb={cookie}"} if cookie else {})}
    r = await client.get(f"{base}/", headers=headers)
    return r.status_code, (r.json()["tunnel"] if r.status_code == 200 else "")


async def pinned_to(client: httpx.AsyncClient, base: str, tunnel: str) -> str:
    """A ``__cflb`` value that the replica at ``base`` pinned to ``tunnel``: new sessions
    until its random steering picks that tunnel (bounded; each pick is 1 in 2 here)."""
    for _ in range(64):
        r = await client.get(f"{base}/", headers={"Host": LB})
        if r.status_code == 200 and r.json()["tunnel"] == tunnel:
            return r.cookies["__cflb"]
    raise AssertionError(f"{base} never steered a new session to {tunnel}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, dict[str, int], Path]]:
    cert, ca_file = tunnel_certs(tmp_path)
    ports = {}
    async with redis_server(tmp_path) as redis, processes() as nursery:
        for uuid, dc in ((EU, "FRA"), (US, "IAD")):
            path = tmp_path / f"{dc}.json"
            path.write_text(connector_config(uuid, dc, 0, cert))
            log = tmp_path / f"{dc}.log"
            _, ports[uuid] = await start_connector_process(nursery, path, uuid, log=log)
        yield redis, ports, ca_file


async def test_three_replicas_share_health_affinity_and_survive_redis(
    stack: tuple[RedisServer, dict[str, int], Path], tmp_path: Path
) -> None:
    redis, ports, ca = stack
    a, b, c = (
        Replica(name, vantage, tmp_path, redis.url)
        for name, vantage in (("a", "fra"), ("b", "ams"), ("c", "sin"))
    )
    a.write(ports, ca, dead=frozenset({EU}))
    for r in (b, c):
        r.write(ports, ca)
    async with processes() as nursery, cookieless_client() as client:
        for r in (a, b, c):
            await r.start(nursery)

        # EU unreachable from a only: a's own vantage says unhealthy, the majority healthy.
        for r in (a, b, c):
            await until_json(
                client,
                r.status_url,
                health("eu", "healthy", fra="unhealthy", ams="healthy", sin="healthy"),
            )
            await until_json(
                client,
                r.status_url,
                health("us", "healthy", fra="healthy", ams="healthy", sin="healthy"),
            )
        # a lists a member once a heartbeat of a's (every 0.5 s) read that member's key.
        status = (
            await until_json(client, a.status_url, lambda s: len(s["cluster"]["peers"]) == 3)
        )["cluster"]
        assert status["connected"] and not status["config_mismatch"]
        assert not status["secret_mismatch"]
        assert sorted(p["vantage"] for p in status["peers"]) == ["ams", "fra", "sin"]

        # A cookie issued by a routes to the same endpoint through b and c.
        r0 = await client.get(f"{a.base}/", headers={"Host": LB})
        cookie = r0.cookies["__cflb"]
        first = r0.json()["tunnel"]
        for r in (a, b, c):
            for _ in range(10):
                assert await tunnel_of(client, r.base, cookie) == (200, first)

        # A session b pinned to EU: b and c serve it from EU; a honours it too (EU is healthy
        # by the majority) but cannot reach EU, and a pinned session does not fail over under
        # zero_downtime_failover "none" (the default, R45): it gets the refusal's 521, as on
        # Cloudflare.  Deployments whose replicas do not all reach every endpoint set
        # "temporary" or "sticky" (docs/cluster.md, "Failure modes").
        eu_session = await pinned_to(client, b.base, EU)
        for r in (b, c):
            assert await tunnel_of(client, r.base, eu_session) == (200, EU)
        assert await tunnel_of(client, a.base, eu_session) == (521, "")

        # EU unreachable from b too: unhealthy on all three.
        b.write(ports, ca, dead=frozenset({EU}))
        assert (
            await client.post(f"http://127.0.0.1:{b.admin}/reload", headers={"X-Tunnel-LB": "1"})
        ).status_code == 200
        for r in (a, b, c):
            await until_json(client, r.status_url, health("eu", "unhealthy", ams="unhealthy"))
            assert Counter([await tunnel_of(client, r.base) for _ in range(5)]) == Counter(
                {(200, US): 5}
            )
        b.write(ports, ca)
        assert (
            await client.post(f"http://127.0.0.1:{b.admin}/reload", headers={"X-Tunnel-LB": "1"})
        ).status_code == 200
        for r in (a, b, c):
            await until_json(client, r.status_url, health("eu", "healthy", ams="healthy"))

        # Kill c: its vantage point drops out of a's and b's majority (fra U, ams H: a tie,
        # unhealthy), nothing else changes; us stays healthy everywhere.
        c.kill()
        for r in (a, b):
            await until_json(
                client,
                r.status_url,
                lambda s: (
                    "sin" not in endpoint(s, "eu")["vantages"]
                    and endpoint(s, "us")["health"] == "healthy"
                ),
            )

        # Restart c: healthy from its first request, before it probed anything itself.
        await c.start(nursery)
        got = await client.get(f"{c.base}/", headers={"Host": LB})  # it said ready: listening
        assert got.status_code == 200
        s = (await client.get(c.status_url)).json()
        assert endpoint(s, "us")["health"] == "healthy"
        assert endpoint(s, "us")["vantages"]["fra"]["health"] == "healthy"
        for r in (a, b, c):
            await until_json(client, r.status_url, health("eu", "healthy", sin="healthy"))

        # Redis dies under load (new sessions: no request carries a cookie): no request
        # fails, every replica reports degraded.
        failures: list[str] = []
        done = trio.Event()
        sent = 0

        async def load() -> None:
            nonlocal sent
            while not done.is_set():
                for r in (a, b, c):
                    code, _ = await tunnel_of(client, r.base)
                    sent += 1
                    if code != 200:
                        failures.append(f"{r.name}: {code}")
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as traffic:
            traffic.start_soon(load)
            await redis.stop()
            for r in (a, b, c):
                s = await until_json(client, r.status_url, lambda s: s["cluster"]["degraded"])
                assert s["cluster"]["degraded"]
            metrics = (await client.get(f"http://127.0.0.1:{a.admin}/metrics")).text
            assert "lb_cluster_store_connected 0.0" in metrics
            await redis.start()
            for r in (a, b, c):
                await until_json(
                    client,
                    r.status_url,
                    lambda s: (
                        s["cluster"]["connected"]
                        and len(s["cluster"]["peers"]) == 3
                        and set(endpoint(s, "eu")["vantages"]) == {"fra", "ams", "sin"}
                    ),
                )
            done.set()
        assert failures == [] and sent > 0
        for r in (a, b, c):
            assert "cluster_degraded" in r.log.read_text()
            assert "cluster_rejoined" in r.log.read_text()
            assert SECRET not in r.log.read_text()

        for r in (a, b, c):
            assert r.process is not None
            r.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await r.process.wait() == 0, r.log.read_text()[-2000:]


async def test_replicas_of_one_vantage_split_probes_and_take_over(
    stack: tuple[RedisServer, dict[str, int], Path], tmp_path: Path
) -> None:
    redis, ports, ca = stack
    a, b = (Replica(name, "fra", tmp_path, redis.url) for name in ("a", "b"))
    for r in (a, b):
        r.write(ports, ca)
    async with processes() as nursery, httpx.AsyncClient(timeout=5) as client:
        for r in (a, b):
            await r.start(nursery)

        async def own_count(r: Replica) -> int | None:
            """The probes ``r`` runs, once it sees both members; None before."""
            s = await until_json(client, r.status_url, lambda s: True)
            cluster = s["cluster"]
            return cluster["probes_owned"] if len(cluster["peers"]) == 2 else None

        # Two probe identities between two members, each probed once: both replicas see both
        # members and their own counts add up to 2 (rendezvous may give both to one member,
        # depending on the random member ids).  The counts each replica reports for itself
        # are read, not the heartbeat copies in ``peers``, which lag by one heartbeat.
        async def split() -> list[int | None] | None:
            counts = [await own_count(r) for r in (a, b)]
            return counts if None not in counts and sum(c or 0 for c in counts) == 2 else None

        await wait_until(split, WAIT, what="the two replicas to split the probes", step=0.1)
        for r in (a, b):
            for name in ("eu", "us"):
                await until_json(client, r.status_url, health(name, "healthy", fra="healthy"))
        b.kill()  # no clean stop: its heartbeat must expire
        # The documented event: b's heartbeat expires (member_ttl), so a's peers are a alone;
        # a then owns both probes.  (probes_owned == 2 alone is no sign: a may have owned
        # both before b died.)
        s = await until_json(
            client,
            a.status_url,
            lambda s: (
                [p["self"] for p in s["cluster"]["peers"]] == [True]
                and s["cluster"]["probes_owned"] == 2
            ),
        )
        for name in ("eu", "us"):
            assert endpoint(s, name)["health"] == "healthy"
