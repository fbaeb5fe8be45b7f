"""The proxy's own metrics over real sockets: upstream connect time and time to first byte,
bytes, active requests and open client connections; upstream errors by kind; failed client
TLS handshakes by reason, and connections closed for a request body too slow.

The hooks are the ones ``tunnel-lb run`` installs (``lb.service``), so these tests cover the
path from the proxy's records to the exposition.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from ports_support import dead_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from proxy_support import (
    LB_HOST,
    Certs,
    Client,
    get,
    make_config,
    raw_exchange,
    serve_backend,
)
from waiting import wait_until

from lb.config.model import Limits, Listener
from lb.engine import Engine as LbEngine
from lb.metrics import Metrics
from lb.proxy import ProxyServer
from lb.proxy.listeners import open_listeners
from lb.service import _hooks

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(metrics: Metrics) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> Sample:
    return (name, frozenset(labels.items()))


async def start(
    nursery: trio.Nursery,
    certs: Certs,
    ports: list[int],
    listeners: list[Any] | None = None,
    **config: object,
) -> tuple[ProxyServer, int, Metrics]:
    """A proxy in front of ``ports`` whose hooks feed a :class:`Metrics` as in production."""
    engine = LbEngine(make_config(ports, **config), now=trio.current_time())  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.attach(engine)
    server = ProxyServer(
        engine, hooks=_hooks(engine, metrics), rng=random.Random(1), upstream_ssl=certs.client
    )
    if listeners is None:
        listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    addresses = await nursery.start(server.serve, listeners)
    return server, addresses[0][1], metrics


async def settled(server: ProxyServer) -> None:
    await wait_until(lambda: not server.active_requests)


async def test_connect_time_and_first_byte_by_endpoint(nursery: trio.Nursery, certs: Certs) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    server, port, metrics = await start(nursery, certs, [backend.port])
    s = scrape(metrics)  # every configured endpoint at zero, so rate() sees the first one
    for name in ("lb_upstream_connect_duration_seconds", "lb_upstream_first_byte_seconds"):
        for pool, endpoint in (("p1", "e0"), ("fb", "f0")):
            assert s[key(f"{name}_count", pool=pool, endpoint=endpoint)] == 0
    async with await Client.connect(port) as client:
        for _ in range(3):  # one TCP+TLS connect, then the pooled connection
            assert (await client.request()).status == 200
    await settled(server)
    s = scrape(metrics)
    connect = "lb_upstream_connect_duration_seconds"
    assert s[key(f"{connect}_count", pool="p1", endpoint="e0")] == 1
    assert s[key(f"{connect}_sum", pool="p1", endpoint="e0")] > 0
    ttfb = "lb_upstream_first_byte_seconds"
    assert s[key(f"{ttfb}_count", pool="p1", endpoint="e0")] == 3
    assert s[key(f"{ttfb}_bucket", pool="p1", endpoint="e0", le="+Inf")] == 3
    assert s[key(f"{ttfb}_sum", pool="p1", endpoint="e0")] > 0
    assert not any(name == "lb_upstream_errors_total" for name, _ in s)


async def test_bytes_from_and_to_clients_and_endpoints(nursery: trio.Nursery, certs: Certs) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    server, port, metrics = await start(nursery, certs, [backend.port])
    async with await Client.connect(port) as client:
        resp = await client.request("POST", "/echo", body=b"x" * 5000)
        assert resp.status == 200 and resp.body == b"x" * 5000
        resp = await client.request("POST", "/echo", body=b"y" * 300)
        assert resp.status == 200
    assert (await get(port, host="unknown.example")).status == 404  # no endpoint, no bytes
    await settled(server)
    s = scrape(metrics)
    client_bytes = "lb_client_bytes_total"
    assert s[key(client_bytes, load_balancer=LB_HOST, direction="received")] == 5300
    assert s[key(client_bytes, load_balancer=LB_HOST, direction="sent")] == 5300
    endpoint_bytes = "lb_endpoint_bytes_total"
    assert s[key(endpoint_bytes, pool="p1", endpoint="e0", direction="sent")] == 5300
    assert s[key(endpoint_bytes, pool="p1", endpoint="e0", direction="received")] == 5300
    assert backend.seen[0].body_bytes + backend.seen[1].body_bytes == 5300


async def test_refused_connect_counted_by_endpoint_and_kind(
    nursery: trio.Nursery, certs: Certs
) -> None:
    server, port, metrics = await start(nursery, certs, [dead_port()])
    for _ in range(2):
        assert (await get(port)).status == 521
    await settled(server)
    s = scrape(metrics)
    errors = "lb_upstream_errors_total"
    assert s[key(errors, pool="p1", endpoint="e0", kind="refused")] == 2
    # A failed connect has no connect time; the series is there at zero from the start.
    assert s[key("lb_upstream_connect_duration_seconds_count", pool="p1", endpoint="e0")] == 0
    assert key("lb_endpoint_bytes_total", pool="p1", endpoint="e0", direction="sent") not in s


async def test_tls_failure_and_closed_connection_counted_by_kind(
    nursery: trio.Nursery, certs: Certs
) -> None:
    async def not_tls(stream: trio.SocketStream) -> None:  # answers a ClientHello in clear
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.aclose_forcefully(stream)

    plain = (await nursery.start(partial(trio.serve_tcp, not_tls, 0, host="127.0.0.1")))[0]
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    server, port, metrics = await start(nursery, certs, [plain.socket.getsockname()[1]])
    assert (await get(port)).status == 525
    await settled(server)
    assert metrics.upstream_errors.values == {("p1", "e0", "tls_handshake"): 1.0}

    # The endpoint closes the connection before answering.
    server, port, metrics = await start(nursery, certs, [backend.port])
    assert (await get(port, "/drop")).status == 502
    await settled(server)
    assert metrics.upstream_errors.values == {("p1", "e0", "upstream_closed"): 1.0}


async def test_open_client_connections_and_active_requests(
    nursery: trio.Nursery, certs: Certs
) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    _, port, metrics = await start(nursery, certs, [backend.port])

    def gauges() -> tuple[float, float]:
        s = scrape(metrics)
        return s[key("lb_client_connections")], s[key("lb_requests_active")]

    async def until(want: tuple[float, float]) -> None:
        check: Callable[[], object] = lambda: gauges() == want  # noqa: E731
        await wait_until(check)

    assert gauges() == (0, 0)
    async with await Client.connect(port) as idle, await Client.connect(port) as busy:
        await until((2, 0))
        # A request whose body is still on its way is active.
        await busy.send_head("POST", "/echo", [("host", LB_HOST), ("content-length", "4")])
        await until((2, 1))
        await busy.send_body(b"done")
        await busy.end_body()
        resp = await busy.read_response()
        assert resp.status == 200 and resp.body == b"done"
        await until((2, 0))
        assert (await idle.request()).status == 200
    await until((0, 0))


async def test_a_flood_of_hosts_and_paths_adds_no_series(
    nursery: trio.Nursery, certs: Certs
) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    server, port, metrics = await start(nursery, certs, [backend.port])
    one: Callable[[int], Awaitable[object]] = lambda i: get(port, f"/p{i}")  # noqa: E731
    await one(0)
    await get(port, host="h0.example")
    await settled(server)
    before = set(scrape(metrics))
    async with await Client.connect(port) as client:
        for i in range(1, 40):
            await client.request("GET", f"/p{i}?q={i}")
            if i % 2:
                await client.request("GET", "/", host=f"h{i}.example")
    await settled(server)
    after = set(scrape(metrics))
    proxy_names = (
        "lb_upstream_",
        "lb_client_",
        "lb_endpoint_bytes",
        "lb_requests_active",
    )
    assert {k for k in after - before if k[0].startswith(proxy_names)} == set()


async def test_failed_client_tls_handshakes_by_reason(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    """Each way a client's handshake fails on an HTTPS listener is one ``reason``."""
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    pem = str(tmp_path / "lb.pem")
    certs.ca.issue_cert(LB_HOST).private_key_and_cert_chain_pem.write_to_path(pem)
    https = await open_listeners([Listener(address="127.0.0.1", port=0, certificate=pem, key=pem)])
    limits = Limits(idle_timeout=0.5)
    server, port, metrics = await start(nursery, certs, [backend.port], https, limits=limits)
    failures = "lb_client_tls_failures_total"
    assert not [name for name, _ in scrape(metrics) if name == failures]  # none yet

    plain = await raw_exchange(port, f"GET / HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode())
    assert plain.startswith(b"HTTP/1.1 400 ")
    assert await raw_exchange(port, b"\x00\x01\x02\x03" * 64) == b""  # not TLS at all
    assert await raw_exchange(port, b"\x16") == b""  # a record begun, then nothing
    # A ClientHello, then a reset before the handshake ends.
    raw = await _mid_handshake(port)
    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(raw)
    await wait_until(lambda: server.tls_failed == 4)
    # A ClientHello, then a clean close (FIN) before the handshake ends: the client left,
    # nothing was refused (the ssl module reports it as an SSLEOFError).
    raw = await _mid_handshake(port)
    await raw.send_eof()
    await wait_until(lambda: server.tls_failed == 5)
    await raw.aclose()

    s = scrape(metrics)
    got = {dict(labels)["reason"]: v for (name, labels), v in s.items() if name == failures}
    assert got == {"plain_http": 1, "handshake_failed": 1, "timed_out": 1, "connection_lost": 2}
    # A handshake that succeeds counts nowhere here.
    ctx = ssl.create_default_context()
    certs.ca.configure_trust(ctx)
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=LB_HOST
    )
    async with Client(tls) as client:
        assert (await client.request()).status == 200
    assert sum(v for (name, _), v in scrape(metrics).items() if name == failures) == 5


