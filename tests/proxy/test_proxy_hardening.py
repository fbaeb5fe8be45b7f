"""Regressions from review: hostile Host, refused upstream heads, idle WebSockets, per-request
work (lb/proxy/exchange.py, lb/proxy/upstream.py)."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import replace
from typing import Any

import pytest
import trio
from proxy_support import (
    LB_HOST,
    Certs,
    Client,
    get,
    open_websocket,
    raw_exchange,
    start_stack,
)

import lb.proxy.exchange as exchange_module
import lb.proxy.upstream as upstream_module
from lb.config.model import Limits
from lb.core.snapshot import Snapshot
from lb.logs import JsonFormatter
from lb.proxy.errors import UpstreamError

# ---------------------------------------------------------------------- Host


@pytest.mark.parametrize("host", ["app.example..", "app..example", ".app.example", "app.example:x"])
async def test_invalid_host_is_400_before_steering(
    nursery: trio.Nursery, certs: Certs, host: str
) -> None:
    """``app.example..`` matched the load balancer, then crashed SSLStream as the SNI name."""
    stack = await start_stack(nursery, certs, 1, host_header=None)
    resp = await get(stack.port, "/headers", host=host)
    assert resp.status == 400
    [record] = await stack.settled()
    assert (record.error, record.attempts) == ("bad_host", [])
    assert stack.backends[0].seen == []
    assert stack.engine.live.in_flight.get("p1/e0", 0) == 0


@pytest.mark.parametrize("host", ["App.Example", "app.example.", f"{LB_HOST}:8080"])
async def test_host_is_normalised_for_steering_and_sni(
    nursery: trio.Nursery, certs: Certs, host: str
) -> None:
    """Case, a trailing dot and a port do not change the load balancer nor the SNI name;
    the upstream Host header stays what the client sent."""
    stack = await start_stack(nursery, certs, 1, host_header=None)
    resp = await get(stack.port, "/headers", host=host)
    assert resp.status == 200, resp
    assert json.loads(resp.body)["headers"]["host"] == host
    assert (await stack.settled())[-1].load_balancer == LB_HOST


async def test_bad_endpoint_host_is_525_and_closes_the_socket(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, host_header="bad..example")
    resp = await get(stack.port, "/")
    assert resp.status == 525
    record = (await stack.settled())[-1]
    assert record.error == "tls_server_name"
    assert stack.engine.live.connections.get("p1/e0", 0) == 0


async def test_tls_stream_failure_closes_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever SSLStream's constructor raises becomes a 525 and the socket is closed."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(upstream_module.trio, "SSLStream", broken)
    a, b = trio.socket.socketpair()
    stream = trio.SocketStream(a)
    try:
        with pytest.raises(UpstreamError) as info:
            upstream_module._tls_stream(stream, ssl.create_default_context(), "app.example")
        assert (info.value.status, info.value.reason) == (525, "tls_server_name")
        assert a.fileno() == -1
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------- refused heads, logs


async def test_refused_upstream_head_is_502(
    nursery: trio.Nursery, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h11 refusing to send the upstream head raised outside the handler: a bare close."""
    real = exchange_module.response_headers

    def poisoned(*args: Any, **kwargs: Any) -> list[tuple[bytes, bytes]]:
        # Not a valid value: h11 validates it when it reframes the chunked response.
        return [*real(*args, **kwargs), (b"x-bad", b"a\x00b")]

    monkeypatch.setattr(exchange_module, "response_headers", poisoned)
    stack = await start_stack(nursery, certs, 1)
    raw = await raw_exchange(
        stack.port, f"GET /stream?n=10 HTTP/1.1\r\nhost: {LB_HOST}\r\n\r\n".encode()
    )
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), raw
    assert b"connection: close" in raw
    assert raw.endswith(b"error code: 502\n")
    record = (await stack.settled())[-1]
    assert (record.status, record.error) == (502, "upstream_protocol")
    assert stack.engine.live.in_flight["p1/e0"] == 0
    assert stack.engine.live.connections.get("p1/e0", 0) == 0


