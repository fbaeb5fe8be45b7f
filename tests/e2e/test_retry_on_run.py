"""``retry_on`` in a real ``tunnel-lb run``: three endpoints, one faulty.

The endpoints are HTTPS servers in this process behind tunnel addresses (``connect_to``).  The
faulty one answers its monitor (``/healthz``) and fails every other request: it resets the
connection before a byte of the answer (SO_LINGER 0), or it sends the head and half the body
and closes (``truncate``).  Its monitor stays green: only retries can keep users from seeing
it.  Cloudflare-exact (no ``retry_on``) some GETs are lost; with ``retry_on`` none are, and
``/metrics`` counts the retries by reason.  The goal of issue 14: with ``retry_on`` (and
``buffer_response`` for the cut bodies) and passive health on, neither fault loses a GET, and
passive health ejects the faulty endpoint.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families
from stack_support import start_lb_process, until_url

HOST = "app.localhost"
TUNNELS = (
    "6ff42ae2-765d-4adf-8112-31c55c1551ef",
    "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
    "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
)
CLIENTS = 6
REQUESTS = 20


FAULTY_BODY = b"f" * 20_000


async def serve_endpoint(
    name: str,
    context: ssl.SSLContext,
    fault: str = "reset",
    served: dict[str, int] | None = None,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """An HTTPS endpoint answering its ``name``; the one named ``faulty`` fails every
    request but its monitor's as ``fault`` says (``reset``, ``truncate``).  ``served``
    counts the requests each endpoint took, its monitor's aside."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]

    async def one(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    if served is not None and event.target != b"/healthz":
                        served[name] = served.get(name, 0) + 1
                    if name == "faulty" and event.target != b"/healthz" and fault == "truncate":
                        length = b"%d" % len(FAULTY_BODY)
                        head = h11.Response(status_code=200, headers=[(b"content-length", length)])
                        half = h11.Data(data=FAULTY_BODY[: len(FAULTY_BODY) // 2])
                        await stream.send_all(conn.send(head) + (conn.send(half) or b""))
                        return  # closed in the middle of the body
                    if name == "faulty" and event.target != b"/healthz":
                        linger = struct.pack("ii", 1, 0)
                        stream.transport_stream.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, linger
                        )
                        return  # closed with a reset, nothing answered
                    body = name.encode()
                    head = h11.Response(
                        status_code=200, headers=[(b"content-length", b"%d" % len(body))]
                    )
                    out = conn.send(head) + (conn.send(h11.Data(data=body)) or b"")
                    await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                else:
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError, ssl.SSLError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listener = trio.SSLListener(listeners[0], context, https_compatible=True)
        task_status.started(port)
        await trio.serve_listeners(one, [listener], handler_nursery=nursery)


def config(
    ports: list[int],
    ca: Path,
    retry_on: dict[str, Any] | None,
    passive: dict[str, Any] | None = None,
) -> str:
    engine: dict[str, Any] = {
        "minimum_interval": 1,
        "listen": [{"address": "127.0.0.1", "port": 0}],
        "admin": "127.0.0.1:0",
        "upstream_ca": str(ca),
        "drain_timeout": 1,
    }
    if passive is not None:
        engine["passive_health"] = passive
    lb: dict[str, Any] = {
        "name": HOST,
        "proxied": True,
        "default_pools": ["app"],
        "fallback_pool": "app",
    }
    if retry_on is not None:
        lb["retry_on"] = retry_on
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "app",
                    "type": "https",
                    "path": "/healthz",
                    "interval": 2,
                    "timeout": 1,
                    "retries": 0,
                    "header": {"Host": [HOST]},
                }
            ],
            "pools": [
                {
                    "name": "app",
                    "monitor": "app",
                    "origins": [
                        {
                            "name": name,
                            "address": f"{uuid}.cfargotunnel.com",
                            "header": {"Host": [HOST]},
                        }
                        for name, uuid in zip(("a", "faulty", "b"), TUNNELS, strict=True)
                    ],
                }
            ],
            "load_balancers": [lb],
            "connect_to": {
                f"{uuid}.cfargotunnel.com:443": f"127.0.0.1:{port}"
                for uuid, port in zip(TUNNELS, ports, strict=True)
            },
            "engine": engine,
        }
    )


