"""HTTP behaviour of the proxy on real loopback sockets: framing, limits, headers, upgrades."""

from __future__ import annotations

import contextlib
import json
import tracemalloc

import h11
import pytest
import trio
from proxy_support import (
    LB_HOST,
    Certs,
    Client,
    get,
    make_config,
    open_websocket,
    raw_exchange,
    start_stack,
)
from waiting import wait_until

from lb.config.model import Limits

# ---------------------------------------------------------------------- framing


async def test_chunked_both_ways(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "POST", "/echo", [("host", LB_HOST), ("transfer-encoding", "chunked")]
        )
        for i in range(5):
            await client.send_body(b"part%d;" % i)
        await client.end_body()
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.body == b"part0;part1;part2;part3;part4;"
        assert resp.header("transfer-encoding") == "chunked"
        seen = stack.backends[0].seen[-1]
        assert seen.headers.get("transfer-encoding") == "chunked"
        # Keep-alive survives a chunked exchange.
        assert (await client.request()).status == 200
    assert (await stack.settled())[0].bytes_in == 30
    assert (await stack.settled())[0].bytes_out == 30


async def test_expect_100_continue(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "POST",
            "/sink",
            [("host", LB_HOST), ("content-length", "5"), ("expect", "100-continue")],
        )
        with trio.fail_after(2):
            event = await client.next_event()
        assert isinstance(event, h11.InformationalResponse)
        assert event.status_code == 100
        await client.send_body(b"hello")
        await client.end_body()
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.body == b"5"
    assert "expect" not in stack.backends[0].seen[-1].headers


async def test_expect_100_continue_rejected_without_body(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_body_bytes=10))
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "POST",
            "/sink",
            [("host", LB_HOST), ("content-length", "100"), ("expect", "100-continue")],
        )
        with trio.fail_after(2):
            resp = await client.read_response()
        assert resp.status == 413
    assert stack.backends[0].seen == []


async def test_head_204_304(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        head = await client.request("HEAD", "/status/200")
        assert head.status == 200
        assert head.body == b""
        assert head.header("content-length") == "5"
        no_content = await client.request("GET", "/status/204")
        assert no_content.status == 204
        assert no_content.reason == b"No Content"
        not_modified = await client.request("GET", "/status/304")
        assert not_modified.status == 304
        assert (await client.request("GET", "/status/200")).body == b"hello"


# ---------------------------------------------------------------------- hostile input


async def test_malformed_request_is_400_and_closes(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    for garbage in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,  # TLS to plain port
    ):
        answer = await raw_exchange(stack.port, garbage)
        assert answer.startswith(b"HTTP/1.1 400 "), (garbage, answer)
        assert b"connection: close" in answer.lower()
    assert all(r.error == "bad_request" for r in (await stack.settled()))
    # The proxy is still fine.
    assert (await get(stack.port)).status == 200


async def test_oversize_headers_431(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_header_bytes=2048))
    big = b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    answer = await raw_exchange(stack.port, big)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert (await stack.settled())[-1].error == "headers_too_large"


async def test_oversize_body_413(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_body_bytes=1000))
    async with await Client.connect(stack.port) as client:
        resp = await client.request("POST", "/sink", body=b"x" * 2000)
        assert resp.status == 413
    # Streaming past the limit (no Content-Length) is cut as well.
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "POST", "/sink", [("host", LB_HOST), ("transfer-encoding", "chunked")]
        )
        await client.send_body(b"y" * 600)
        await client.send_body(b"y" * 600)
        await client.end_body()
        resp = await client.read_response()
        assert resp.status == 413
    assert [r.error for r in (await stack.settled())] == ["body_too_large", "body_too_large"]
    assert stack.engine.live.in_flight["p1/e0"] == 0


async def test_idle_client_is_closed(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(idle_timeout=0.2))
    stream = await trio.open_tcp_stream("127.0.0.1", stack.port)
    try:
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
    finally:
        await stream.aclose()


