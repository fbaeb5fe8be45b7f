"""The connector's fault control API over real sockets: each fault as a client sees it."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NamedTuple

import httpx
import pytest
import trio
from conftest import TUNNEL

from lb.connector import ConnectorConfig, ConnectorStats, IngressRule, serve_connector
from lb.connector.faults import FaultError, Faults, serve_control

pytestmark = pytest.mark.integration


async def _start(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext,
    rules: tuple[IngressRule, ...] = (IngressRule("hello_world"),),
    **fields: Any,
) -> tuple[str, str]:
    config = ConnectorConfig(tunnel=TUNNEL, ingress=rules, ssl_context=server_ctx, **fields)
    faults = Faults()
    stats = ConnectorStats()
    bound = await nursery.start(partial(serve_connector, config, stats=stats, faults=faults))
    control = await nursery.start(partial(serve_control, faults, ("127.0.0.1", 0), stats=stats))
    host, port = bound[0]
    return f"https://{host}:{port}/", f"http://{control[0]}:{control[1]}/faults"


class Connected(NamedTuple):
    """A started connector, a client that trusts it and one for its control API."""

    url: str
    control: str
    client: httpx.AsyncClient
    admin: httpx.AsyncClient
    do: Callable[..., Awaitable[dict[str, Any]]]
    """POST one change to the control API; it must be accepted; the state it answers."""


@asynccontextmanager
async def _connected(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    rules: tuple[IngressRule, ...] = (IngressRule("hello_world"),),
) -> AsyncIterator[Connected]:
    """:func:`_start`, with the two clients that most fault tests drive it through."""
    url, control = await _start(nursery, server_ctx, rules)
    async with (
        httpx.AsyncClient(verify=client_ctx, timeout=5) as client,
        httpx.AsyncClient(timeout=5) as admin,
    ):

        async def do(**body: object) -> dict[str, Any]:
            response = await admin.post(control, json=body)
            assert response.status_code == 200, response.text
            state: dict[str, Any] = response.json()
            return state

        yield Connected(url, control, client, admin, do)


async def test_faults_refuse_blackhole_down_status_recover(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with _connected(nursery, server_ctx, client_ctx) as (url, control, client, admin, do):
        assert (await client.get(url)).status_code == 200
        assert (await do(do="down"))["fault"] == "down"
        assert (await client.get(url)).status_code == 530
        await do(do="status", status=503)
        assert (await client.get(url)).status_code == 503
        await do(do="refuse")
        # The kept-alive connection was closed with the listener: the client dials anew,
        # and is refused.
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
        await do(do="blackhole")
        async with httpx.AsyncClient(verify=client_ctx, timeout=0.5) as fresh:
            with pytest.raises(httpx.TimeoutException):
                await fresh.get(url)
        assert (await do(do="recover"))["fault"] is None
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as fresh:
            assert (await fresh.get(url)).status_code == 200
        state = (await admin.get(control)).json()
        assert state == {"fault": None, "latency": 0.0}


async def test_flap_alternates_and_latency_is_reported(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with _connected(nursery, server_ctx, client_ctx) as (url, control, client, admin, _):
        body = {"do": "flap", "period": 0.4, "down_for": 0.2, "how": "status", "status": 502}
        assert (await admin.post(control, json=body)).status_code == 200
        seen: set[int] = set()
        with trio.move_on_after(10):
            while seen != {200, 502}:
                seen.add((await client.get(url)).status_code)
                await trio.sleep(0.05)  # on purpose: requests spread over the flap's phases
        assert seen == {200, 502}
        state = (await admin.post(control, json={"do": "latency", "latency": 0.01})).json()
        assert state["latency"] == 0.01


def test_a_flap_dated_with_since_keeps_its_phase_however_late_it_is_set() -> None:
    """Set 3.5 s after its start (a late POST, or a hand-over), a flap of 2 s down in 5 s
    is in the phase of its ``since``, not of its arrival; before ``since`` it is up."""
    now = [103.5]
    faults = Faults(lambda: now[0])
    flap = {"do": "flap", "period": 5, "down_for": 2, "how": "status", "status": 503}
    faults.apply({**flap, "since": 100.0})
    seen = []
    for t in (103.5, 104.9, 105.1, 106.9, 107.1):
        now[0] = t
        seen.append(faults.current())
    assert seen == [("", 0), ("", 0), ("status", 503), ("status", 503), ("", 0)]
    assert faults.next_toggle() == pytest.approx(2.9)  # up until 110
    undated = Faults(lambda: now[0])
    undated.apply(flap)  # from its arrival, 107.1: down at once
    assert undated.current() == ("status", 503)
    early = Faults(lambda: now[0])
    early.apply({**flap, "since": 108.0})
    assert (early.current(), early.next_toggle()) == (("", 0), pytest.approx(0.9))


def test_a_change_dated_with_at_is_held_until_then() -> None:
    """``at`` in the future: checked now, enacted at that instant (several at one instant in
    the order they came) by the first reader of that instant, whichever it is; ``at`` in
    the past: at once."""
    now = [50.0]
    faults = Faults(lambda: now[0])
    faults.apply({"do": "status", "status": 500, "at": 52.0})
    faults.apply({"do": "latency", "latency": 0.5, "at": 51.0})
    faults.apply({"do": "recover", "at": 52.0})  # after the status of the same instant
    faults.apply({"do": "down", "at": 53.0})
    assert faults.state()["pending"] == [
        {"at": 51.0, "do": "latency", "layer": "edge"},
        {"at": 52.0, "do": "status", "layer": "edge"},
        {"at": 52.0, "do": "recover", "layer": "edge"},
        {"at": 53.0, "do": "down", "layer": "edge"},
    ]
    assert (faults.current(), faults.latency, faults.next_toggle()) == (("", 0), 0.0, 1.0)
    now[0] = 51.0
    assert (faults.current(), faults.latency) == (("", 0), 0.5)
    now[0] = 52.0
    assert faults.answer() is None  # recover after status: in reverse order, a 500
    assert faults.latency == 0.0
    now[0] = 53.0
    assert faults.answer() == 530  # the first reader of 53 s enacts the down
    faults.apply({"do": "recover"})
    faults.apply({"do": "status", "status": 503, "at": 40.0})  # late: in force at once
    assert faults.answer() == 503
    with pytest.raises(FaultError, match=r"^at: expected an instant on this machine's"):
        faults.apply({"do": "down", "at": 1.7e9})  # the wall clock, not time.monotonic()
    with pytest.raises(FaultError, match=r"^status: expected an HTTP status"):
        faults.apply({"do": "status", "at": 60.0})  # checked when it comes, not when due
    with pytest.raises(FaultError, match=r"^since: only a flap has a start"):
        faults.apply({"do": "down", "since": 60.0})
    assert "pending" not in faults.state()


def test_held_changes_are_bounded_and_an_undated_recover_drops_them() -> None:
    """A client sending ever more dated changes gets a 429 once 256 are held; an undated
    ``recover`` of a layer drops that layer's held changes (and no other's)."""
    now = [10.0]
    faults = Faults(lambda: now[0])
    for i in range(256):
        faults.apply({"do": "down", "at": 100.0 + i})
    with pytest.raises(FaultError, match=r"^256 changes are already held") as caught:
        faults.apply({"do": "down", "at": 20.0})
    assert caught.value.status == 429
    faults.apply({"do": "recover", "layer": "origin"})
    assert len(faults.state()["pending"]) == 256  # type: ignore[arg-type]
    faults.apply({"do": "recover"})
    assert "pending" not in faults.state()
    faults.apply({"do": "down", "layer": "origin", "at": 12.0})
    faults.apply({"do": "down", "at": 12.0})
    faults.apply({"do": "recover"})
    assert faults.state()["pending"] == [{"at": 12.0, "do": "down", "layer": "origin"}]
    now[0] = 12.0
    assert (faults.current(), faults.current("origin")) == (("", 0), ("down", 0))


async def test_a_dated_refuse_closes_the_port_at_its_instant_and_a_dated_recover_reopens_it(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Both POSTs come first; the connector refuses from the first instant (never before)
    and binds its port again at the second, with no request to its control port between.

    Each fresh connection is dated by when it began and when it ended: the connector
    decided somewhere in between, and on a loaded machine that span is tens of
    milliseconds wide, so an answer given just before the first instant may arrive after
    it."""
    url, control = await _start(nursery, server_ctx)
    async with httpx.AsyncClient(timeout=5) as admin:
        for _ in range(5):  # bounded: POSTs held back past the first instant are sent again
            start = time.monotonic()
            for do, at in (("refuse", start + 0.5), ("recover", start + 1.0)):
                response = await admin.post(control, json={"do": do, "at": at})
                assert response.status_code == 200, response.text
            if len(response.json().get("pending", ())) == 2:
                break  # both held: neither came into force before its instant
            assert (await admin.post(control, json={"do": "recover"})).status_code == 200
        else:
            pytest.fail("the two POSTs never came back within half a second")

    async def outcome() -> str:
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as fresh:
            try:
                await fresh.get(url)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                # Refused, or accepted before the listener closed and then cut unanswered
                # (gate(), or reset with the serving scope): either way the refusal is in
                # force.
                return "refused"
        return "served"

    seen: list[tuple[str, float, float]] = []
    with trio.fail_after(10):
        while [o for o, _, _ in seen[-1:]] != ["served"] or all(o != "refused" for o, *_ in seen):
            began = time.monotonic() - start
            seen.append((await outcome(), began, time.monotonic() - start))
            await trio.sleep(0.05)  # on purpose: connections spread over both instants
    assert all(ended >= 0.5 for o, _, ended in seen if o == "refused"), seen
    # Refusals stop at the second instant: a connection begun after it is served.
    assert all(began < 1.0 for o, began, _ in seen if o == "refused"), seen
    # Served: the connector answered before the first instant or from the second on.
    assert all(began < 0.5 or ended >= 1.0 for o, began, ended in seen if o == "served"), seen


