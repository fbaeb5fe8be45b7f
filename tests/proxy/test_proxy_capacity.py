"""The connection cap and the file-descriptor limit (lb/proxy/capacity.py, lb/proxy/connection.py;
docs/proxy.md, "Connection cap")."""

from __future__ import annotations

import contextlib
import json
import resource
import ssl
from types import SimpleNamespace
from typing import Any

import h11
import pytest
import trio
import trio.testing
from proxy_support import LB_HOST, Certs, Client, start_stack
from waiting import wait_until

from lb.config.model import Limits
from lb.logs import JsonFormatter
from lb.proxy import capacity, connection, http1, state
from lb.proxy.capacity import RESERVED_FDS, default_max_connections, raise_fd_limit


def test_soft_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip(f"hard RLIMIT_NOFILE is unlimited here (soft {soft}): nothing to raise to")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256, hard), hard))
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert raise_fd_limit() == hard  # already there: unchanged
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_default_cap_follows_the_fd_limit() -> None:
    assert default_max_connections(1024) == (1024 - RESERVED_FDS) // 2
    assert default_max_connections(80) == 16
    assert default_max_connections(0) == 10_000
    assert default_max_connections(1 << 20) > 500_000


async def _request(client: Client) -> int:
    return (await client.request("GET", "/")).status


async def test_at_the_cap_the_idlest_connection_is_shed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_connections=3))
    server = stack.server
    assert server.max_connections == 3
    silent = []
    for n in range(3):  # one at a time, so that the order of their idleness is known
        silent.append(await Client.connect(stack.port))
        await wait_until(lambda n=n: server.idle_connections == n + 1)
    # A keep-alive connection that served a request is idle again, and younger.
    assert await _request(silent[2]) == 200
    await wait_until(lambda: server.idle_connections == 3)
    async with await Client.connect(stack.port) as newcomer:
        assert await _request(newcomer) == 200
    # The connection silent the longest was closed to make room; the others still serve.
    with trio.fail_after(5):
        assert await silent[0].stream.receive_some(100) == b""
    assert await _request(silent[1]) == 200
    assert await _request(silent[2]) == 200
    assert (server.shed, server.refused) == (1, 0)
    for client in silent:
        await client.aclose()


async def test_at_the_cap_with_nothing_idle_a_new_connection_is_refused(
    nursery: trio.Nursery,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No grace at all: only "a complete request is never evicted" keeps the busy ones.
    monkeypatch.setattr(capacity, "HEAD_GRACE", 0.0)
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_connections=2))
    server = stack.server
    busy = [await Client.connect(stack.port) for _ in range(2)]
    for client in busy:  # a request in progress, its body still to come: never shed
        await client.send_head("POST", "/", [("host", LB_HOST), ("content-length", "2")])
    await wait_until(lambda: server.active_requests == 2)
    refused = await trio.open_tcp_stream("127.0.0.1", stack.port)
    with trio.fail_after(5):
        with contextlib.suppress(trio.BrokenResourceError):  # a reset is a refusal too
            assert await refused.receive_some(100) == b""
    await trio.aclose_forcefully(refused)
    assert (server.shed, server.refused) == (0, 1)
    # An event with fields (lb/logs.py), not a sentence in the message of a ``log`` event.
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    [cap] = [line for line in lines if line["event"] == "connection_cap_reached"]
    assert cap["level"] == "warning"
    assert {k: cap[k] for k in ("max_connections", "shed", "refused")} == {
        "max_connections": 2,
        "shed": 0,
        "refused": 1,
    }
    # The busy connections were left alone: both complete their requests.
    for client in busy:
        await client.send_body(b"ok")
        await client.end_body()
        assert (await client.read_response()).status == 200
        await client.aclose()