async def test_response_timeout_is_524(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(request_timeout=0.2))
    resp = await get(stack.port, "/slow?s=2")
    assert resp.status == 524
    assert (await stack.settled())[-1].error == "response_timeout"


# ---------------------------------------------------------------------- headers


async def test_forwarded_headers_and_hop_by_hop(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    resp = await get(
        stack.port,
        "/headers",
        headers=[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "drop me"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "203.0.113.9"),
            ("cf-connecting-ip", "198.51.100.1"),
            ("x-custom", "kept"),
        ],
    )
    assert resp.status == 200
    seen = json.loads(resp.body)["headers"]
    for gone in ("connection", "x-secret", "keep-alive", "proxy-authorization", "te", "upgrade"):
        assert gone not in seen, gone
    assert seen["host"] == "backend.local"  # endpoint header.Host (R47)
    assert seen["x-forwarded-host"] == LB_HOST
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["cf-connecting-ip"] == "127.0.0.1"  # untrusted peer: not believed
    assert seen["x-custom"] == "kept"
    assert seen["x-request-id"]
    # Response side: the backend's Keep-Alive header is hop-by-hop.
    assert resp.header("keep-alive") is None
    assert resp.header("x-backend") == "b0"


async def test_client_host_used_without_endpoint_host(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, host_header=None)
    resp = await get(stack.port, "/headers")
    assert json.loads(resp.body)["headers"]["host"] == LB_HOST