async def run_load(
    tmp_path: Path,
    retry_on: dict[str, Any] | None,
    *,
    fault: str = "reset",
    passive: dict[str, Any] | None = None,
    served: dict[str, int] | None = None,
) -> tuple[list[int], str]:
    """Start the endpoints and ``tunnel-lb run``, wait until every endpoint is healthy, send
    CLIENTS x REQUESTS GETs; the statuses (0: the response was cut short), and the metrics
    text afterwards."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "*.cfargotunnel.com").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    log = tmp_path / "lb.log"
    statuses: list[int] = []
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        ports = [
            await nursery.start(serve_endpoint, n, server, fault, served)
            for n in ("a", "faulty", "b")
        ]
        path = tmp_path / "lb.json"
        path.write_text(config(ports, ca_file, retry_on, passive))  # port 0: see ready
        process, ready = await start_lb_process(nursery, path, log=log)
        [listen], admin = ready.listen, ready.admin

        def all_healthy(r: httpx.Response) -> bool:
            endpoints = r.json()["pools"][0]["endpoints"]
            return len(endpoints) == 3 and all(e["health"] == "healthy" for e in endpoints)

        await until_url(client, f"http://127.0.0.1:{admin}/status", all_healthy)

        async def user() -> None:
            async with httpx.AsyncClient(timeout=10) as own:
                for _ in range(REQUESTS):
                    try:
                        r = await own.get(f"http://127.0.0.1:{listen}/", headers={"Host": HOST})
                    except httpx.RemoteProtocolError:  # a body cut short of its length
                        statuses.append(0)
                        continue
                    statuses.append(r.status_code)

        with trio.fail_after(60):
            async with trio.open_nursery() as users:
                for _ in range(CLIENTS):
                    users.start_soon(user)
        metrics = (await client.get(f"http://127.0.0.1:{admin}/metrics")).text
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
        nursery.cancel_scope.cancel()
    return statuses, metrics


def samples(text: str, name: str, label: str = "reason") -> dict[str, float]:
    return {
        s.labels.get(label, ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


@pytest.mark.integration
async def test_cloudflare_exact_loses_the_requests_the_faulty_endpoint_takes(
    tmp_path: Path,
) -> None:
    statuses, metrics = await run_load(tmp_path, None)
    assert len(statuses) == CLIENTS * REQUESTS
    assert statuses.count(502) > 0, "the faulty endpoint took no request: the test proves nothing"
    assert set(statuses) == {200, 502}
    assert "retry_on_reset" not in samples(metrics, "lb_retries_total")


@pytest.mark.integration
async def test_with_retry_on_no_get_is_lost(tmp_path: Path) -> None:
    rules = {"conditions": ["reset"], "min_retry_concurrency": CLIENTS}
    statuses, metrics = await run_load(tmp_path, rules)
    assert statuses == [200] * (CLIENTS * REQUESTS)
    assert samples(metrics, "lb_retries_total").get("retry_on_reset", 0) > 0
    assert sum(samples(metrics, "lb_retry_budget_refusals_total").values()) == 0


@pytest.mark.integration
async def test_cloudflare_exact_relays_the_cut_bodies(tmp_path: Path) -> None:
    statuses, _ = await run_load(tmp_path, None, fault="truncate")
    assert len(statuses) == CLIENTS * REQUESTS
    assert statuses.count(0) > 0, "the faulty endpoint took no request: the test proves nothing"
    assert set(statuses) == {200, 0}


GOAL_RULES = {
    "conditions": ["reset", "truncated"],
    "buffer_response": 65536,
    "min_retry_concurrency": CLIENTS,
}
PASSIVE = {"consecutive_5xx": 3, "base_ejection_time": 300}


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["reset", "truncate"])
async def test_goal_retry_on_and_passive_health_lose_no_get_and_eject_the_faulty_endpoint(
    tmp_path: Path, fault: str
) -> None:
    """Issue 14's goal: the endpoint resetting before it answers, and the one resetting in
    the middle of its response, lose 0 GETs; passive health takes it out after 3 failures."""
    served: dict[str, int] = {}
    statuses, metrics = await run_load(
        tmp_path, GOAL_RULES, fault=fault, passive=PASSIVE, served=served
    )
    assert statuses == [200] * (CLIENTS * REQUESTS)
    reason = "retry_on_reset" if fault == "reset" else "retry_on_truncated"
    retries = samples(metrics, "lb_retries_total")
    assert retries.get(reason, 0) == served["faulty"] > 0
    assert samples(metrics, "lb_passive_ejections_total", "endpoint") == {"faulty": 1.0}
    # ejected after its third failure, it takes no more than the requests then in flight
    assert served["faulty"] <= PASSIVE["consecutive_5xx"] + CLIENTS