async def test_at_the_cap_a_head_stuck_past_the_grace_makes_room(
    nursery: trio.Nursery, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slowloris (half heads, never finished) cannot hold the cap until ``idle_timeout``:
    once the oldest half head is older than the grace, a new client takes its place."""
    monkeypatch.setattr(capacity, "HEAD_GRACE", 3600.0)
    limits = Limits(max_connections=3, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    server = stack.server
    slow = []
    for n in range(3):  # one at a time, so that the order of their heads is known
        client = await Client.connect(stack.port)
        await client.stream.send_all(f"GET /half HTTP/1.1\r\nHost: {LB_HOST}\r\n".encode())
        slow.append(client)
        await wait_until(lambda n=n: server.partial_heads == n + 1)
    # Within the grace, a half head is a client on its way: the newcomer is refused.
    early = await trio.open_tcp_stream("127.0.0.1", stack.port)
    with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
        assert await early.receive_some(100) == b""
    await trio.aclose_forcefully(early)
    assert (server.shed, server.refused) == (0, 1)
    # Past the grace (made zero rather than waited out), the oldest half head makes room.
    monkeypatch.setattr(capacity, "HEAD_GRACE", 0.0)
    async with await Client.connect(stack.port) as newcomer:
        assert await _request(newcomer) == 200
    # The oldest half head was closed for it, silently; the younger ones still finish.
    with trio.fail_after(5):
        assert await slow[0].stream.receive_some(100) == b""
    assert (server.shed, server.refused) == (1, 1)
    for client in slow[1:]:
        await client.stream.send_all(b"\r\n")
        client.conn.send(h11.Request(method="GET", target="/half", headers=[("host", LB_HOST)]))
        client.conn.send(h11.EndOfMessage())
        assert (await client.read_response()).status == 200
    for client in slow:
        await client.aclose()


def test_the_room_rule_prefers_idle_then_the_oldest_overdue_head() -> None:
    idle = {"ka": None, "new": None}
    heads = {"old": 10.0, "young": 11.5}
    assert capacity.make_room(idle, heads, now=12.0, grace=2.0) == "ka"
    assert capacity.make_room({}, heads, now=12.0, grace=2.0) == "old"
    assert capacity.make_room({}, heads, now=11.9, grace=2.0) is None
    assert capacity.make_room({}, {}, now=99.0, grace=2.0) is None


def _shared_stub(**fields: object) -> Any:
    """The fields of lb.proxy.state.Shared that starting a connection reads."""
    limits = Limits()
    engine = SimpleNamespace(config=SimpleNamespace(engine=SimpleNamespace(limits=limits)))
    return SimpleNamespace(engine=engine, draining=False, idle={}, heads={}, **fields)


async def test_a_head_completed_as_its_connection_is_shed_starts_no_request() -> None:
    """The cap can close a half head in the very round its last bytes arrive: the head is
    then dropped, not served (no 408 or 524 recorded for a shed connection, no request
    past the cap)."""
    ours, theirs = trio.testing.memory_stream_pair()
    client = state.Client(ours, https=False)
    shared = _shared_stub(clients=set())  # shed: no longer among the clients
    await theirs.send_all(f"GET / HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode())
    conn = http1.Connection(http1.SERVER)
    with trio.fail_after(5):
        assert await connection._read_head(shared, client, conn) is None
    shared.clients.add(client)  # the same bytes on a connection still counted: a request
    conn = http1.Connection(http1.SERVER)
    await theirs.send_all(f"GET / HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode())
    with trio.fail_after(5):
        assert isinstance(await connection._read_head(shared, client, conn), http1.Request)


async def test_a_tls_connection_started_once_the_drain_began_closes_at_once() -> None:
    """Accepted just before shutdown, it was not idle when the idle connections were
    closed: it must not wait for ``idle_timeout`` (its client sends nothing here)."""
    a, b = trio.socket.socketpair()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = state.Client(trio.SSLStream(trio.SocketStream(a), ctx, server_side=True), True)
    shared = _shared_stub(clients={client})
    shared.draining = True
    try:
        with trio.fail_after(5):
            assert await connection._tls_start(shared, client) is connection._Start.CLOSE
        assert shared.idle == {}
    finally:
        a.close()
        b.close()
