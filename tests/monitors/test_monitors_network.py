"""The real transport over loopback sockets: every failure reason produced for real.

Servers are :class:`HostRouter` s (a cloudflared-ingress stand-in) with trustme certificates;
probes reach ``origin.test`` only through ``connect_to``, so every test also checks that the
dial address comes from ``connect_to`` while Host and SNI stay the configured names.
"""

from __future__ import annotations

import ssl
import tracemalloc
from collections.abc import Callable

import pytest
import trio
import trustme
from monitor_builders import probe
from monitor_servers import (
    HostRouter,
    drip,
    garbage,
    huge,
    listen_silently,
    redirect,
    reset_mid_response,
    respond,
    silent,
)
from ports_support import dead_port
from waiting import wait_until

from monitors import NetworkTransport, Reason, probe_once, run_check

pytestmark = pytest.mark.integration

ServerContext = Callable[..., ssl.SSLContext]


async def router(
    nursery: trio.Nursery, server_context: ServerContext, *rules: object, **kw: object
) -> HostRouter:
    """A started HTTPS router with a certificate for app.test and origin.test."""
    r = HostRouter(
        rules=list(rules),  # type: ignore[arg-type]
        ssl_context=server_context("app.test", "origin.test"),
        **kw,  # type: ignore[arg-type]
    )
    await r.start(nursery)
    return r


