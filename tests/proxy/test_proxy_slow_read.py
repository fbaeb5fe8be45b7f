"""Slow response reads (the "slow read"): the response write's rate clock,
``limits.min_response_rate`` and the connection cap (lb/proxy/watchdog.py,
lb/proxy/replies.py, lb/proxy/connection.py; docs/proxy.md, "Slow response reads").

``idle_timeout`` is pushed once per write, so it cuts (as ``client_timeout``) a client that
takes a write slower than its size over ``idle_timeout``; the tests of the rate rules raise
``idle_timeout`` so that what cuts a slow reader is the rate at which it takes each write
the proxy is blocked on.  The clients here shrink their receive buffer, so that the proxy
blocks on them after a few kilobytes rather than after the megabytes loopback buffers take.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import h11
import pytest
import trio
import trio.testing
from proxy_support import LB_HOST, Certs, Client, Stack, start_stack
from waiting import wait_until

from lb.config.model import Limits, Listener
from lb.logs import JsonFormatter
from lb.proxy import capacity, connection, replies, state, watchdog
from lb.proxy.errors import RequestError
from lb.proxy.hooks import ProxyHooks
from lb.proxy.listeners import open_listeners

GRACE = 0.5
"""The grace of these tests (``min_response_rate_grace``), so that a slow reader is judged
soon."""
RATE = 1 << 20
"""The minimum rate of these tests: 1 MiB/s, far above what the slow readers take and far
below what a loopback client at full speed takes."""
BIG = 16 << 20
"""A response far larger than what the socket buffers hold."""


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    return [line for line in lines if line["event"] == name]


async def _connect(port: int, tls: ssl.SSLContext | None = None) -> trio.abc.Stream:
    """A client connection with a small receive buffer (set before the connect, so that
    the TCP window is small from the start)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=LB_HOST)
    return stream


async def _ask(stream: trio.abc.Stream, target: str) -> Client:
    client = Client(stream)
    await client.send_head("GET", target, [("host", LB_HOST)])
    await client.end_body()
    return client


async def _read(stream: trio.abc.Stream, every: float = 0.0, size: int = 65536) -> int:
    """Read until the proxy closes or cuts; ``every`` > 0 paces the reads (the attack under
    test: ``size`` bytes every ``every`` seconds).  Returns the bytes read."""
    total = 0
    while True:
        try:
            data = await stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return total
        if not data:
            return total
        total += len(data)
        if every:
            await trio.sleep(every)  # a slow reader, on purpose


async def _https_stack(nursery: trio.Nursery, certs: Certs, tmp_path: Path, **config: Any) -> Stack:
    pem = str(tmp_path / "lb.pem")
    certs.ca.issue_cert(LB_HOST).private_key_and_cert_chain_pem.write_to_path(pem)
    spec = Listener(address="127.0.0.1", port=0, certificate=pem, key=pem)
    return await start_stack(nursery, certs, 1, listeners=await open_listeners([spec]), **config)


# ---------------------------------------------------------------------- the clock


async def test_the_clock_runs_only_during_a_write_and_judges_it_alone() -> None:
    """``flush_down`` sets the flag and the write's size around the write, and clears the
    flag and the clock after it, also when the write is cancelled: the next write is
    judged on its own, and no time outside a write is charged to the client."""
    ours, theirs = trio.testing.lockstep_stream_pair()  # a write waits for the reader
    client = state.Client(ours, https=False)
    ex = cast(Any, SimpleNamespace(client=client, stream=ours))
    clock = client.send_clock
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(replies.flush_down, ex, [b"ab", b"cd"], 0.0)
            await wait_until(lambda: clock.waiting)
            assert clock.size == 4
            clock.advance(3.0)
            assert clock.elapsed == 3.0
            scope.cancel()
    assert not clock.waiting and clock.elapsed == 0.0
    ours, theirs = trio.testing.lockstep_stream_pair()
    ex.stream = ours
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replies.flush_down, ex, [b"x" * 10], 0.0)
        await wait_until(lambda: clock.waiting)
        clock.advance(3.0)
        assert await theirs.receive_some(100) == b"x" * 10
    assert (clock.waiting, clock.size, clock.elapsed) == (False, 10, 0.0)


