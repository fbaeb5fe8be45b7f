"""Slow request bodies (the "slow POST"): the body's rate clock, ``limits.min_body_rate`` and
the connection cap (lb/proxy/watchdog.py, lb/proxy/connection.py; docs/proxy.md, "Slow
request bodies").

A client that sends a whole head and then its body a byte now and then never trips
``idle_timeout``; what closes it is its average rate over the time the proxy waited for it.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from proxy_support import LB_HOST, Certs, Client, start_stack
from waiting import wait_until

from lb.config.model import Limits, Listener
from lb.core.attempts import Body
from lb.logs import JsonFormatter
from lb.proxy import body, capacity, connection, http1, state
from lb.proxy.errors import RequestError, UpstreamError
from lb.proxy.hooks import ProxyHooks
from lb.proxy.listeners import open_listeners
from lb.proxy.watchdog import RateClock

GRACE = 0.5
"""The grace of these tests (``min_body_rate_grace``), so that a slow body is judged soon."""


def test_the_body_clock_runs_only_while_the_body_is_waited_for() -> None:
    clock = RateClock()
    clock.advance(10.0)  # steering, dialing, writing upstream: not the client's time
    assert clock.elapsed == 0.0
    clock.waiting = True
    clock.advance(0.25)
    clock.advance(0.25)
    assert clock.elapsed == 0.5


def test_a_body_is_slow_past_the_grace_below_the_average_rate() -> None:
    """Kestrel's test: the average since the clock started, judged once past the grace."""
    clock = RateClock()
    clock.waiting = True
    clock.advance(4.0)
    assert not clock.slow(0, rate=240, grace=5.0)  # within the grace, whatever came
    clock.advance(2.0)
    assert clock.slow(1439, rate=240, grace=5.0)  # 6 s at 240 B/s is 1440 bytes
    assert not clock.slow(1440, rate=240, grace=5.0)


def test_at_the_cap_a_slow_body_goes_after_idle_connections_and_overdue_heads() -> None:
    idle = {"ka": None}
    heads = {"old": 10.0}
    slow = {"trickle": None, "trickle2": None}
    assert capacity.make_room(idle, heads, now=12.0, grace=2.0, slow=slow) == "ka"
    assert capacity.make_room({}, heads, now=12.0, grace=2.0, slow=slow) == "old"
    # A head within its grace is not closed, and does not shield a slow body.
    assert capacity.make_room({}, heads, now=11.0, grace=2.0, slow=slow) == "trickle"
    assert capacity.make_room({}, heads, now=11.0, grace=2.0, slow={}) is None


async def _trickle(client: Client, every: float) -> None:
    """The slow POST: one body byte every ``every`` seconds, until cancelled."""
    while True:
        try:
            await client.send_body(b"x")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(every)  # the attack under test: bytes paced far below any rate


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    return [line for line in lines if line["event"] == name]


BODIES = {
    "content-length, streamed": [("content-length", "1000000")],
    "content-length, buffered": [("content-length", "60000")],
    "chunked": [("transfer-encoding", "chunked")],
}


@pytest.mark.parametrize("framing", list(BODIES), ids=list(BODIES))
async def test_a_trickling_body_is_answered_408(
    nursery: trio.Nursery, certs: Certs, caplog: pytest.LogCaptureFixture, framing: str
) -> None:
    """``min_body_rate`` set: a body far below it is answered 408 once past the grace, long
    before ``idle_timeout`` (which the trickle would never trip)."""
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    headers: Iterable[tuple[str, str]] = [("host", LB_HOST), *BODIES[framing]]
    with caplog.at_level(logging.WARNING, logger="tunnel_lb"):
        async with await Client.connect(stack.port) as client:
            await client.send_head("POST", "/sink", headers)
            async with trio.open_nursery() as sending:
                sending.start_soon(_trickle, client, 0.05)
                with trio.fail_after(10):
                    response = await client.read_response()
                sending.cancel_scope.cancel()
            assert response.status == 408
            assert response.header("connection") == "close"
    [record] = await stack.settled()
    assert (record.status, record.error) == (408, RequestError.BODY_TOO_SLOW)
    assert stack.server.slow_bodies == 1
    [event] = _events(caplog, "request_body_too_slow")
    assert event["level"] == "warning"
    assert (event["closed_by"], event["peer"], event["slow_bodies"]) == (
        "min_body_rate",
        "127.0.0.1",
        1,
    )
    assert isinstance(event["received"], int) and event["received"] < 1000
    # The proxy serves the next client as before.
    async with await Client.connect(stack.port) as client:
        assert (await client.request()).status == 200