async def test_healthy_probe_sends_host_sni_and_user_agent(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", respond(200, b"Hello World")))
    v = await probe_once(probe(r.port, expected_body="hello"), transport)
    assert v.ok, v
    assert v.status == 200
    assert v.rtt is not None and 0 < v.rtt < 1
    assert r.hosts == ["app.test"]
    assert r.sni == ["app.test"]
    assert r.user_agents == ["tunnel-lb/0.1.0 (health-check; pool: p)"]


async def test_endpoint_host_wins_over_monitor_host(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("origin.test", respond()))
    v = await probe_once(probe(r.port, origin_host="origin.test"), transport)
    assert v.ok, v
    assert (r.hosts, r.sni) == (["origin.test"], ["origin.test"])


async def test_without_host_header_the_address_is_host_and_sni(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("origin.test", respond()))
    v = await probe_once(probe(r.port, host=None), transport)
    assert v.ok, v
    assert (r.hosts, r.sni) == (["origin.test"], ["origin.test"])


async def test_ingress_without_host_lands_on_catch_all_404(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = HostRouter(
        rules=[("app.test", respond())], ssl_context=server_context("app.test", "abc.test")
    )
    await r.start(nursery)
    address = "abc.test"  # like <uuid>.cfargotunnel.com: not a hostname the ingress routes
    without = await probe_once(probe(r.port, host=None, address=address), transport)
    assert (without.ok, without.reason, without.status) == (
        False,
        Reason.RESPONSE_CODE_MISMATCH,
        404,
    )
    with_host = await probe_once(probe(r.port, address=address), transport)
    assert with_host.ok, with_host
    assert r.hosts == ["abc.test", "app.test"]


async def test_refused_is_tcp_connection_failed(transport: NetworkTransport) -> None:
    v = await probe_once(probe(dead_port()), transport)
    assert (v.ok, v.reason) == (False, Reason.TCP_CONNECTION_FAILED)


async def test_silent_server_is_http_timeout(
    nursery: trio.Nursery, transport: NetworkTransport
) -> None:
    port = await listen_silently(nursery)
    start = trio.current_time()
    v = await probe_once(probe(port, timeout=0.3), transport)
    elapsed = trio.current_time() - start
    assert (v.ok, v.reason) == (False, Reason.HTTP_TIMEOUT)
    assert 0.29 < elapsed < 0.8


async def test_reset_mid_response_is_connection_reset(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", reset_mid_response()))
    v = await probe_once(probe(r.port), transport)
    assert (v.ok, v.reason) == (False, Reason.CONNECTION_RESET), v


async def test_wrong_code_is_code_mismatch(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", respond(503)))
    v = await probe_once(probe(r.port), transport)
    assert (v.ok, v.reason, v.status) == (False, Reason.RESPONSE_CODE_MISMATCH, 503)
    ok = await probe_once(probe(r.port, expected_codes="5XX"), transport)
    assert ok.ok


async def test_body_mismatch(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", respond(200, b"all fine")))
    v = await probe_once(probe(r.port, expected_body="healthy"), transport)
    assert (v.ok, v.reason, v.status) == (False, Reason.RESPONSE_BODY_MISMATCH, 200)


async def test_body_match_only_in_first_10_kb(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(
        nursery,
        server_context,
        ("late.test", respond(200, b"a" * 10240 + b"NEEDLE")),
        ("early.test", respond(200, b"a" * 10000 + b"NEEDLE")),
    )
    late = await probe_once(
        probe(r.port, host="late.test", expected_body="needle", allow_insecure=True), transport
    )
    early = await probe_once(
        probe(r.port, host="early.test", expected_body="needle", allow_insecure=True), transport
    )
    assert (late.ok, late.reason) == (False, Reason.RESPONSE_BODY_MISMATCH)
    assert early.ok, early


async def test_redirect_judged_as_is_unless_followed(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    """R3: a 3xx is judged as it is; with ``follow_redirects`` the final answer is."""
    r = HostRouter(ssl_context=server_context("app.test"))
    r.rules = [("app.test", respond(200, b"landed"))]
    moved = HostRouter(ssl_context=server_context("app.test"))
    await r.start(nursery)
    await moved.start(nursery)

    async def route(reply: object) -> None:
        path = reply.request.target  # type: ignore[attr-defined]
        action = respond(200, b"landed") if path == b"/ok" else redirect("/ok")
        await action(reply)  # type: ignore[arg-type]

    moved.rules = [("app.test", route)]
    as_is = await probe_once(probe(moved.port), transport)
    assert (as_is.ok, as_is.reason, as_is.status) == (False, Reason.RESPONSE_CODE_MISMATCH, 301)
    followed = await probe_once(
        probe(moved.port, follow_redirects=True, expected_body="landed"), transport
    )
    assert followed.ok, followed
    assert moved.paths == ["/", "/", "/ok"]
    assert moved.connections == 2  # the same-authority hop reused the keep-alive connection


async def test_untrusted_certificate(
    nursery: trio.Nursery,
    server_context: ServerContext,
    transport: NetworkTransport,
    rogue_ca: trustme.CA,
) -> None:
    r = HostRouter(
        rules=[("app.test", respond())], ssl_context=server_context("app.test", issuer=rogue_ca)
    )
    await r.start(nursery)
    v = await probe_once(probe(r.port), transport)
    assert (v.ok, v.reason) == (False, Reason.TLS_UNTRUSTED_CERTIFICATE)
    insecure = await probe_once(probe(r.port, allow_insecure=True), transport)
    assert insecure.ok, insecure


async def test_name_mismatch(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = HostRouter(rules=[("app.test", respond())], ssl_context=server_context("other.test"))
    await r.start(nursery)
    v = await probe_once(probe(r.port), transport)
    assert (v.ok, v.reason) == (False, Reason.TLS_NAME_MISMATCH)
    insecure = await probe_once(probe(r.port, allow_insecure=True), transport)
    assert insecure.ok, insecure
    assert r.sni == ["app.test", "app.test"]  # SNI is sent even when not verifying


async def test_unrecognized_name(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, known_sni=frozenset({"app.test"}))
    v = await probe_once(probe(r.port, host="nope.test"), transport)
    assert (v.ok, v.reason) == (False, Reason.TLS_UNRECOGNIZED_NAME), v


async def test_https_to_plain_http_is_tls_protocol_error(
    nursery: trio.Nursery, transport: NetworkTransport
) -> None:
    async def plain(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, plain, listeners)
    v = await probe_once(probe(listeners[0].socket.getsockname()[1]), transport)
    assert (v.ok, v.reason) == (False, Reason.TLS_PROTOCOL_ERROR)


async def test_garbage_is_http_invalid_response(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", garbage()))
    v = await probe_once(probe(r.port), transport)
    assert (v.ok, v.reason) == (False, Reason.HTTP_INVALID_RESPONSE)


async def test_50_mb_body_is_not_read(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", huge(50 << 20)))
    tracemalloc.start()
    try:
        start = trio.current_time()
        v = await probe_once(probe(r.port, expected_body="yyy"), transport)
        elapsed = trio.current_time() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert v.ok, v
    assert elapsed < 0.5
    await wait_until(lambda: r.closed == r.connections, what="the server to see the close")
    assert r.body_bytes_sent < 10 << 20
    assert peak < 4 << 20


async def test_drip_times_out_at_timeout(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("app.test", drip(1.0)))
    start = trio.current_time()
    v = await probe_once(probe(r.port, timeout=0.4), transport)
    elapsed = trio.current_time() - start
    assert (v.ok, v.reason) == (False, Reason.HTTP_TIMEOUT)
    assert 0.39 < elapsed < 0.9


async def test_retries_follow_timeouts_only(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context, ("slow.test", silent()), ("bad.test", respond(500)))
    slow = await probe_once(
        probe(r.port, host="slow.test", timeout=0.2, retries=2, allow_insecure=True), transport
    )
    assert (slow.ok, slow.reason, slow.attempts) == (False, Reason.HTTP_TIMEOUT, 3)
    assert r.hosts.count("slow.test") == 3
    bad = await probe_once(
        probe(r.port, host="bad.test", retries=2, allow_insecure=True), transport
    )
    assert (bad.ok, bad.reason, bad.attempts) == (False, Reason.RESPONSE_CODE_MISMATCH, 1)
    assert r.hosts.count("bad.test") == 1


async def test_keep_alive_reuses_one_connection_and_survives_a_stale_one(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    transport = NetworkTransport(ssl_context=ctx, reuse=3600.0)  # keep-alive opted in
    closing = {"on": False}

    async def maybe_close(reply: object) -> None:
        close = closing["on"]  # decided before answering: the client may flip it meanwhile
        await respond()(reply)  # type: ignore[arg-type]
        if close:  # an idle timeout on the server: closed without telling
            reply.tcp.socket.close()  # type: ignore[attr-defined]

    r = await router(nursery, server_context, ("app.test", maybe_close))
    p = probe(r.port, method="HEAD")
    session = transport.open_session(p, "local")
    try:
        for _ in range(3):
            assert (await run_check(session, p)).ok
        assert (r.hits, r.connections) == (3, 1)
        closing["on"] = True
        assert (await run_check(session, p)).ok
        await wait_until(lambda: r.closed == 1, what="the server to close the connection")
        v = await run_check(session, p)
        assert (v.ok, v.attempts) == (True, 1)  # the dead connection was replaced silently
        assert (r.hits, r.connections) == (5, 2)
    finally:
        await session.aclose()


async def test_tcp_check(
    nursery: trio.Nursery, server_context: ServerContext, transport: NetworkTransport
) -> None:
    r = await router(nursery, server_context)
    up = await probe_once(probe(r.port, type="tcp", host=None), transport)
    assert up.ok, up
    assert up.status is None
    down = await probe_once(probe(dead_port(), type="tcp", host=None), transport)
    assert (down.ok, down.reason) == (False, Reason.TCP_CONNECTION_FAILED)


async def test_plain_http_probe_with_extra_headers(
    nursery: trio.Nursery, transport: NetworkTransport
) -> None:
    r = HostRouter(rules=[("app.test", respond(204, b""))])
    await r.start(nursery)
    p = probe(
        r.port,
        type="http",
        expected_codes="2xx",
        header={"Host": ("app.test",), "User-Agent": ("evil",), "X-Probe": ("1",)},
    )
    v = await probe_once(p, transport)
    assert (v.ok, v.status) == (True, 204)
    assert r.user_agents == ["tunnel-lb/0.1.0 (health-check; pool: p)"]
    assert r.sni == []


async def test_checks_see_what_a_new_connection_sees(
    nursery: trio.Nursery,
    server_context: ServerContext,
    transport: NetworkTransport,
    rogue_ca: trustme.CA,
) -> None:
    """An endpoint whose certificate turns bad, then whose TLS stops completing handshakes,
    fails the very next check each time, though an old connection would still be served:
    every check makes a new connection and a full handshake (no keep-alive by default)."""
    r = await router(nursery, server_context, ("app.test", respond()))
    p = probe(r.port, timeout=0.5, retries=0)
    session = transport.open_session(p, "local")
    try:
        assert (await run_check(session, p)).ok
        assert (await run_check(session, p)).ok
        assert r.connections == 2  # one handshake per check
        r.ssl_context = server_context("app.test", "origin.test", issuer=rogue_ca)
        bad_cert = await run_check(session, p)
        assert (bad_cert.ok, bad_cert.reason) == (False, Reason.TLS_UNTRUSTED_CERTIFICATE)
        r.ssl_context = server_context("app.test", "origin.test")
        assert (await run_check(session, p)).ok
        r.handshakes = False
        stuck = await run_check(session, p)
        assert (stuck.ok, stuck.reason) == (False, Reason.HTTP_TIMEOUT)
    finally:
        await session.aclose()


async def test_reuse_bounds_how_long_a_connection_hides_a_broken_handshake(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    """With ``reuse`` opted in, checks ride the keep-alive connection until it is ``reuse``
    seconds old; the first check after that makes a new handshake and sees the breakage."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    transport = NetworkTransport(ssl_context=ctx, reuse=0.3)
    r = await router(nursery, server_context, ("app.test", respond()))
    p = probe(r.port, timeout=0.5, retries=0)
    session = transport.open_session(p, "local")
    try:
        assert (await run_check(session, p)).ok
        r.handshakes = False
        assert (await run_check(session, p)).ok  # the young connection still answers
        assert r.connections == 1
        await trio.sleep(0.35)  # the connection is now older than reuse
        stuck = await run_check(session, p)
        assert (stuck.ok, stuck.reason) == (False, Reason.HTTP_TIMEOUT)
    finally:
        await session.aclose()