def _watched(*sizes_and_elapsed: tuple[int, float], min_rate: int = 0) -> Any:
    """A stub ``Shared`` whose clients are each blocked on a write of that size, for that
    long."""
    limits = Limits(min_response_rate=min_rate, min_response_rate_grace=GRACE)
    clients = []
    for size, elapsed in sizes_and_elapsed:
        ours, _ = trio.testing.memory_stream_pair()
        client = state.Client(ours, https=False)
        record = SimpleNamespace(bytes_out=size, bytes_in=0)
        client.exchange = cast(Any, SimpleNamespace(record=record, clock=None, req_done=True))
        clock = client.send_clock
        clock.waiting, clock.size, clock.elapsed, clock.seen = True, size, elapsed, True
        clients.append(client)
    return SimpleNamespace(
        engine=SimpleNamespace(config=SimpleNamespace(engine=SimpleNamespace(limits=limits))),
        clients=clients,
        readers={},
        blocked_writes=0,
        slow_reads=0,
        read_log=state.Throttle(),
        hooks=ProxyHooks(),
        bodies={},
        slow={},
        slow_bodies=0,
        slow_log=state.Throttle(),
    )


async def test_below_the_cap_slow_readers_are_only_listed_slowest_first() -> None:
    # 240 B/s (the cap's rate): 1000 bytes blocked 10 s is 100 B/s, 2000 bytes 10 s is
    # 200 B/s, 100,000 bytes 10 s is above it, and 10 bytes within the grace is not judged.
    shared = _watched((2000, 10.0), (1000, 10.0), (100_000, 10.0), (10, GRACE / 2))
    slow, slowest, *_ = shared.clients
    connection.watch_clients(shared, trio.current_time(), 0.0)
    assert list(shared.readers) == [slowest, slow]
    assert shared.blocked_writes == 4 and shared.slow_reads == 0
    assert not any(c.watchdog.scope.cancel_called for c in shared.clients)
    # A write that ends clears its clock: it is no longer listed at the next tick.
    slowest.send_clock.waiting = False
    connection.watch_clients(shared, trio.current_time(), 0.0)
    assert list(shared.readers) == [slow]
    assert shared.blocked_writes == 3


async def test_with_min_response_rate_a_slow_reader_is_cut_at_once() -> None:
    shared = _watched((1000, 10.0), (100_000, 10.0), min_rate=5000)
    slow, fair = shared.clients
    connection.watch_clients(shared, trio.current_time(), 0.0)
    assert slow.watchdog.scope.cancel_called and not fair.watchdog.scope.cancel_called
    assert slow.send_clock.closed_by == "min_response_rate"
    assert (shared.slow_reads, shared.readers) == (1, {})


async def test_the_first_tick_a_write_is_seen_is_not_charged() -> None:
    """A fast client caught once mid-write (a write smaller than the rate times a tick,
    begun just before the tick) is not cut, however short the grace: the clock never runs
    ahead of the time the client held the write.  Caught at the next tick as well, it did
    hold that write a whole tick, and is cut."""
    tick = 0.25
    shared = _watched((1000, 0.0), min_rate=RATE)
    shared.engine.config.engine.limits = Limits(min_response_rate=RATE, min_response_rate_grace=0.1)
    [client] = shared.clients
    client.send_clock.seen = False  # a write the loop has not seen yet
    connection.watch_clients(shared, trio.current_time(), tick)
    assert not client.watchdog.scope.cancel_called and shared.slow_reads == 0
    assert (client.send_clock.seen, client.send_clock.elapsed) == (True, 0.0)
    connection.watch_clients(shared, trio.current_time(), tick)
    assert client.watchdog.scope.cancel_called and shared.slow_reads == 1