async def test_a_body_too_slow_after_the_response_started_cuts_the_connection(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """No second answer once a response started (its head and the echoed bytes are out):
    the connection is cut, and the record says why."""
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    async with await Client.connect(stack.port) as client:
        await client.send_head("POST", "/echo", [("host", LB_HOST), ("content-length", "1000000")])
        await client.send_body(b"hello")
        with trio.fail_after(10):
            head = await client.next_event()
            assert head.status_code == 200
            received = b""
            while True:
                try:
                    data = await client.stream.receive_some(65536)
                except trio.BrokenResourceError:  # a reset is a cut too
                    break
                if not data:
                    break
                received += data
    assert b"hello" in received
    [record] = await stack.settled()
    assert (record.status, record.error) == (200, RequestError.BODY_TOO_SLOW)
    assert stack.server.slow_bodies == 1


async def test_a_cut_connection_is_closed_at_once_not_drained(
    nursery: trio.Nursery, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Draining the rest of a body (the linger) protects a 408 from the reset; when the
    response had started there is no 408 to protect, and the connection is closed outright.
    With the linger made endless, a drained connection would take the client's bytes for
    ever: a closed one resets them."""
    monkeypatch.setattr(connection, "LINGER_SECONDS", 3600.0)
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    async with await Client.connect(stack.port) as client:
        await client.send_head("POST", "/echo", [("host", LB_HOST), ("content-length", "1000000")])
        await client.send_body(b"hello")
        with trio.fail_after(10):
            assert (await client.next_event()).status_code == 200
        [record] = await stack.settled()
        assert (record.status, record.error) == (200, RequestError.BODY_TOO_SLOW)

        async def reset() -> bool:
            try:
                await client.stream.send_all(b"x" * 1024)
            except trio.BrokenResourceError:
                return True
            return False

        await wait_until(reset, what="the cut connection to reset the client's bytes")


async def test_a_body_slow_because_the_endpoint_reads_slowly_is_not_closed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """The rate clock stops while the proxy is blocked writing upstream: an endpoint that
    reads nothing for 3 s holds the client's 32 MiB back (about 10 MiB fit in the socket
    buffers), which over the wall clock would be under 4 MiB/s, and is not the client's
    doing."""
    size = 32 << 20
    limits = Limits(min_body_rate=4 << 20, min_body_rate_grace=GRACE)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    async with await Client.connect(stack.port) as client:
        with trio.fail_after(60):
            await client.send_head(
                "POST", "/sink-late?s=3", [("host", LB_HOST), ("content-length", str(size))]
            )
            await client.send_body(b"x" * size)
            response = await client.read_response()
    assert (response.status, response.body) == (200, str(size).encode())
    [record] = await stack.settled()
    assert record.error == ""
    assert stack.server.slow_bodies == 0


async def test_a_client_waiting_for_our_100_continue_is_not_slow(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """With ``Expect: 100-continue`` the client sends nothing of its body until our 100:
    that wait is ours, not the client's.  A body small enough to be read whole first is not
    waited for before the 100 (else the rate clock would run while the client, rightly,
    sends nothing, and it would be answered 408 past the grace)."""
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    size = 5000
    headers = [("host", LB_HOST), ("content-length", str(size)), ("expect", "100-continue")]
    async with await Client.connect(stack.port) as client:
        with trio.fail_after(10):
            await client.send_head("POST", "/sink", headers)
            event = await client.next_event()
            assert event.status_code == 100  # the proxy asked for the body: now it comes
            await client.send_body(b"x" * size)
            await client.end_body()
            response = await client.read_response()
    assert (response.status, response.body) == (200, str(size).encode())
    [record] = await stack.settled()
    assert record.error == ""
    assert stack.server.slow_bodies == 0


def _receiving(stream: trio.abc.Stream) -> tuple[Any, Any]:
    """A stub exchange whose request body ``body._receive`` reads from ``stream``."""
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
    assert type(conn.next_event()) is http1.Request
    shared = SimpleNamespace(bodies={})
    ex = SimpleNamespace(
        shared=shared,
        client=object(),
        stream=stream,
        conn=conn,
        clock=None,
        advance=lambda move, seconds=None: None,
    )
    return ex, shared


async def test_the_rate_clock_stops_when_the_read_is_cancelled_or_fails() -> None:
    """The flag that runs the clock is set only around the wait for the client's bytes:
    a read cancelled (a timeout, the pump stopped) or failed (the client gone) clears it,
    or the clock would run on while nothing is read."""
    ours, theirs = trio.testing.memory_stream_pair()
    ex, shared = _receiving(ours)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body._receive, ex, 60.0)
            await wait_until(lambda: ex.clock is not None and ex.clock.waiting)
            assert shared.bodies == {ex.client: ex.clock}
            scope.cancel()
    assert not ex.clock.waiting
    await theirs.aclose()  # the client is gone: the next read fails
    with pytest.raises(state.ClientError):
        await body._receive(ex, 60.0)
    assert not ex.clock.waiting
    await ours.aclose()  # a read on a closed stream raises from the stream itself
    with pytest.raises(state.ClientError):
        await body._receive(ex, 60.0)
    assert not ex.clock.waiting


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_upload_at_full_speed_is_untouched(
    nursery: trio.Nursery, certs: Certs, chunked: bool
) -> None:
    size = 8 << 20
    limits = Limits(min_body_rate=1 << 20, min_body_rate_grace=GRACE)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(size))
    async with await Client.connect(stack.port) as client:
        with trio.fail_after(60):
            await client.send_head("POST", "/sink", [("host", LB_HOST), framing])
            for _ in range(8):
                await client.send_body(b"x" * (size // 8))
            await client.end_body()
            response = await client.read_response()
        assert (response.status, response.body) == (200, str(size).encode())
        assert (await client.request()).status == 200  # the connection is kept
    records = await stack.settled()
    assert [r.error for r in records] == ["", ""]
    assert stack.server.slow_bodies == 0
    assert stack.server.request_bodies == 0  # settled requests leave no clock behind


async def test_at_the_cap_a_slow_body_makes_room(
    nursery: trio.Nursery, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """``min_body_rate`` off (the default): slow bodies are left alone below the cap, but at
    the cap the oldest one below 240 B/s is answered 408 to make room for a new client."""
    limits = Limits(max_connections=2, min_body_rate_grace=GRACE, idle_timeout=600)
    stack = await start_stack(nursery, certs, 1, limits=limits)
    server = stack.server
    size = 100_000
    slow = []
    for n in range(2):  # one at a time, so that the order of their bodies is known
        client = await Client.connect(stack.port)
        await client.send_head("POST", "/sink", [("host", LB_HOST), ("content-length", str(size))])
        await client.send_body(b"x" * 10)
        slow.append(client)
        await wait_until(lambda n=n: server.request_bodies == n + 1)
    await wait_until(lambda: server.slow_candidates == 2)
    assert server.slow_bodies == 0  # found slow, but nothing enforces the rate below the cap
    with caplog.at_level(logging.WARNING, logger="tunnel_lb"):
        async with await Client.connect(stack.port) as newcomer:
            assert (await newcomer.request()).status == 200
    # The oldest slow body made room: 408, counted, logged.
    with trio.fail_after(10):
        response = await slow[0].read_response()
    assert response.status == 408
    assert (server.shed, server.refused, server.slow_bodies) == (1, 0, 1)
    [event] = _events(caplog, "request_body_too_slow")
    assert event["closed_by"] == "connection_cap"
    # The younger one is still served when its body comes.
    await slow[1].send_body(b"x" * (size - 10))
    await slow[1].end_body()
    with trio.fail_after(10):
        response = await slow[1].read_response()
    assert (response.status, response.body) == (200, str(size).encode())
    records = await stack.settled()
    assert sorted(r.error for r in records) == ["", "", RequestError.BODY_TOO_SLOW]
    for client in slow:
        await client.aclose()


async def test_a_body_already_whole_is_not_judged() -> None:
    """Once the body is whole nothing of it is awaited: a request waiting for its endpoint
    is not closed for the rate its body had (the watch loop's judgement, on a stub)."""
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE)
    engine = SimpleNamespace(config=SimpleNamespace(engine=SimpleNamespace(limits=limits)))

    def shared_with(req_done: bool) -> Any:
        ours, _ = trio.testing.memory_stream_pair()
        client = state.Client(ours, https=False)
        client.exchange = cast(
            Any, SimpleNamespace(req_done=req_done, record=SimpleNamespace(bytes_in=10))
        )
        clock = RateClock()
        clock.elapsed = 10 * GRACE  # 10 bytes in that long: far below 1000 B/s
        return SimpleNamespace(
            engine=engine,
            bodies={client: clock},
            slow={},
            slow_bodies=0,
            slow_log=state.Throttle(),
            hooks=ProxyHooks(),
        )

    whole = shared_with(req_done=True)
    connection.judge_bodies(whole, 0.25)
    assert whole.slow_bodies == 0
    [client] = whole.bodies
    assert client.watchdog.due == math.inf and not client.watchdog.scope.cancel_called
    arriving = shared_with(req_done=False)
    connection.judge_bodies(arriving, 0.25)
    assert arriving.slow_bodies == 1
    [client] = arriving.bodies
    assert client.watchdog.scope.cancel_called


def _cap_shared(slow: dict[Any, None]) -> Any:
    """A stub of ``Shared`` at the cap, for ``_make_room``: no idle client, no half head."""
    limits = Limits(min_body_rate_grace=GRACE)
    engine = SimpleNamespace(config=SimpleNamespace(engine=SimpleNamespace(limits=limits)))
    return SimpleNamespace(
        engine=engine,
        idle={},
        heads={},
        slow=slow,
        readers={},
        bodies={client: RateClock() for client in slow},
        clients=set(slow),
        max_connections=len(slow),
        shed=0,
        refused=0,
        cap_log=state.Throttle(),
        slow_bodies=0,
        slow_log=state.Throttle(),
        hooks=ProxyHooks(),
    )


def _client_with(exchange: object) -> state.Client:
    ours, _ = trio.testing.memory_stream_pair()
    client = state.Client(ours, https=False)
    client.exchange = cast(Any, exchange)
    return client


async def test_the_cap_never_closes_a_request_whose_body_became_whole_since_the_tick() -> None:
    """``Shared.slow`` is refreshed once a tick: a body that became whole in between (its
    request now waits on a slow endpoint), or a request already settled, is not chosen."""
    whole = _client_with(SimpleNamespace(req_done=True, record=SimpleNamespace(bytes_in=10)))
    settled = _client_with(None)
    shared = _cap_shared({whole: None, settled: None})
    assert not connection._make_room(shared)
    assert shared.slow == {} and shared.slow_bodies == 0 and shared.shed == 0
    assert not whole.watchdog.scope.cancel_called
    # A body still arriving, listed after them, is the one closed.
    arriving = _client_with(SimpleNamespace(req_done=False, record=SimpleNamespace(bytes_in=10)))
    whole = _client_with(SimpleNamespace(req_done=True, record=SimpleNamespace(bytes_in=10)))
    shared = _cap_shared({whole: None, arriving: None})
    assert connection._make_room(shared)
    assert (shared.slow_bodies, shared.shed) == (1, 1)
    assert arriving.watchdog.scope.cancel_called and not whole.watchdog.scope.cancel_called
    assert shared.bodies[arriving].closed_by == "connection_cap"


async def test_a_pump_that_ended_leaves_no_clock_behind() -> None:
    """A body pump that fails writing upstream (here before any response, as for an upgrade
    whose endpoint then answers 101) reads no more of the body: its clock leaves the watch
    loop's lists at once, rather than staying there, frozen, until the request is settled."""
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
    assert type(conn.next_event()) is http1.Request
    ours, theirs = trio.testing.memory_stream_pair()
    up_ours, up_theirs = trio.testing.memory_stream_pair()
    await up_theirs.aclose()  # the endpoint is gone: the first write upstream fails
    uh = http1.Connection(http1.CLIENT)
    uh.send(http1.Request(method=b"POST", target=b"/", headers=[(b"content-length", b"100")]))
    client = state.Client(ours, https=False)
    shared = SimpleNamespace(bodies={}, slow={})
    ex = SimpleNamespace(
        shared=shared,
        client=client,
        config=SimpleNamespace(engine=SimpleNamespace(limits=Limits())),
        stream=ours,
        conn=conn,
        record=SimpleNamespace(bytes_in=0),
        facts=SimpleNamespace(chunked=False),
        body_state=Body.UNTOUCHED,
        req_done=False,
        clock=None,
        sent_any=False,
        advance=lambda move, seconds=None: None,
    )
    pump = state.BodyPump()
    up = cast(Any, SimpleNamespace(http=uh, stream=up_ours))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(body.pump_body, cast(Any, ex), up, pump)
        await wait_until(lambda: client in shared.bodies)  # waiting for the client's bytes
        shared.slow[client] = None  # as if the last tick had found it slow
        await theirs.send_all(b"x" * 10)  # read, then written upstream: that fails
        with trio.fail_after(5):
            await pump.done.wait()
    assert isinstance(pump.error, UpstreamError)
    assert ex.clock is not None  # kept for the request's own record
    assert (shared.bodies, shared.slow) == ({}, {})


async def test_a_408_over_tls_is_drained_as_over_plain_http(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body still arriving after a 408 is drained over TLS too (decrypted and dropped:
    TLS has no half-close), not left unread, which would make the close a reset that may
    destroy the 408.  With the linger made endless, a drained connection takes the
    client's bytes for as long as it sends them: a closed one resets them."""
    monkeypatch.setattr(connection, "LINGER_SECONDS", 3600.0)
    limits = Limits(min_body_rate=1000, min_body_rate_grace=GRACE, idle_timeout=600)
    pem = str(tmp_path / "lb.pem")
    certs.ca.issue_cert(LB_HOST).private_key_and_cert_chain_pem.write_to_path(pem)
    spec = Listener(address="127.0.0.1", port=0, certificate=pem, key=pem)
    listeners = await open_listeners([spec])
    stack = await start_stack(nursery, certs, 1, listeners=listeners, limits=limits)
    ctx = ssl.create_default_context()
    certs.ca.configure_trust(ctx)
    raw = await trio.open_tcp_stream("127.0.0.1", stack.port)
    async with Client(trio.SSLStream(raw, ctx, server_hostname=LB_HOST)) as client:
        await client.send_head("POST", "/sink", [("host", LB_HOST), ("content-length", "10000000")])
        await client.send_body(b"x" * 10)  # then nothing until the 408
        with trio.fail_after(10):
            response = await client.read_response()
        assert (response.status, response.header("connection")) == (408, "close")
        with trio.fail_after(30):
            for _ in range(32):  # 2 MiB more of the body, all taken
                await client.stream.send_all(b"x" * 65536)
                await trio.sleep(0.01)  # room for a reset to come back, were there one
    [record] = await stack.settled()
    assert (record.status, record.error) == (408, RequestError.BODY_TOO_SLOW)