async def test_unrehearsable_and_bad_requests_are_refused_with_a_message(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext
) -> None:
    _, control = await _start(nursery, server_ctx)
    async with httpx.AsyncClient(timeout=5) as admin:
        r = await admin.post(control, json={"do": "partition"})
        assert r.status_code == 400
        assert "partition cannot be rehearsed" in r.json()["error"]
        r = await admin.post(control, json={"do": "unreachable"})
        assert "unreachable cannot be rehearsed" in r.json()["error"]
        r = await admin.post(control, json={"do": "status"})
        assert r.json() == {"error": "status: expected an HTTP status 100..599"}
        assert (await admin.post(control, content=b"{not json")).status_code == 400
        # Integers too big for a float: a 400 naming the field, and the API still serves.
        huge = "9" * 400
        for body in (
            f'{{"do": "down", "at": {huge}}}',
            f'{{"do": "flap", "period": 1, "since": -{huge}}}',
        ):
            r = await admin.post(control, content=body.encode())
            assert r.status_code == 400, r.text
            assert r.json()["error"].startswith(("at: expected", "since: expected"))
        assert (await admin.post(control, json={"do": "down"})).status_code == 200
        assert (await admin.get(control)).json()["fault"] == "down"
        assert (await admin.get(control.replace("/faults", "/x"))).status_code == 404


