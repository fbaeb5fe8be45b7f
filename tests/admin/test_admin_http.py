"""The admin listener over real loopback sockets: every endpoint, and what must not crash it."""

from __future__ import annotations

import dataclasses
import random
from functools import partial

import httpx
import pytest
import trio
import trio.lowlevel
from admin_builders import (
    HEADER_HOST,
    HOST,
    TUNNEL,
    StartAdmin,
    all_healthy,
    config,
    probe,
    samples,
)
from admin_builders import engine as make_engine

from lb.admin import MAX_HEADER_BYTES, ReloadResult, serve_admin
from lb.config.model import Datacenter, FixedResponse, Rule
from lb.engine import Engine
from lb.metrics import Metrics
from steering import Request

pytestmark = pytest.mark.integration

ADMIN = {"X-Tunnel-LB": "1"}
"""What a script sends with a state-changing call (see tests/admin/test_admin_guard.py)."""


async def test_healthz_and_readyz(start_admin: StartAdmin, engine: Engine) -> None:
    client = await start_admin()
    r = await client.get("/healthz")
    assert (r.status_code, r.text) == (200, "ok\n")
    r = await client.get("/readyz")
    assert r.status_code == 503
    all_healthy(engine)
    r = await client.get("/readyz")
    assert (r.status_code, r.text) == (200, "ready\n")
    r = await client.head("/healthz")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "3"


async def test_metrics_endpoint(start_admin: StartAdmin, engine: Engine, metrics: Metrics) -> None:
    client = await start_admin()
    probe(engine, "eu", "a", ok=True, status=200, rtt=0.01)
    metrics.request_done(HOST, "eu", "a", 200, 0.01)
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    s = samples(r.text)
    labels = {"load_balancer": HOST, "pool": "eu", "endpoint": "a", "status": "200"}
    assert s[("lb_requests_total", frozenset(labels.items()))] == 1
    labels = {"pool": "eu", "endpoint": "a", "vantage": "*", "state": "healthy"}
    assert s[("lb_endpoint_health", frozenset(labels.items()))] == 1


async def test_status_document(start_admin: StartAdmin, engine: Engine, metrics: Metrics) -> None:
    client = await start_admin()
    all_healthy(engine)
    probe(engine, "eu", "b", ok=False, vantages=["SIN"], reason="TCP timeout", at=2.0)
    ep = engine.book.snapshot().pools["eu"].endpoint("a")
    assert ep is not None
    engine.live.started(ep)
    engine.live.connection_opened(ep)
    metrics.request_done(HOST, "eu", "a", 200, 0.01)
    metrics.request_done(HOST, "eu", "a", 502, 0.01)
    metrics.request_done(HOST, None, None, 530, 0.01)
    r = await client.get("/status")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["ready"] is True
    assert doc["generation"] == 0
    assert doc["vantage_points"] == ["FRA", "IAD", "SIN"]
    lbs = {lb["name"]: lb for lb in doc["load_balancers"]}
    assert lbs[HOST] == {
        "name": HOST,
        "enabled": True,
        "state": "healthy",
        "policy": "off",
        "default_pools": ["eu", "us"],
        "fallback_pool": "fb",
        "session_affinity": "cookie",
        "requests": 3,
        "responses": {"200": 1, "502": 1, "530": 1},
    }
    pools = {p["name"]: p for p in doc["pools"]}
    eu = pools["eu"]
    assert (eu["state"], eu["eligible"], eu["healthy_count"], eu["minimum_origins"]) == (
        "healthy",
        True,
        2,
        1,
    )
    assert eu["in_flight"] == 1
    assert eu["connections"] == 1
    assert eu["probe_rtt"]["FRA"] == pytest.approx(0.02)
    eps = {e["name"]: e for e in eu["endpoints"]}
    a = eps["a"]
    assert a["tunnel_id"] == TUNNEL
    assert a["address"] == f"{TUNNEL}.cfargotunnel.com"
    assert (a["health"], a["enabled"], a["weight"]) == ("healthy", True, 1.0)
    assert (a["in_flight"], a["connections"], a["requests"]) == (1, 1, 2)
    assert set(a["vantages"]) == {"FRA", "IAD", "SIN"}
    last = a["vantages"]["FRA"]["last_probe"]
    assert last["ok"] is True
    assert (last["status"], last["rtt"], last["at"], last["reason"]) == (200, 0.02, 1.0, "")
    assert last["age"] >= 0
    b_sin = eps["b"]["vantages"]["SIN"]
    assert b_sin["health"] == "unhealthy"
    assert b_sin["last_probe"]["reason"] == "TCP timeout"
    assert b_sin["last_probe"]["ok"] is False
    assert eps["b"]["health"] == "healthy"  # 2 of 3 vantage points (R14)
    assert eps["b"]["port"] == 8443
    assert eps["c"]["health"] == "disabled"
    assert eps["c"]["vantages"] == {}
    fb = pools["fb"]
    assert fb["monitor"] is None
    assert fb["endpoints"][0]["vantages"] == {}
    assert doc["traffic"] == {"in_flight": 1, "connections": 1, "requests": 3,
                              "header_sessions": 0}  # fmt: skip


