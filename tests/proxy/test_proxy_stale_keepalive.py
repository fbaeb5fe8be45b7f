"""Pooled connections an endpoint closes on its own schedule lose no request, POSTs included.

The endpoint here closes idle keep-alive connections after a short random idle time (as
Node.js does after 5 s, sooner so the test is short) and, at random moments, just as the
next request on a kept-alive connection arrives (the race no check before reuse can see).
Under a mixed GET/POST load from concurrent clients every request must succeed: dead idle
connections are not reused, and a request whose body was buffered is retried once on a fresh
connection when a reused one breaks before any response byte (``lb/core/attempts.py``).
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import h11
import pytest
import trio
from proxy_support import Certs, Client, make_config

from lb.engine import Engine as LbEngine
from lb.proxy import Attempt, ProxyHooks, ProxyServer, RequestRecord

CLIENTS = 8
REQUESTS = 30


@dataclass
class Flaky:
    """What the flaky endpoint did: connections, idle closes and closes in the race."""

    port: int = 0
    connections: int = 0
    idle_closes: int = 0
    race_closes: int = 0
    answered: int = 0


async def serve_flaky(
    ssl_context: ssl.SSLContext,
    rng: random.Random,
    race: float,
    *,
    idle: tuple[float, float] = (0.005, 0.06),
    task_status: trio.TaskStatus[Flaky] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An HTTPS endpoint that closes connections idle for a random time within ``idle``
    (seconds), and with probability ``race`` closes a kept-alive connection when its next
    request arrives, unanswered."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    flaky = Flaky(port=listeners[0].socket.getsockname()[1])
    listener = trio.SSLListener(listeners[0], ssl_context, https_compatible=True)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(flaky)
            while True:
                stream = await listener.accept()
                flaky.connections += 1
                nursery.start_soon(_flaky_conn, stream, flaky, rng, race, idle)
    finally:
        await trio.aclose_forcefully(listener)


async def _flaky_conn(
    stream: trio.abc.Stream,
    flaky: Flaky,
    rng: random.Random,
    race: float,
    idle_range: tuple[float, float],
) -> None:
    conn = h11.Connection(h11.SERVER)
    served = 0
    try:
        while True:
            # Only a kept-alive connection idles out: a fresh one waits for its first request.
            idle = rng.uniform(*idle_range) if served else math.inf
            event: Any = h11.NEED_DATA
            with trio.move_on_after(idle) as waiting:
                event = await _next(conn, stream)
            if waiting.cancelled_caught:
                if conn.their_state is h11.IDLE:
                    flaky.idle_closes += 1  # idle too long: close, as a keep-alive timeout does
                return
            if not isinstance(event, h11.Request):
                return
            if served and rng.random() < race:
                flaky.race_closes += 1  # closed just as the request arrived, unread: a reset
                return
            size = 0
            while True:
                ev = await _next(conn, stream)
                if isinstance(ev, h11.Data):
                    size += len(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return
            body = b"%d" % size
            head = h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(body))])
            out = b"".join(
                conn.send(e) or b"" for e in (head, h11.Data(data=body), h11.EndOfMessage())
            )
            await stream.send_all(out)
            served += 1
            flaky.answered += 1
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


@dataclass
class Proxy:
    server: ProxyServer
    engine: LbEngine
    port: int
    records: list[RequestRecord]
    retries: list[tuple[str, Attempt]]


async def start_proxy(nursery: trio.Nursery, certs: Certs, port: int, **engine: Any) -> Proxy:
    cfg = make_config([port])
    if engine:
        cfg = replace(cfg, engine=replace(cfg.engine, **engine))
    lb = LbEngine(cfg, now=trio.current_time())
    records: list[RequestRecord] = []
    retries: list[tuple[str, Attempt]] = []
    hooks = ProxyHooks(on_request_done=records.append, on_retry=lambda r, a: retries.append((r, a)))
    server = ProxyServer(lb, hooks=hooks, rng=random.Random(1), upstream_ssl=certs.client)
    listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    addresses = await nursery.start(server.serve, listeners)
    return Proxy(server, lb, addresses[0][1], records, retries)


def _mix(seed: int) -> Iterator[tuple[str, bytes | None]]:
    rng = random.Random(seed)
    for _ in range(REQUESTS):
        if rng.random() < 0.5:
            yield "GET", None
        else:
            yield "POST", b"p" * rng.randint(1, 4000)


async def test_no_request_is_lost_to_an_endpoint_closing_keep_alive_connections(
    nursery: trio.Nursery, certs: Certs
) -> None:
    flaky: Flaky = await nursery.start(serve_flaky, certs.backend, random.Random(7), 0.3)
    proxy = await start_proxy(nursery, certs, flaky.port)
    failures: list[tuple[str, int, bytes]] = []
    done = {"GET": 0, "POST": 0}

    async def client(seed: int) -> None:
        think = random.Random(-seed)
        async with await Client.connect(proxy.port) as c:
            for method, body in _mix(seed):
                resp = await c.request(method, "/", body=body)
                want = b"%d" % len(body or b"")
                if (resp.status, resp.body) != (200, want):
                    failures.append((method, resp.status, resp.body))
                done[method] += 1
                await trio.sleep(think.uniform(0, 0.02))  # a think time

    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for i in range(CLIENTS):
                clients.start_soon(client, i)
    assert failures == []
    assert done["GET"] + done["POST"] == CLIENTS * REQUESTS and done["POST"] > 0
    # The endpoint really did close connections under the pool, both ways.
    assert flaky.race_closes > 0 and flaky.idle_closes > 0
    stale = [r for r in proxy.records if r.retried == "stale_connection"]
    assert any(r.method == "POST" for r in stale)
    assert all(len(r.attempts) == 2 and r.attempts[0].reused for r in stale)
    assert all(r.status == 200 for r in proxy.records)


async def test_a_post_with_a_streamed_body_is_not_replayed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """A body too large to buffer went out as it arrived: it cannot be sent again (502)."""
    flaky: Flaky = await nursery.start(
        partial(serve_flaky, certs.backend, random.Random(3), 1.0, idle=(30.0, 30.0))
    )
    proxy = await start_proxy(nursery, certs, flaky.port)
    async with await Client.connect(proxy.port) as c:
        assert (await c.request("GET", "/")).status == 200
        resp = await c.request("POST", "/", body=b"b" * (1 << 20))
    assert resp.status == 502
    record = proxy.records[-1]
    assert record.attempts[0].reused and record.retried is None
    assert flaky.race_closes == 1


@pytest.mark.parametrize(("bound", "reused"), [(0.0, False), (30.0, True)])
async def test_the_engine_idle_bound_drops_connections_idle_longer(
    nursery: trio.Nursery, certs: Certs, bound: float, reused: bool
) -> None:
    """``engine.upstream_idle_timeout``: a pooled connection idle longer is never reused."""
    flaky: Flaky = await nursery.start(
        partial(serve_flaky, certs.backend, random.Random(5), 0.0, idle=(30.0, 30.0))
    )
    proxy = await start_proxy(nursery, certs, flaky.port, upstream_idle_timeout=bound)
    async with await Client.connect(proxy.port) as c:
        assert (await c.request("GET", "/")).status == 200
        assert (await c.request("POST", "/", body=b"x")).status == 200
    assert [r.attempts[0].reused for r in proxy.records] == [False, reused]
    assert flaky.connections == (1 if reused else 2)