@pytest.mark.parametrize("first", ["read", "body"])
async def test_a_connection_slow_both_ways_is_counted_once(
    first: str,
) -> None:
    """The endpoint answered while the request body was still read, so both clocks run,
    and the client neither sends nor reads: the response clock cuts it first, and the body
    clock does not count it again (one hook, one count, and the record says
    ``read_too_slow``).  The other way round too: a body closed first is not counted as a
    slow read."""
    shared = _watched((1000, 10.0), min_rate=5000)
    shared.engine.config.engine.limits = Limits(
        min_response_rate=5000, min_body_rate=5000, min_body_rate_grace=GRACE
    )
    fired: list[str] = []
    shared.hooks = ProxyHooks(
        on_slow_read=lambda closed_by: fired.append(f"read:{closed_by}"),
        on_slow_body=lambda closed_by: fired.append(f"body:{closed_by}"),
    )
    [client] = shared.clients
    body = watchdog.RateClock()
    body.waiting, body.elapsed = True, 10.0
    client.exchange.clock = body
    client.exchange.req_done = False
    shared.bodies[client] = body
    if first == "read":
        connection.watch_clients(shared, trio.current_time(), 0.0)
        connection.judge_bodies(shared, 0.0)
        connection.watch_clients(shared, trio.current_time(), 0.0)
        connection.judge_bodies(shared, 0.0)
        assert fired == ["read:min_response_rate"]
        assert (shared.slow_reads, shared.slow_bodies, shared.slow) == (1, 0, {})
        assert (client.send_clock.closed_by, body.closed_by) == ("min_response_rate", "")
    else:
        connection.judge_bodies(shared, 0.0)
        connection.watch_clients(shared, trio.current_time(), 0.0)
        assert fired == ["body:min_body_rate"]
        assert (shared.slow_reads, shared.slow_bodies) == (0, 1)
        assert (client.send_clock.closed_by, body.closed_by) == ("", "min_body_rate")


async def test_the_record_says_the_cause_whose_hook_fired() -> None:
    """The timeout handler's record follows the clock that closed the connection."""
    for closed, error in (
        (("", "min_response_rate"), RequestError.READ_TOO_SLOW),
        (
            ("min_body_rate", ""),
            RequestError.BODY_TOO_SLOW,
        ),
    ):
        client = state.Client(cast(Any, None), https=False)
        body = watchdog.RateClock()
        body.closed_by, client.send_clock.closed_by = closed
        record = SimpleNamespace(error="", status=0, attempts=[])
        ex = cast(
            Any,
            SimpleNamespace(
                shared=SimpleNamespace(expired=False),
                record=record,
                conn=SimpleNamespace(our_state=None),
                up=None,
                clock=body,
                client=client,
                phase=state.Phase.RELAY,
                responded=True,
            ),
        )
        await replies.timed_out(ex)
        assert record.error == error


def test_at_the_cap_a_slow_reader_goes_after_slow_bodies() -> None:
    readers = {"slowest": None, "slow": None}
    assert capacity.make_room({"ka": None}, {}, 12.0, 2.0, {}, readers) == "ka"
    assert capacity.make_room({}, {}, 12.0, 2.0, {"trickle": None}, readers) == "trickle"
    assert capacity.make_room({}, {"old": 10.0}, 12.0, 2.0, {}, readers) == "old"
    assert capacity.make_room({}, {}, 12.0, 2.0, {}, readers) == "slowest"
    assert capacity.make_room({}, {}, 12.0, 2.0, {}, {}) is None


# ---------------------------------------------------------------------- over sockets


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
async def test_a_slow_reader_is_cut(
    nursery: trio.Nursery,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    https: bool,
) -> None:
    """``min_response_rate`` set: a client taking a large response at ~20 KB/s (1 KiB every
    50 ms) is cut once a write has been blocked on it past the grace, long before
    ``idle_timeout`` (600 s here; a 64 KiB write at that pace takes seconds).  The upstream
    connection, its response half read, is closed, not pooled."""
    limits = Limits(min_response_rate=RATE, min_response_rate_grace=GRACE, idle_timeout=600)
    tls = None
    if https:
        stack = await _https_stack(nursery, certs, tmp_path, limits=limits)
        tls = ssl.create_default_context()
        certs.ca.configure_trust(tls)
    else:
        stack = await start_stack(nursery, certs, 1, limits=limits)
    with caplog.at_level(logging.WARNING, logger="tunnel_lb"):
        stream = await _connect(stack.port, tls)
        await _ask(stream, f"/stream?n={BIG}")
        with trio.fail_after(30):
            got = await _read(stream, every=0.05, size=1024)
        await trio.aclose_forcefully(stream)
    assert got < BIG // 4
    [record] = await stack.settled()
    assert (record.status, record.error) == (200, RequestError.READ_TOO_SLOW)
    assert stack.server.slow_reads == 1
    assert stack.server.pool.idle_count() == 0  # the half-read upstream connection is gone
    [event] = _events(caplog, "response_read_too_slow")
    assert event["level"] == "warning"
    assert (event["closed_by"], event["peer"], event["slow_reads"]) == (
        "min_response_rate",
        "127.0.0.1",
        1,
    )
    assert isinstance(event["write"], int) and 0 < event["write"] < RATE * GRACE
    # The proxy serves the next client as before, on a new upstream connection.
    opened = stack.server.pool.opened
    async with Client(await _connect(stack.port, tls)) as client:
        assert (await client.request()).status == 200
    assert stack.server.pool.opened == opened + 1