async def test_status_before_any_probe(start_admin: StartAdmin) -> None:
    client = await start_admin()
    doc = (await client.get("/status")).json()
    assert doc["ready"] is False
    lbs = {lb["name"]: lb for lb in doc["load_balancers"]}
    assert lbs[HOST]["state"] == "fallback"
    eu = next(p for p in doc["pools"] if p["name"] == "eu")
    assert eu["state"] == "unknown"
    a = eu["endpoints"][0]
    assert a["vantages"]["FRA"] == {"health": "unknown", "last_probe": None}


async def test_explain(start_admin: StartAdmin, engine: Engine) -> None:
    client = await start_admin()
    all_healthy(engine)
    r = await client.get("/explain", params={"host": HOST, "client_ip": "192.0.2.1"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["load_balancer"] == HOST
    assert doc["pool"] == "eu"
    assert doc["endpoint"] in {"a", "b"}
    assert doc["reason"] == "policy"
    assert doc["affinity"] == "new"
    assert doc["set_cookie"] is True
    assert doc["trace"] and all(isinstance(step, str) for step in doc["trace"])
    # The same seed gives the same answer; HEAD gives headers only.
    again = await client.get("/explain", params={"host": HOST, "client_ip": "192.0.2.1"})
    assert again.json() == doc
    assert (await client.head("/explain", params={"host": HOST})).content == b""


async def test_explain_cookie_hit_and_invalid(start_admin: StartAdmin, engine: Engine) -> None:
    client = await start_admin()
    all_healthy(engine)
    d = engine.router.decide(Request(host=HOST, wall=2e9), random.Random(0))
    assert d.set_cookie is not None and d.endpoint is not None
    r = await client.get("/explain", params={"host": HOST, "cookie": d.set_cookie})
    assert r.json()["affinity"] in {"hit", "expired"}
    r = await client.get("/explain", params={"host": HOST.upper(), "cookie": "garbage"})
    assert r.status_code == 200
    assert r.json()["affinity"] == "invalid"


async def test_explain_does_not_touch_live_counters_or_sessions(
    start_admin: StartAdmin, engine: Engine
) -> None:
    client = await start_admin()
    all_healthy(engine)
    before_live = (dict(engine.live.in_flight), dict(engine.live.pool_in_flight))
    params = {"host": HEADER_HOST, "header": "X-User: alice"}
    for _ in range(3):
        r = await client.get("/explain", params=params)
        assert r.status_code == 200
        assert r.json()["affinity"] == "new"  # never remembered, so never a hit
    assert len(engine.sessions) == 0
    assert (dict(engine.live.in_flight), dict(engine.live.pool_in_flight)) == before_live

    # A real session is seen (as a hit) but neither refreshed nor replaced.
    real = engine.sessions
    real.put(HEADER_HOST, ("alice",), "eu/b", trio.current_time())
    stamp = dict(real._sessions)
    r = await client.get("/explain", params=params)
    assert (r.json()["affinity"], r.json()["endpoint"]) == ("hit", "b")
    assert dict(real._sessions) == stamp


async def test_explain_errors(start_admin: StartAdmin) -> None:
    client = await start_admin()
    r = await client.get("/explain")
    assert r.status_code == 400
    assert r.json() == {"error": "missing query parameter: host"}
    r = await client.get("/explain", params={"host": ""})
    assert r.status_code == 400
    r = await client.get("/explain", params={"host": "nope.example.com"})
    assert r.status_code == 404
    assert r.json()["known"] == sorted([HOST, HEADER_HOST])
    assert "nope.example.com" in r.json()["error"]
    r = await client.get("/explain", params={"host": HOST, "header": "no-colon"})
    assert r.status_code == 400
    for bad_seed in ("x", "\u00b2", "9" * 5000):  # "²" passes str.isdigit(), int() rejects it
        r = await client.get("/explain", params={"host": HOST, "seed": bad_seed})
        assert r.status_code == 400
    r = await client.get("/explain", params={"host": HOST, "seed": "7"})
    assert r.status_code == 200
    assert r.json()["reason"] == "fallback"  # nothing probed: no eligible pool (R30)


async def test_reload(start_admin: StartAdmin) -> None:
    calls: list[str] = []

    async def reload() -> ReloadResult:
        calls.append("x")
        await trio.lowlevel.checkpoint()
        if len(calls) == 1:
            return ReloadResult(ok=True, generation=1, detail={"changed": ["eu"]})
        if len(calls) == 2:
            return ReloadResult(ok=False, errors=("lb.yaml:3: pools[0].name: required",))
        raise RuntimeError("disk on fire")

    client = await start_admin(reload)
    r = await client.post("/reload", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "errors": [], "generation": 1, "changed": ["eu"]}
    r = await client.post("/reload", content=b"ignored body", headers=ADMIN)
    assert r.status_code == 400
    assert r.json() == {"ok": False, "errors": ["lb.yaml:3: pools[0].name: required"]}
    r = await client.post("/reload", headers=ADMIN)
    assert r.status_code == 500
    assert r.json() == {"ok": False, "errors": ["RuntimeError: disk on fire"]}
    r = await client.get("/reload")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert (await client.get("/healthz")).status_code == 200  # still serving


async def test_reload_unavailable(start_admin: StartAdmin) -> None:
    client = await start_admin()
    r = await client.post("/reload", headers=ADMIN)
    assert r.status_code == 501
    assert r.json()["ok"] is False


async def test_reloads_are_serialised(start_admin: StartAdmin) -> None:
    running = 0
    peak = 0

    async def reload() -> ReloadResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.05)  # on purpose: a reload that takes a while, for others to overlap
        running -= 1
        return ReloadResult(ok=True)

    client = await start_admin(reload)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(partial(client.post, "/reload", headers=ADMIN))
    assert peak == 1


async def test_unknown_path_and_wrong_method(start_admin: StartAdmin) -> None:
    client = await start_admin()
    r = await client.get("/nope")
    assert r.status_code == 404
    assert "/metrics" in r.json()["endpoints"]
    r = await client.post("/metrics")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    r = await client.delete("/status")
    assert r.status_code == 405
    assert (await client.get("/status/")).status_code == 200  # trailing slash tolerated


async def test_keep_alive_serves_many_requests_on_one_connection(start_admin: StartAdmin) -> None:
    client = await start_admin()
    seen: set[object] = set()
    for _ in range(5):
        r = await client.get("/healthz", extensions={})
        assert r.status_code == 200
        stream = r.extensions.get("network_stream")
        seen.add(id(stream.get_extra_info("socket")) if stream else None)
    assert len(seen) == 1


async def raw(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        chunks = []
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
async def address(engine: Engine, metrics: Metrics, nursery: trio.Nursery) -> tuple[str, int]:
    result: tuple[str, int] = await nursery.start(
        partial(serve_admin, engine, metrics, host="127.0.0.1", port=0)
    )
    return result


async def test_malformed_requests_get_400_and_the_server_survives(
    address: tuple[str, int],
) -> None:
    for garbage in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # no Host: h11 rejects it
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: zz\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ):
        reply = await raw(address, garbage)
        assert reply.startswith(b"HTTP/1.1 400 "), (garbage, reply[:80])
    reply = await raw(
        address, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\nok\n")


async def test_oversized_head_and_body(address: tuple[str, int]) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    reply = await raw(address, head)
    assert reply.startswith(b"HTTP/1.1 431 ")
    body = b"b" * 100_000
    req = (
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    reply = await raw(address, req)
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("size", "status"), [(MAX_HEADER_BYTES, 200), (MAX_HEADER_BYTES + 1, 431), (17_000, 431)]
)
async def test_head_limit_is_exact_whatever_the_reads(
    address: tuple[str, int], size: int, status: int
) -> None:
    """docs/metrics.md: a head over 16 KiB is 431; h11's own bound let a 17,000-byte head
    through when it came whole within two 16 KiB reads."""
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    reply = await raw(address, head)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:80]
    if status == 431:
        assert b"connection: close" in reply.lower()


async def test_content_length_with_transfer_encoding_is_400_and_not_served(
    start_admin: StartAdmin,
) -> None:
    """The proxy refuses this framing (docs/proxy.md, "Refused requests"); so does the admin
    listener, before any handler runs."""
    calls: list[str] = []

    async def reload() -> ReloadResult:
        calls.append("x")
        return ReloadResult(ok=True)

    client = await start_admin(reload)
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    request = (
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tunnel-LB: 1\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    reply = await raw((host, port), request)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]
    assert b"Content-Length with Transfer-Encoding" in reply
    assert b"connection: close" in reply.lower()
    assert calls == []
    assert (await client.post("/reload", headers=ADMIN)).status_code == 200
    assert calls == ["x"]


async def test_client_closing_early_is_harmless(address: tuple[str, int]) -> None:
    for data in (b"", b"GET /status HTTP/1.1\r\nHo", b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 10\r\n\r\nabc"):  # fmt: skip
        stream = await trio.open_tcp_stream(*address)
        await stream.send_all(data)
        await stream.aclose()
    reply = await raw(
        address, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200 ")


async def test_handler_errors_become_500(
    start_admin: StartAdmin, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_admin()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("lb.admin.status_json", broken)
    r = await client.get("/status")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error: RuntimeError: boom"}
    assert (await client.get("/healthz")).status_code == 200


async def test_address_defaults_from_config(nursery: trio.Nursery) -> None:
    eng = make_engine(config(admin="127.0.0.1:0"))
    host, port = await nursery.start(partial(serve_admin, eng, Metrics()))
    assert host == "127.0.0.1"
    assert port > 0
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_explain_passes_method_and_path_to_custom_rules(
    start_admin: StartAdmin, engine: Engine
) -> None:
    lb = engine.config.load_balancers[0]
    rule = Rule(
        condition='http.request.method eq "DELETE" and http.request.uri.path eq "/x"',
        fixed_response=FixedResponse(status_code=405),
    )
    engine.reconfigure(
        dataclasses.replace(
            engine.config,
            load_balancers=(
                dataclasses.replace(lb, rules=(rule,)),
                *engine.config.load_balancers[1:],
            ),
        ),
        now=0.0,
    )
    client = await start_admin()
    r = await client.get("/explain", params={"host": HOST, "method": "delete", "path": "/x"})
    assert (r.json()["reason"], r.json()["fixed_response"]["status_code"]) == (
        "fixed_response",
        405,
    )
    r = await client.get("/explain", params={"host": HOST, "path": "/x"})
    assert r.json()["reason"] != "fixed_response"


async def test_explain_refuses_what_the_cli_refuses(
    start_admin: StartAdmin, engine: Engine
) -> None:
    """An unknown data center or a client IP that is none: 400 with the reason
    ``tunnel-lb explain`` gives, not a decision steered as if they were not given."""
    fra = Datacenter(code="FRA", region="WEU", country="DE")
    engine.reconfigure(dataclasses.replace(engine.config, datacenters={"FRA": fra}), now=0.0)
    all_healthy(engine)
    client = await start_admin()
    r = await client.get("/explain", params={"host": HOST, "datacenter": "XXX"})
    assert r.status_code == 400
    assert r.json() == {
        "error": "datacenter='XXX': unknown data center; a configuration adds codes "
        "under `datacenters`"
    }
    r = await client.get("/explain", params={"host": HOST, "datacenter": "fr"})
    assert r.status_code == 400
    assert 'did you mean "FRA"' in r.json()["error"]
    for bad_ip in ("zzz", "999.1.1.1"):
        r = await client.get("/explain", params={"host": HOST, "client_ip": bad_ip})
        assert r.status_code == 400
        assert r.json() == {"error": f"client_ip={bad_ip!r}: not an IP address"}
    params = {"host": HOST, "datacenter": " fra", "client_ip": "2001:db8::1"}
    r = await client.get("/explain", params=params)
    assert r.status_code == 200, r.json()
    assert r.json()["reason"] != "fallback"