async def test_refused_upstream_head_of_head_request_has_no_body(
    nursery: trio.Nursery, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = exchange_module.response_headers
    monkeypatch.setattr(
        exchange_module,
        "response_headers",
        lambda *a, **k: [*real(*a, **k), (b"x-bad", b"a\x00b")],
    )
    stack = await start_stack(nursery, certs, 1)
    raw = await raw_exchange(
        stack.port, f"HEAD /stream?n=0 HTTP/1.1\r\nhost: {LB_HOST}\r\n\r\n".encode()
    )
    assert raw.startswith(b"HTTP/1.1 502 "), raw
    assert raw.endswith(b"\r\n\r\n")


async def test_unexpected_failure_is_logged_as_warning(
    nursery: trio.Nursery,
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("degraded")

    monkeypatch.setattr(exchange_module, "target_for", boom)
    stack = await start_stack(nursery, certs, 1)
    with caplog.at_level(logging.WARNING, logger="lb.proxy"):
        raw = await raw_exchange(stack.port, f"GET / HTTP/1.1\r\nhost: {LB_HOST}\r\n\r\n".encode())
        await stack.settled()
    assert raw == b""
    [entry] = [r for r in caplog.records if r.name == "lb.proxy"]
    assert entry.levelno == logging.WARNING
    assert entry.exc_info is not None
    line = json.loads(JsonFormatter().format(entry))  # an event, the failure in its fields
    assert (line["event"], line["error"]) == ("client_connection_failed", "RuntimeError: degraded")


# ---------------------------------------------------------------------- WebSocket idle


async def _echo(stream: trio.abc.Stream, msg: bytes) -> None:
    await stream.send_all(msg)
    want = b"echo:" + msg
    got = b""
    while len(got) < len(want):
        got += await stream.receive_some(65536)
    assert got == want


async def test_idle_websocket_is_closed(nursery: trio.Nursery, certs: Certs) -> None:
    idle = 0.3
    stack = await start_stack(nursery, certs, 1, limits=Limits(idle_timeout=idle))
    async with await Client.connect(stack.port) as client:
        await open_websocket(client)
        stream = client.stream
        start = trio.current_time()
        with trio.fail_after(3):
            # Traffic keeps it open well past one idle_timeout...
            for _ in range(6):
                await trio.sleep(idle / 3)  # on purpose: traffic spaced within the limit
                await _echo(stream, b"ping")
            assert trio.current_time() - start > 2 * idle
            # ...silence closes it.
            silent = trio.current_time()
            assert await stream.receive_some(100) == b""
            assert idle * 0.9 <= trio.current_time() - silent < idle + 1.0
    record = (await stack.settled())[-1]
    assert (record.websocket, record.status, record.error) == (True, 101, "websocket_idle")
    assert stack.engine.live.in_flight["p1/e0"] == 0
    assert stack.engine.live.connections.get("p1/e0", 0) == 0


# ---------------------------------------------------------------------- per-request work


async def test_no_snapshot_lookup_and_no_header_dict_per_request(
    nursery: trio.Nursery, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await start_stack(nursery, certs, 2)
    assert (await get(stack.port, "/")).status == 200  # compiles the router's plan

    calls: list[str] = []
    real = Snapshot.load_balancer

    def counting(self: Snapshot, host: str) -> Any:
        calls.append(host)
        return real(self, host)

    def no_dict(self: Any) -> dict[str, str]:
        raise AssertionError("headers built without header affinity")

    monkeypatch.setattr(Snapshot, "load_balancer", counting)
    monkeypatch.setattr(exchange_module._LazyHeaders, "_dict", no_dict)
    monkeypatch.setattr(exchange_module._LazyCookies, "_dict", no_dict)
    async with await Client.connect(stack.port) as client:
        for _ in range(3):
            resp = await client.request("GET", "/", headers=[("x-user", "u"), ("cookie", "a=b")])
            assert resp.status == 200
    assert calls == []
    records = await stack.settled()
    assert [r.load_balancer for r in records] == [LB_HOST] * 4


async def test_header_affinity_reads_headers_on_demand(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, affinity="header", seed=5)
    config = stack.engine.config
    [lb] = config.load_balancers
    attrs = replace(lb.session_affinity_attributes, headers=("X-User", "cookie:sid"))
    stack.engine.reconfigure(
        replace(config, load_balancers=(replace(lb, session_affinity_attributes=attrs),)),
        now=trio.current_time(),
    )
    for user in ("alice", "bob", "carol"):
        backends = set()
        for _ in range(4):
            resp = await get(stack.port, "/", headers=[("x-user", user), ("cookie", "sid=1")])
            assert resp.status == 200
            backends.add(resp.header("x-backend"))
        assert len(backends) == 1, (user, backends)
    records = await stack.settled()
    assert {r.affinity for r in records} >= {"new", "hit"}


def test_lazy_headers_mapping() -> None:
    raw = [(b"x-a", b"1"), (b"cookie", b"a=b"), (b"x-a", b"2"), (b"x-b", b"\xe9")]
    raw.append((b"cookie", b"c=d"))
    headers = exchange_module._LazyHeaders(raw)
    assert headers.get("x-a") == "2"  # the last of a repeated header; Cookie values joined
    assert dict(headers) == {"x-a": "2", "cookie": "a=b; c=d", "x-b": "\xe9"}
    assert len(headers) == 3
    cookies = exchange_module._LazyCookies(b"a=b; c=d")
    assert dict(cookies) == {"a": "b", "c": "d"}
    assert len(exchange_module._LazyCookies(None)) == 0


async def test_a_switch_before_the_upgrade_body_is_through_is_502(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """An upgrade request with a body still arriving, answered 101 at once: splicing would
    read the client beside the body pump, so the proxy answers 502 and closes."""
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        await client.send_head(
            "GET",
            "/ws-early",
            [
                ("host", LB_HOST),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("content-length", "100"),
            ],
        )
        await client.send_body(b"abc")
        with trio.fail_after(5):
            resp = await client.read_response()
    assert resp.status == 502
    record = (await stack.settled())[-1]
    assert (record.status, record.error) == (502, "upstream_protocol")
    assert stack.engine.live.connections.get("p1/e0", 0) == 0