async def test_request_id_kept(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    resp = await get(stack.port, "/headers", headers=[("x-request-id", "abc-123")])
    assert json.loads(resp.body)["headers"]["x-request-id"] == "abc-123"
    assert (await stack.settled())[-1].request_id == "abc-123"


async def test_trusted_proxy_headers(nursery: trio.Nursery, certs: Certs) -> None:
    ray = [("cf-connecting-ip", "198.51.100.7"), ("cf-ray", "8c2f1a2b3c4d5e6f-FRA")]
    trusted = await start_stack(nursery, certs, 1, trusted=("127.0.0.0/8",), datacenter="AMS")
    resp = await get(trusted.port, "/headers", headers=ray)
    seen = json.loads(resp.body)["headers"]
    assert seen["cf-connecting-ip"] == "198.51.100.7"
    assert (await trusted.settled())[-1].client_ip == "198.51.100.7"
    assert (await trusted.settled())[-1].datacenter == "FRA"

    untrusted = await start_stack(nursery, certs, 1, trusted=("10.0.0.0/8",), datacenter="AMS")
    await get(untrusted.port, "/headers", headers=ray)
    assert (await untrusted.settled())[-1].client_ip == "127.0.0.1"
    assert (await untrusted.settled())[-1].datacenter == "AMS"


# ---------------------------------------------------------------------- retries


async def test_post_with_body_is_not_retried(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, weights=[1.0, 0.0])
    resp = await get(stack.port, "/drop")  # GET without body: fresh connection, not stale
    assert resp.status == 502
    async with await Client.connect(stack.port) as client:
        resp = await client.request("POST", "/drop", body=b"payload")
        assert resp.status == 502
    assert all(len(r.attempts) == 1 for r in (await stack.settled()))
    assert stack.retries == []
    assert stack.backends[1].seen == []


async def test_stale_pooled_connection_retried_fresh(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        # /stale-race answers, then closes the connection when the next request arrives: the
        # race a checkout cannot see.
        assert (await client.request("GET", "/stale-race")).status == 200
        resp = await client.request("GET", "/")
        assert resp.status == 200
        record = (await stack.settled())[-1]
        assert (record.retried, record.retry_status) == ("stale_connection", 502)
        assert [a.reused for a in record.attempts] == [True, False]
        # A POST whose whole body was buffered is sent again too (lb/core/attempts.py).
        assert (await client.request("GET", "/stale-race")).status == 200
        resp = await client.request("POST", "/sink", body=b"abc")
        assert (resp.status, resp.body) == (200, b"3")
        record = (await stack.settled())[-1]
        assert (record.retried, record.retry_status) == ("stale_connection", 502)
        # One whose body was streamed (too large to buffer) is not: its bytes are gone.
        assert (await client.request("GET", "/stale-race")).status == 200
        resp = await client.request("POST", "/sink", body=b"x" * (1 << 20))
        assert resp.status == 502
        record = (await stack.settled())[-1]
        assert (record.retried, record.retry_status) == (None, None)


async def test_pooled_connection_closed_while_idle_is_not_reused(
    nursery: trio.Nursery, certs: Certs
) -> None:
    # The upstream closes idle keep-alive connections sooner than our idle limit (Node's
    # 5 s): checkout must see the EOF and dial fresh, so even a POST succeeds.
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        assert (await client.request("GET", "/stale")).status == 200
        await wait_until(lambda: stack.backends[0].closed == 1)  # its FIN is on the wire
        resp = await client.request("POST", "/sink", body=b"hello")
        assert (resp.status, resp.body) == (200, b"5")
    record = (await stack.settled())[-1]
    assert [(a.status, a.reused) for a in record.attempts] == [(200, False)]
    assert record.retried is None
    assert stack.server.pool.opened == 2


async def test_pool_drops_connection_with_unsolicited_bytes(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    for n in range(2):
        resp = await get(stack.port, "/garbage")
        assert resp.status == 200
        await wait_until(lambda n=n: stack.backends[0].stray == n + 1)  # sent to our idle socket
    assert stack.server.pool.opened == 2
    assert all(not r.attempts[-1].reused for r in await stack.settled())


async def test_keep_alive_timeout_header_shortens_idle_limit(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    pool = stack.server.pool
    assert (await get(stack.port, "/keepalive?t=1")).status == 200  # idle limit 0: not pooled
    await stack.settled()
    assert pool.idle_count() == 0
    assert (await get(stack.port, "/keepalive?t=30")).status == 200  # min(30, 29) = 29 s
    await stack.settled()
    assert pool.idle_count() == 1
    [conn] = [c for s in pool._idle.values() for c in s]
    assert pool._limit(conn) == 29.0
    conn.idle_since -= 29.5
    assert pool.sweep() == 1
    assert pool.idle_count() == 0


# ---------------------------------------------------------------------- streaming


async def test_websocket_passthrough(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        event = await open_websocket(client)
        assert dict(event.headers)[b"upgrade"] == b"websocket"
        stream = client.stream
        leftover, _ = client.conn.trailing_data
        assert leftover == b""
        with trio.fail_after(2):
            for msg in (b"hello", b"world" * 1000):
                await stream.send_all(msg)
                want = b"echo:" + msg
                got = b""
                while len(got) < len(want):
                    got += await stream.receive_some(65536)
                assert got.replace(b"echo:", b"") == msg
    await wait_until(lambda: stack.records, 2)
    assert (await stack.settled())[-1].websocket
    assert (await stack.settled())[-1].status == 101
    assert stack.backends[0].seen[-1].headers["upgrade"] == "websocket"


async def test_client_disconnect_mid_download_releases_upstream(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    client = await Client.connect(stack.port)
    await client.send_head("GET", "/stream?n=50000000", [("host", LB_HOST)])
    await client.end_body()
    await client.stream.receive_some(65536)
    await client.aclose()
    await wait_until(lambda: stack.records, 5)
    record = (await stack.settled())[-1]
    assert record.error == "client_disconnected"
    assert record.status == 200
    live = stack.engine.live
    assert live.in_flight["p1/e0"] == 0
    assert live.connections["p1/e0"] == 0  # closed, not pooled
    assert stack.server.pool.idle_count() == 0


async def test_client_disconnect_mid_upload(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    client = await Client.connect(stack.port)
    await client.send_head("POST", "/sink", [("host", LB_HOST), ("content-length", "100000")])
    await client.send_body(b"z" * 1000)
    await wait_until(lambda: stack.backends[0].connections == 1)  # the upload is under way
    await client.aclose()
    await wait_until(lambda: stack.records, 5)
    assert (await stack.settled())[-1].error == "client_disconnected"
    assert stack.engine.live.connections["p1/e0"] == 0


async def test_a_body_limit_crossed_while_the_upstream_waits_is_413(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """The body pump (a task beside the wait for the response head) finds the limit: the
    wait ends and the client gets the 413, as when the limit is found before the head."""
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_body_bytes=1000))
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "POST", "/sink", [("host", LB_HOST), ("transfer-encoding", "chunked")]
        )
        await client.send_body(b"y" * 600)
        await wait_until(lambda: stack.backends[0].seen)  # the head went upstream alone
        await client.send_body(b"y" * 600)
        with trio.fail_after(5):
            resp = await client.read_response()
    assert resp.status == 413
    record = (await stack.settled())[-1]
    assert (record.status, record.error) == (413, "body_too_large")
    assert stack.engine.live.in_flight["p1/e0"] == 0
    assert stack.engine.live.connections.get("p1/e0", 0) == 0


@pytest.mark.parametrize("path", ["/early", "/early-hold"])
async def test_an_answer_before_the_body_is_read_is_relayed(
    nursery: trio.Nursery, certs: Certs, path: str
) -> None:
    """An upstream that answers an upload early (here 413) and then closes, or stops reading,
    is relayed: not a 502, not a 524 after request_timeout.  The client connection closes,
    its body unread, and the upstream connection is not pooled."""
    stack = await start_stack(nursery, certs, 1, limits=Limits(request_timeout=30))
    size = 64 * 1024 * 1024
    async with await Client.connect(stack.port) as client, trio.open_nursery() as uploads:
        await client.send_head("POST", path, [("host", LB_HOST), ("content-length", str(size))])

        async def upload() -> None:
            chunk = b"v" * 65536
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for _ in range(size // len(chunk)):
                    await client.send_body(chunk)

        uploads.start_soon(upload)
        with trio.fail_after(5):
            resp = await client.read_response()
            # Then the proxy closes: the rest of the body is never read.
            with contextlib.suppress(trio.BrokenResourceError):
                while await client.stream.receive_some(65536):
                    pass
        uploads.cancel_scope.cancel()
    assert (resp.status, resp.body) == (413, b"too large\n")
    record = (await stack.settled())[-1]
    assert (record.status, record.upstream_status) == (413, 413)
    assert record.bytes_in < size
    live = stack.engine.live
    assert live.in_flight["p1/e0"] == 0
    assert live.connections.get("p1/e0", 0) == 0
    assert stack.server.pool.idle_count() == 0


async def test_large_bodies_stream_with_flat_memory(nursery: trio.Nursery, certs: Certs) -> None:
    size = 50 * 1024 * 1024
    stack = await start_stack(nursery, certs, 1)
    tracemalloc.start()
    try:
        async with await Client.connect(stack.port) as client:
            await client.send_head(
                "POST", "/sink", [("host", LB_HOST), ("content-length", str(size))]
            )
            chunk = b"u" * 65536
            for _ in range(size // len(chunk)):
                await client.send_body(chunk)
            await client.end_body()
            up = await client.read_response()
            assert up.status == 200
            assert up.body == str(size).encode()
            await client.send_head("GET", f"/stream?n={size}", [("host", LB_HOST)])
            await client.end_body()
            down = await client.read_response(count_only=True)
            assert down.body == str(size).encode()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Client, proxy and backend all run in this process; every one streams.
    assert peak < 8 * 1024 * 1024, peak
    assert (await stack.settled())[0].bytes_in == size
    assert (await stack.settled())[1].bytes_out == size


# ---------------------------------------------------------------------- shutdown


async def test_graceful_shutdown_drains_in_flight(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    idle = await Client.connect(stack.port)
    assert (await idle.request()).status == 200
    results: list[int] = []

    async def slow() -> None:
        async with await Client.connect(stack.port) as client:
            resp = await client.request("GET", "/slow?s=0.5")
            results.append(resp.status)
            assert resp.header("connection") == "close"

    async with trio.open_nursery() as inner:
        inner.start_soon(slow)
        await wait_until(lambda: any(s.path == "/slow" for s in stack.backends[0].seen))
        stack.server.shutdown()
        # The idle keep-alive connection is closed; new connections are refused.
        with trio.fail_after(2):
            assert await idle.stream.receive_some(100) == b""
        await idle.aclose()

        async def refused() -> bool:
            try:
                await (await trio.open_tcp_stream("127.0.0.1", stack.port)).aclose()
            except OSError:
                return True
            return False

        await wait_until(refused, what="the listener to close")
    assert results == [200]


async def test_drain_deadline_reports_shutdown_and_closes_count(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, drain_timeout=0.3)
    conns = [0]
    stack.server.hooks.on_connection = lambda d: conns.__setitem__(0, conns[0] + d)
    client = await Client.connect(stack.port)
    await client.send_head("GET", "/slow?s=5", [("host", LB_HOST)])
    await client.end_body()
    await wait_until(lambda: stack.server.active_requests == 1)
    assert conns[0] == 1
    stack.server.shutdown()
    with trio.fail_after(5):
        resp = await client.read_response()
    # Not a bare close: a 503 the client can retry elsewhere, and the connection closes.
    assert (resp.status, resp.header("connection")) == (503, "close")
    with trio.fail_after(5):
        assert await client.stream.receive_some(100) == b""
    await wait_until(lambda: stack.records, 3)
    await wait_until(lambda: conns[0] == 0, 2)
    record = stack.records[-1]
    assert (record.status, record.error) == (503, "shutdown")
    assert stack.engine.live.in_flight.get("p1/e0", 0) == 0
    await client.aclose()


async def test_drain_deadline_cuts_a_started_response(nursery: trio.Nursery, certs: Certs) -> None:
    """A response already under way cannot become a 503: the connection is cut."""
    stack = await start_stack(nursery, certs, 1, drain_timeout=0.3)
    client = await Client.connect(stack.port)
    await client.send_head("POST", "/echo", [("host", LB_HOST), ("transfer-encoding", "chunked")])
    await client.send_body(b"first")
    event = await client.next_event()
    assert isinstance(event, h11.Response) and event.status_code == 200
    stack.server.shutdown()
    with trio.fail_after(5), pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
        while True:  # the echoed chunk, then a close in the middle of the chunked body
            await client.next_event()
    await wait_until(lambda: stack.records, 3)
    record = stack.records[-1]
    assert (record.status, record.error) == (200, "shutdown")
    await client.aclose()


async def test_connection_content_length_keeps_body_framing(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    out = await raw_exchange(
        stack.port,
        b"POST /sink HTTP/1.1\r\nHost: app.example\r\nConnection: content-length\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        seconds=3,
    )
    assert out.startswith(b"HTTP/1.1 200 ")
    assert out.endswith(b"\r\n\r\n5")
    assert stack.backends[0].seen[-1].body_bytes == 5


async def test_stale_retry_then_failover_reports_trigger_status(
    nursery: trio.Nursery, certs: Certs
) -> None:
    # Endpoint e0 accepts one connection, stops listening, answers one request on it and
    # closes the connection when the next request arrives: the pooled connection fails (a
    # stale retry), the fresh dial is refused (521), and the zero-downtime failover to e1
    # answers.  It is the last retry; its trigger (521) is on the record.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def one_connection() -> None:
        raw = await listeners[0].accept()
        listeners[0].socket.close()
        stream = trio.SSLStream(raw, certs.backend, server_side=True, https_compatible=True)
        conn = h11.Connection(h11.SERVER)
        try:
            answered = False
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Request) and answered:
                    return  # the next request head: close without answering
                elif isinstance(ev, h11.EndOfMessage):
                    hdrs = [(b"content-length", b"1")]
                    await stream.send_all(
                        (conn.send(h11.Response(status_code=200, headers=hdrs)) or b"")
                        + (conn.send(h11.Data(data=b"A")) or b"")
                        + (conn.send(h11.EndOfMessage()) or b"")
                    )
                    conn.start_next_cycle()
                    answered = True
        finally:
            await trio.aclose_forcefully(stream)

    nursery.start_soon(one_connection)
    stack = await start_stack(nursery, certs, 2, zdf="temporary")
    cfg = make_config([port, stack.backends[1].port], zdf="temporary")
    stack.engine.reconfigure(cfg, now=trio.current_time())
    async with await Client.connect(stack.port) as client:
        for _ in range(40):
            resp = await client.request("GET", "/")
            assert resp.status == 200
            if len((await stack.settled())[-1].attempts) == 3:
                break
    record = (await stack.settled())[-1]
    assert [(a.status, a.reused) for a in record.attempts] == [
        (502, True),
        (521, False),
        (200, False),
    ]
    assert (record.retried, record.retry_status) == ("zero_downtime_failover", 521)
    assert [r for r, _ in stack.retries][-2:] == ["stale_connection", "zero_downtime_failover"]
    assert all(len(r.attempts) <= 3 for r in stack.records)


async def test_handshake_cancelled_from_outside_closes_socket(certs: Certs) -> None:
    from lb.engine import Engine as LbEngine
    from lb.proxy.upstream import UpstreamPool, target_for

    accepted: list[trio.SocketStream] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as inner:

        async def hold(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            await trio.sleep_forever()

        inner.start_soon(trio.serve_listeners, hold, listeners)
        stack_cfg = make_config([port])
        engine = LbEngine(stack_cfg, now=trio.current_time())
        pool = UpstreamPool(engine.live, certs.client, connect_timeout=10)
        ep = engine.book.snapshot().pools["p1"].endpoints[0]
        target = target_for(ep, LB_HOST, stack_cfg.connect_to)
        with trio.move_on_after(0.3):
            await pool.connect(target)  # the server never answers the ClientHello
        assert accepted
        with trio.fail_after(2):
            data = b"x"
            while data:
                data = await accepted[0].receive_some(65536)  # EOF: our side closed
        inner.cancel_scope.cancel()


async def test_a_connection_closed_by_its_peer_is_not_reused_however_recently_released(
    certs: Certs,
) -> None:
    """Checkout polls every idle connection, even one released a moment ago: skipping the
    poll for recent ones would reuse a connection with stray bytes waiting (another
    response's, a desync) or one closed under a streamed body that cannot be sent again."""
    from lb.engine import Engine as LbEngine
    from lb.proxy import http1
    from lb.proxy.upstream import UpstreamConnection, UpstreamPool, target_for

    ours, theirs = trio.socket.socketpair()
    config = make_config([1])
    engine = LbEngine(config, now=trio.current_time())
    pool = UpstreamPool(engine.live, certs.client, connect_timeout=10)
    target = target_for(engine.book.snapshot().pools["p1"].endpoints[0], LB_HOST, config.connect_to)
    conn = UpstreamConnection(trio.SocketStream(ours), target)
    conn.http.send(http1.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    conn.http.send(http1.EndOfMessage())
    conn.http.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    while conn.http.next_event() is not http1.PAUSED:
        pass
    pool.release(conn)
    theirs.close()  # the endpoint closed it while idle: its FIN is already here
    assert pool.checkout(target) is None
    assert conn.closed