async def test_by_default_idle_timeout_bounds_each_blocked_write(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """The rate rule off (the default): ``idle_timeout`` is pushed once per write, not per
    byte the client takes, so a client slower than ``write size / idle_timeout`` (here 1 KiB
    every 0.25 s, ~4 KB/s, against 64 KiB writes and a 1 s ``idle_timeout``: 64 KB/s) is
    cut as ``client_timeout`` once a write has been blocked on it that long.  It is not a
    slow read: nothing counts it in ``slow_reads``."""
    limits = Limits(idle_timeout=1.0)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    stream = await _connect(stack.port)
    await _ask(stream, f"/stream?n={BIG}")
    with trio.fail_after(30):
        got = await _read(stream, every=0.25, size=1024)
    await trio.aclose_forcefully(stream)
    assert got < BIG // 4
    [record] = await stack.settled()
    assert (record.status, record.error) == (200, RequestError.CLIENT_TIMEOUT)
    assert stack.server.slow_reads == 0


async def test_a_fast_reader_of_a_slow_endpoint_is_not_cut(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """The clock runs only while the proxy is blocked writing to the client: an endpoint
    that sends 1 KiB every 50 ms for 2 s (~20 KB/s, far below the rate over the wall
    clock) is not the client's doing, and a client taking each byte at once is served."""
    limits = Limits(min_response_rate=RATE, min_response_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    async with await Client.connect(stack.port) as client:
        with trio.fail_after(30):
            response = await client.request("GET", "/drip?n=40&s=0.05")
    assert (response.status, len(response.body)) == (200, 40 * 1024)
    [record] = await stack.settled()
    assert record.error == ""
    assert stack.server.slow_reads == 0


async def test_a_download_at_full_speed_is_untouched(nursery: trio.Nursery, certs: Certs) -> None:
    # A longer grace than the other tests: on this shared machine the whole process may be
    # descheduled for a while, and that is not the client's doing either.
    limits = Limits(min_response_rate=RATE, min_response_rate_grace=2.0)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    async with await Client.connect(stack.port) as client:
        with trio.fail_after(60):
            await client.send_head("GET", f"/stream?n={BIG}", [("host", LB_HOST)])
            await client.end_body()
            response = await client.read_response(count_only=True)
        assert (response.status, response.body) == (200, str(BIG).encode())
        assert (await client.request()).status == 200  # the connection is kept
    records = await stack.settled()
    assert [r.error for r in records] == ["", ""]
    assert stack.server.slow_reads == 0


async def test_at_the_cap_the_slowest_reader_makes_room(
    nursery: trio.Nursery,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``min_response_rate`` off (the default): slow readers are left alone below the cap,
    but at the cap one taking its response below the cap's rate is cut to make room for a
    new client.  The cap's rate (240 B/s) is raised here so that a blocked write of 64 KiB
    is found slow within seconds rather than minutes."""
    monkeypatch.setattr(capacity, "RESPONSE_RATE", RATE)
    limits = Limits(max_connections=2, min_response_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    server = stack.server
    # Two clients ask for a large response, then read nothing.
    readers = [await _ask(await _connect(stack.port), f"/stream?n={BIG}") for _ in range(2)]
    await wait_until(lambda: server.slow_readers == 2)
    assert server.slow_reads == 0  # found slow, but nothing enforces the rate below the cap
    with caplog.at_level(logging.WARNING, logger="tunnel_lb"):
        async with await Client.connect(stack.port) as newcomer:
            assert (await newcomer.request()).status == 200
    assert (server.shed, server.refused, server.slow_reads) == (1, 0, 1)
    [event] = _events(caplog, "response_read_too_slow")
    assert event["closed_by"] == "connection_cap"
    # One was cut; the other is still served in full once its client reads.
    served = 0
    for reader in readers:
        with trio.fail_after(60):
            try:
                response = await reader.read_response(count_only=True)
            except (h11.RemoteProtocolError, trio.BrokenResourceError):
                continue  # cut short
        assert (response.status, response.body) == (200, str(BIG).encode())
        served += 1
    assert served == 1
    records = await stack.settled()
    assert sorted(r.error for r in records) == ["", "", RequestError.READ_TOO_SLOW]
    for reader in readers:
        await reader.aclose()
