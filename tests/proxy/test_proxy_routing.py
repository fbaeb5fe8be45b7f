"""Steering through the real proxy: weights, failover, affinity, zero-downtime retry, 404/530."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from proxy_support import LB_HOST, Certs, Client, get, start_stack, tunnel_address

from lb.config.model import FixedResponse, Rule
from lb.core.health import ProbeResult
from lb.proxy.upstream import target_for
from steering.affinity import COOKIE_NAME, expires_of, sign


async def test_plain_request_goes_through(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    resp = await get(stack.port)
    assert resp.status == 200
    assert resp.body == b"b0"
    assert resp.reason == b"OK"
    (record,) = await stack.settled()
    assert record.status == 200
    assert record.endpoint == "p1/e0"
    assert record.load_balancer == LB_HOST
    assert record.error == ""
    assert stack.engine.live.in_flight["p1/e0"] == 0


async def test_keep_alive_reuses_upstream_connections(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        for _ in range(20):
            assert (await client.request()).status == 200
    assert stack.server.pool.opened == 1
    assert stack.backends[0].connections == 1
    assert stack.engine.live.connections["p1/e0"] == 1


async def test_distribution_follows_weights(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, weights=[0.25, 0.75], seed=7)
    counts = {"b0": 0, "b1": 0}
    async with await Client.connect(stack.port) as client:
        for _ in range(400):
            resp = await client.request()
            counts[resp.body.decode()] += 1
    share = counts["b1"] / 400
    assert 0.68 <= share <= 0.82, counts


async def test_unhealthy_endpoint_gets_no_traffic(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2)
    engine = stack.engine
    # Pools without a monitor are always eligible (R13): disable e0 by a reload instead.
    cfg = engine.config
    pool = cfg.pools[0]
    origins = (
        pool.origins[0].__class__(**{**_fields(pool.origins[0]), "enabled": False}),
        pool.origins[1],
    )
    new_pool = pool.__class__(**{**_fields(pool), "origins": origins})
    engine.reconfigure(
        cfg.__class__(**{**_fields(cfg), "pools": (new_pool, cfg.pools[1])}),
        now=trio.current_time(),
    )
    async with await Client.connect(stack.port) as client:
        bodies = {(await client.request()).body for _ in range(30)}
    assert bodies == {b"b1"}


async def test_refused_endpoint_is_retried_elsewhere(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2)
    await stack.backends[0].stop()
    async with await Client.connect(stack.port) as client:
        for _ in range(20):
            resp = await client.request()
            assert resp.status == 200
            assert resp.body == b"b1"
    retried = [r for r in (await stack.settled()) if r.retried]
    assert retried, "some requests must have been steered to the stopped endpoint first"
    for record in retried:
        assert record.retried == "zero_downtime_failover"
        assert [a.status for a in record.attempts] == [521, 200]
        assert record.attempts[0].error == "refused"
    assert all(reason == "zero_downtime_failover" for reason, _ in stack.retries)
    assert stack.engine.live.in_flight.get("p1/e0", 0) == 0


async def test_monitor_marks_endpoint_down(nursery: trio.Nursery, certs: Certs) -> None:
    from dataclasses import replace

    from lb.config.model import Monitor

    stack = await start_stack(nursery, certs, 2)
    engine = stack.engine
    cfg = engine.config
    monitored = replace(cfg.pools[0], monitor="m")
    engine.reconfigure(
        replace(cfg, monitors=(Monitor(id="m", type="https"),), pools=(monitored, cfg.pools[1])),
        now=trio.current_time(),
    )
    now = trio.current_time()
    engine.apply(ProbeResult(pool="p1", endpoint="e0", vantage="local", at=now, ok=True))
    engine.apply(ProbeResult(pool="p1", endpoint="e1", vantage="local", at=now, ok=False))
    bodies = {(await get(stack.port)).body for _ in range(10)}
    assert bodies == {b"b0"}
    engine.apply(ProbeResult(pool="p1", endpoint="e1", vantage="local", at=now, ok=True))
    engine.apply(ProbeResult(pool="p1", endpoint="e0", vantage="local", at=now, ok=False))
    bodies = {(await get(stack.port)).body for _ in range(10)}
    assert bodies == {b"b1"}


async def test_all_refused_answers_521_or_502(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2)
    for b in stack.backends:
        await b.stop()
    resp = await get(stack.port)
    assert resp.status == 521
    assert b"error code: 521" in resp.body
    assert len((await stack.settled())[-1].attempts) == 2

    plain = await start_stack(nursery, certs, 1, error_style="plain")
    await plain.backends[0].stop()
    resp = await get(plain.port)
    assert resp.status == 502


async def test_affinity_cookie_pins_the_endpoint(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, affinity="cookie", seed=3)
    first = await get(stack.port)
    cookie = first.header("set-cookie")
    assert cookie is not None
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "Max-Age=82800" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain-HTTP listener, secure=Auto
    value = cookie.split(";", 1)[0]
    for _ in range(20):
        again = await get(stack.port, headers=[("cookie", f"a=b; {value}")])
        assert again.body == first.body
        assert again.header("set-cookie") is None
    assert (await stack.settled())[-1].affinity == "hit"


async def test_pinned_endpoint_down_remaps_with_new_cookie(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 2, affinity="cookie", zdf="sticky", seed=3)
    first = await get(stack.port)
    value = (first.header("set-cookie") or "").split(";", 1)[0]
    pinned = int(first.body.decode()[1:])
    await stack.backends[pinned].stop()
    again = await get(stack.port, headers=[("cookie", value)])
    assert again.status == 200
    assert again.body == f"b{1 - pinned}".encode()
    new_cookie = again.header("set-cookie")
    assert new_cookie is not None and new_cookie.split(";", 1)[0] != value


async def test_unknown_host_is_404(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1)
    async with await Client.connect(stack.port) as client:
        resp = await client.request(host="nope.example")
        assert resp.status == 404
        assert b"no load balancer" in resp.body
        # The connection stays usable.
        assert (await client.request()).status == 200
    assert (await stack.settled())[0].error == "unknown_host"


async def test_no_pool_is_530_1016(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, pool_enabled=False, fallback_enabled=False)
    resp = await get(stack.port)
    assert resp.status == 530
    assert b"error code: 1016" in resp.body
    assert resp.header("retry-after") == "120"
    plain = await start_stack(
        nursery, certs, 1, pool_enabled=False, fallback_enabled=False, error_style="plain"
    )
    assert (await get(plain.port)).status == 503


async def test_connect_timeout_is_522(nursery: trio.Nursery, certs: Certs) -> None:
    import socket

    from lb.config.model import Limits

    # A listener that never accepts, its backlog filled: further SYNs are dropped, so a
    # connect hangs until the proxy's connect timeout.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await trio.sleep(0.05)  # the kernel's handshakes: nothing to observe from here
        stack = await start_stack(
            nursery,
            certs,
            1,
            limits=Limits(connect_timeout=0.2),
            extra_connect={f"{tunnel_address(0)}:443": f"127.0.0.1:{port}"},
        )
        with trio.fail_after(5):
            resp = await get(stack.port)
        assert resp.status == 522
        assert (await stack.settled())[-1].attempts[0].error == "connect_timeout"
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


async def test_bad_certificate_is_526(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, host_header="other.invalid")
    resp = await get(stack.port)
    assert resp.status == 526
    assert (await stack.settled())[-1].attempts[0].error == "tls_certificate"


async def test_target_rules() -> None:
    stack_ep = _endpoint(address="00000000-0000-4000-8000-000000000001.cfargotunnel.com", port=0)
    t = target_for(stack_ep, "client.example", {})
    assert (t.dial_port, t.tls, t.host) == (443, True, "client.example")
    plain = _endpoint(address="10.0.0.1", port=80, host="h.example")
    t = target_for(plain, "client.example", {"10.0.0.1:80": "127.0.0.1:8080"})
    assert (t.dial_host, t.dial_port, t.tls, t.host) == ("127.0.0.1", 8080, False, "h.example")
    other = _endpoint(address="10.0.0.1", port=8443)
    assert target_for(other, "c", {}).tls is True
    assert target_for(_endpoint(address="10.0.0.1", port=0), "c", {}).dial_port == 443


def test_targets_are_remembered_until_the_endpoint_or_connect_to_changes() -> None:
    from types import SimpleNamespace

    from lb.proxy.exchange import _target

    shared: Any = SimpleNamespace(targets={}, targets_key=None)
    ep = _endpoint(address="10.0.0.1", port=8443)
    mapping = {"10.0.0.1:8443": "127.0.0.1:9000"}
    first = _target(shared, ep, "a.example", mapping)
    assert (first.dial_host, first.dial_port, first.host) == ("127.0.0.1", 9000, "a.example")
    assert _target(shared, ep, "a.example", mapping) is first
    assert _target(shared, ep, "b.example", mapping).host == "b.example"  # no Host of its own
    fixed = _endpoint(address="10.0.0.1", port=8443, host="h.example")
    assert _target(shared, fixed, "c.example", mapping).host == "h.example"
    # A new view of the endpoint (a reload, a health change) is looked up again...
    moved = _endpoint(address="10.0.0.2", port=8443)
    assert _target(shared, moved, "a.example", mapping).dial_host == "10.0.0.2"
    # ...and so is every endpoint when connect_to changes.
    remapped = {"10.0.0.2:8443": "127.0.0.1:9001"}
    assert _target(shared, moved, "a.example", remapped).dial_port == 9001


def _endpoint(*, address: str, port: int, host: str | None = None):  # type: ignore[no-untyped-def]
    from lb.config.tunnels import tunnel_uuid
    from lb.core.health import Health
    from lb.core.snapshot import EndpointView

    return EndpointView(
        pool="p",
        name="e",
        index=0,
        address=address,
        port=port,
        host=host,
        tunnel_id=tunnel_uuid(address),
        weight=1.0,
        enabled=True,
        health=Health.HEALTHY,
        vantage_health={},
        disabled_at=None,
        datacenters=frozenset(),
    )


def _fields(obj: object) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


async def test_serve_proxy_opens_https_listeners_and_shuts_down(
    nursery: trio.Nursery, certs: Certs, tmp_path: pytest.TempPathFactory
) -> None:
    import ssl
    from dataclasses import replace

    from proxy_support import make_config, serve_backend

    from lb.config.model import Listener
    from lb.engine import Engine
    from lb.proxy import serve_proxy

    backend = await nursery.start(serve_backend, "b0", certs.backend)
    cert = tmp_path / "cert.pem"  # type: ignore[operator]
    key = tmp_path / "key.pem"  # type: ignore[operator]
    certs.server_cert.private_key_pem.write_to_path(str(key))
    certs.server_cert.cert_chain_pems[0].write_to_path(str(cert))
    cfg = make_config([backend.port], affinity="cookie")
    listen = (Listener(address="127.0.0.1", port=0, certificate=str(cert), key=str(key)),)
    cfg = replace(cfg, engine=replace(cfg.engine, listen=listen))
    engine = Engine(cfg, now=trio.current_time())
    stop = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
        await serve_proxy(engine, upstream_ssl=certs.client, shutdown=stop, task_status=task_status)
        done.set()

    ((host, port),) = await nursery.start(run)
    assert host == "127.0.0.1" and port > 0
    raw = await trio.open_tcp_stream(host, port)
    ctx = ssl.create_default_context()
    certs.ca.configure_trust(ctx)
    tls = trio.SSLStream(raw, ctx, server_hostname=LB_HOST, https_compatible=True)
    async with Client(tls) as client:
        resp = await client.request()
    assert resp.status == 200
    cookie = resp.header("set-cookie") or ""
    assert "Secure" in cookie and "SameSite=None" in cookie
    stop.set()
    with trio.fail_after(3):
        await done.wait()


async def test_sticky_rewrite_keeps_expiry_in_max_age(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, affinity="cookie", zdf="sticky")
    left = 2000
    cookie = sign(stack.engine.secret, LB_HOST, "p1", "e0", int(time.time()) + left)
    await stack.backends[0].stop()
    resp = await get(stack.port, headers=[("cookie", f"{COOKIE_NAME}={cookie}")])
    assert (resp.status, resp.body) == (200, b"b1")
    set_cookie = resp.header("set-cookie") or ""
    value = set_cookie.split(";", 1)[0].split("=", 1)[1]
    assert value != cookie
    max_age = int(set_cookie.split("Max-Age=")[1].split(";")[0])
    expires = expires_of(value)
    assert expires is not None and left - 2 <= expires - time.time() <= left
    assert left - 2 <= max_age <= left  # not the full TTL


async def test_host_variants_share_one_pooled_connection(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, host_header=None)
    for i in range(10):
        host = ("APP.example" if i % 2 else "app.EXAMPLE.") + f":{1000 + i}"
        resp = await get(stack.port, headers=[("connection", "close")], host=host)
        assert resp.status == 200
        await stack.settled()
    pool = stack.server.pool
    assert (pool.opened, pool.idle_count(), len(pool._idle)) == (1, 1, 1)
    # The Host header still goes upstream as the client sent it.
    assert stack.backends[0].seen[-1].headers["host"] == "APP.example:1009"


async def test_idle_pool_global_cap_evicts_oldest(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 2, seed=5)
    pool = stack.server.pool
    pool.max_idle_total = 1
    for _ in range(12):
        assert (await get(stack.port)).status == 200
        await stack.settled()
        assert pool.idle_count() <= 1
    assert all(b.seen for b in stack.backends)  # both endpoints (two pool keys) were used
    assert pool.idle_count() == 1
    live = stack.engine.live.connections
    assert sum(live.values()) == 1  # evicted connections were closed and counted


async def test_r32_fixed_responses_and_rules_on_real_requests(
    nursery: trio.Nursery, certs: Certs
) -> None:
    moved = FixedResponse(status_code=301, location="https://example.org/new")
    down = FixedResponse(status_code=503, content_type="application/json", message_body='{"a":1}')
    rules = (
        Rule(name="moved", condition='http.request.uri.path eq "/old"', fixed_response=moved),
        Rule(
            condition='http.cookie contains "beta=1" and http.request.cookies["beta"][0] eq "1"',
            fixed_response=FixedResponse(status_code=418),
        ),
        Rule(
            condition='starts_with(http.request.uri.path, "/maint") and http.request.method '
            'in {"GET" "HEAD"}',
            fixed_response=down,
        ),
    )
    stack = await start_stack(nursery, certs, 1, rules=rules)
    async with await Client.connect(stack.port) as client:
        old = await client.request("GET", "/old?x=1")
        assert (old.status, old.header("location"), old.body) == (
            301,
            "https://example.org/new",
            b"",
        )
        maint = await client.request("GET", "/maintenance")
        assert (maint.status, maint.header("content-type"), maint.body) == (
            503,
            "application/json",
            b'{"a":1}',
        )
        head = await client.request("HEAD", "/maintenance")
        assert (head.status, head.header("content-length"), head.body) == (503, "7", b"")
        beta = await client.request("GET", "/", headers=[("cookie", "a=2; beta=1")])
        assert beta.status == 418
        # Requests no rule answers go to the pool, on the same connection.
        assert (await client.request("POST", "/maintenance", body=b"x")).status == 200
    records = await stack.settled()
    assert [(r.status, r.decision, r.endpoint) for r in records] == [
        (301, "fixed_response", None),
        (503, "fixed_response", None),
        (503, "fixed_response", None),
        (418, "fixed_response", None),
        (200, "policy", "p1/e0"),
    ]
    assert [s.path for s in stack.backends[0].seen] == ["/maintenance"]


async def test_head_requests_get_proxy_answers_without_a_body(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """A HEAD answered by the proxy itself (here 404 and 530) has a head only, as h11 needs;
    the connection stays usable."""
    stack = await start_stack(nursery, certs, 1, pool_enabled=False, fallback_enabled=False)
    async with await Client.connect(stack.port) as client:
        unknown = await client.request("HEAD", "/", host="nowhere.example")
        assert (unknown.status, unknown.body) == (404, b"")
        no_pool = await client.request("HEAD", "/")
        assert (no_pool.status, no_pool.body) == (530, b"")
        assert (await client.request("GET", "/", host="nowhere.example")).status == 404