async def test_origin_faults_fail_the_application_not_the_connector(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    rules = (IngressRule("http_status:204", path="^/health"), IngressRule("hello_world"))
    async with _connected(nursery, server_ctx, client_ctx, rules) as connected:
        url, control, client, admin, edge = connected
        do = partial(edge, layer="origin")
        state = await do(do="status", status=503)
        assert state["fault"] is None  # the connector itself works
        assert state["origin"]["fault"] == "status"
        assert (await client.get(url)).status_code == 503
        assert (await client.get(f"{url}health")).status_code == 204  # no application asked
        await do(do="refuse")
        assert (await client.get(url)).status_code == 502  # cloudflared's bad gateway
        await do(do="unreachable")
        assert (await client.get(url)).status_code == 502
        await do(do="blackhole")
        async with httpx.AsyncClient(verify=client_ctx, timeout=0.5) as fresh:
            with pytest.raises(httpx.ReadTimeout):  # connected, and no answer ever comes
                await fresh.get(url)
        assert (await client.get(f"{url}health")).status_code == 204
        await do(do="recover")
        assert (await client.get(url)).status_code == 200
        r = await admin.post(control, json={"do": "down", "layer": "tunnel"})
        assert r.json() == {"error": 'layer: "edge" (the connector) or "origin" (its application)'}


async def test_probe_requests_are_counted_by_their_user_agent(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    agents = [
        "tunnel-lb/1.0 (health-check; pool: eu)",
        "Mozilla/5.0 (compatible; Cloudflare-Traffic-Manager/1.0; pool-id: 1)",
        "curl/8.0",
    ]
    async with _connected(nursery, server_ctx, client_ctx) as (url, control, client, admin, _):
        stats = control.replace("/faults", "/stats")
        for agent in agents:
            assert (await client.get(url, headers={"user-agent": agent})).status_code == 200
        assert (await admin.post(control, json={"do": "down"})).status_code == 200
        # A probe answered with a fault still reached the stand-in: it counts.
        assert (await client.get(url, headers={"user-agent": agents[0]})).status_code == 530
        counted = (await admin.get(stats)).json()
    assert counted["probes"] == 3
    assert counted["requests"] == 4


async def _one_exchange(url: str, client_ctx: ssl.SSLContext) -> tuple[bytes, trio.SSLStream[Any]]:
    """Open a TLS connection, send one keep-alive GET, return the response head and stream."""
    host, port = url.removeprefix("https://").rstrip("/").split(":")
    stream = await trio.open_ssl_over_tcp_stream(
        host, int(port), ssl_context=client_ctx, https_compatible=True
    )
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(65536)
    return head, stream


async def _closed_by_server(stream: trio.SSLStream[Any]) -> bool:
    """Read until the server closes the connection (True), within a bound (False)."""
    with trio.move_on_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_keep_alive_idle_closes_and_is_announced(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    url, _ = await _start(nursery, server_ctx, keep_alive_idle=0.3, keep_alive_announce=True)
    head, stream = await _one_exchange(url, client_ctx)
    assert b"200 OK" in head.split(b"\r\n")[0]
    assert b"keep-alive: timeout=0.3" in head.lower()
    assert b"connection: close" not in head.lower()  # closed without saying so
    assert await _closed_by_server(stream)
    await trio.aclose_forcefully(stream)


async def test_random_closes_end_idle_connections(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    url, _ = await _start(nursery, server_ctx, random_closes=20.0)
    head, stream = await _one_exchange(url, client_ctx)
    assert b"keep-alive" not in head.lower()
    assert await _closed_by_server(stream)
    await trio.aclose_forcefully(stream)


async def test_reset_and_truncate_drop_the_connection_before_or_inside_the_body(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    rules = (IngressRule("http_status:204", path="^/health"), IngressRule("hello_world"))
    async with _connected(nursery, server_ctx, client_ctx, rules) as (url, _, client, _, do):
        await do(do="reset")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
            await client.get(url)  # the request was taken; no byte of an answer came back
        await do(do="truncate")
        with pytest.raises(httpx.RemoteProtocolError, match="received 2048 bytes, expected 4096"):
            await client.get(url)  # a 200 head, then half of the promised body
        await do(do="recover")
        assert (await client.get(url)).status_code == 200
        # At the application: a cut body for a request that reaches it, 502 for a reset
        # one, and the rules that answer without it are unaffected.
        await do(do="truncate", layer="origin")
        with pytest.raises(httpx.RemoteProtocolError, match="received 2048 bytes, expected 4096"):
            await client.get(url)
        assert (await client.get(f"{url}health")).status_code == 204
        await do(do="reset", layer="origin")
        assert (await client.get(url)).status_code == 502


async def test_a_connector_fault_hides_a_truncating_application(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """As in the simulator, the connector's own status (or ``down``'s 530) answers before
    the application behind it is reached: its ``truncate`` shows only once the connector
    recovers."""
    async with _connected(nursery, server_ctx, client_ctx) as (url, _, client, _, do):
        await do(do="truncate", layer="origin")
        await do(do="status", status=503)
        assert (await client.get(url)).status_code == 503
        await do(do="down")
        assert (await client.get(url)).status_code == 530
        await do(do="recover")
        with pytest.raises(httpx.RemoteProtocolError, match="received 2048 bytes"):
            await client.get(url)


async def test_origin_latency_delays_a_truncated_answer(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The simulator adds the application's latency to a cut answer; so does the connector:
    with an hour of it, no byte of the truncated answer comes back at all."""
    url, control = await _start(nursery, server_ctx)
    async with httpx.AsyncClient(timeout=5) as admin:
        for body in ({"do": "truncate"}, {"do": "latency", "latency": 3600}):
            response = await admin.post(control, json={**body, "layer": "origin"})
            assert response.status_code == 200, response.text
        async with httpx.AsyncClient(verify=client_ctx, timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):  # still waiting: not cut at once
                await client.get(url)
        response = await admin.post(
            control, json={"do": "latency", "latency": 0.01, "layer": "origin"}
        )
        assert response.status_code == 200, response.text
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="received 2048 bytes"):
                await client.get(url)  # after the wait, the cut body