async def _mid_handshake(port: int) -> trio.SocketStream:
    """A connection that sent its ClientHello and got the server's first answer: the
    server is mid-handshake, waiting for the client's next flight."""
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    bios = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = ssl.create_default_context().wrap_bio(*bios, server_hostname=LB_HOST)
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    await raw.send_all(bios[1].read())
    with trio.fail_after(5):
        assert await raw.receive_some(1)
    return raw


async def test_connections_closed_for_a_slow_body(nursery: trio.Nursery, certs: Certs) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    limits = Limits(min_body_rate=1000, min_body_rate_grace=0.5, idle_timeout=600)
    server, port, metrics = await start(nursery, certs, [backend.port], limits=limits)
    async with await Client.connect(port) as client:
        await client.send_head("POST", "/sink", [("host", LB_HOST), ("content-length", "5000")])
        await client.send_body(b"x" * 10)  # then nothing: far below 1000 B/s
        with trio.fail_after(10):
            assert (await client.read_response()).status == 408
    await settled(server)
    s = scrape(metrics)
    assert s[key("lb_slow_request_bodies_total", closed_by="min_body_rate")] == 1
    assert key("lb_slow_request_bodies_total", closed_by="connection_cap") not in s
    # A body this small is read whole before any attempt: no endpoint was chosen yet.
    requests = key("lb_requests_total", load_balancer=LB_HOST, pool="", endpoint="", status="408")
    assert s[requests] == 1


async def test_connections_cut_for_a_slow_read(nursery: trio.Nursery, certs: Certs) -> None:
    backend = await nursery.start(serve_backend, "b0", certs.backend)
    limits = Limits(min_response_rate=1 << 20, min_response_rate_grace=0.5, idle_timeout=600)
    server, port, metrics = await start(nursery, certs, [backend.port], limits=limits)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the proxy blocks soon
    await sock.connect(("127.0.0.1", port))
    async with Client(trio.SocketStream(sock)) as client:
        await client.send_head("GET", f"/stream?n={16 << 20}", [("host", LB_HOST)])
        await client.end_body()
        # Nothing is read: the proxy's write stays blocked past the grace, and is cut.
        await wait_until(lambda: server.slow_reads == 1)
    await settled(server)
    s = scrape(metrics)
    assert s[key("lb_slow_response_reads_total", closed_by="min_response_rate")] == 1
    assert key("lb_slow_response_reads_total", closed_by="connection_cap") not in s
    labels = {"load_balancer": LB_HOST, "pool": "p1", "endpoint": "e0", "status": "200"}
    assert s[key("lb_requests_total", **labels)] == 1  # the response that was cut
