"""The connector's fault control API over real sockets: each fault as a client sees it."""

from __future__ import annotations

import ssl
from functools import partial

import httpx
import pytest
import trio
from conftest import TUNNEL

from lb.connector import ConnectorConfig, ConnectorStats, IngressRule, serve_connector
from lb.connector.faults import Faults, serve_control

pytestmark = pytest.mark.integration


async def _start(nursery: trio.Nursery, server_ctx: ssl.SSLContext) -> tuple[str, str]:
    config = ConnectorConfig(
        tunnel=TUNNEL, ingress=(IngressRule("hello_world"),), ssl_context=server_ctx
    )
    faults = Faults()
    bound = await nursery.start(
        partial(serve_connector, config, stats=ConnectorStats(), faults=faults)
    )
    control = await nursery.start(serve_control, faults, ("127.0.0.1", 0))
    host, port = bound[0]
    return f"https://{host}:{port}/", f"http://{control[0]}:{control[1]}/faults"


async def test_faults_refuse_blackhole_down_status_recover(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    url, control = await _start(nursery, server_ctx)
    async with (
        httpx.AsyncClient(verify=client_ctx, timeout=5) as client,
        httpx.AsyncClient(timeout=5) as admin,
    ):

        async def do(**body: object) -> dict[str, object]:
            response = await admin.post(control, json=body)
            assert response.status_code == 200, response.text
            state: dict[str, object] = response.json()
            return state

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
    url, control = await _start(nursery, server_ctx)
    async with (
        httpx.AsyncClient(verify=client_ctx, timeout=5) as client,
        httpx.AsyncClient(timeout=5) as admin,
    ):
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
        assert (await admin.get(control.replace("/faults", "/x"))).status_code == 404
