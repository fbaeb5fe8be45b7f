"""Passive health through the whole service: real traffic ejects an endpoint its monitor likes.

Two TLS origins on 127.0.0.1 (port 0, trustme certificates) answer the monitor's ``/health``
with 200; one of them answers every other request with 502, as an application behind a
healthy tunnel would.  With ``engine.passive_health`` the third 502 in a row ejects it and
traffic moves to the other; its monitor's first passing check after the ejection time brings
it back.  Without the option nothing changes (R44).
"""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from lb.core.health import Health, HealthEvent
from lb.service import Running, serve_lb

pytestmark = pytest.mark.integration

LB = "app.localhost"
ORIGINS = ("good.example", "bad.example")


async def serve_origin(
    ca: trustme.CA,
    broken: bool,
    hang: bool = False,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TLS origin: ``/health`` answers 200; anything else 200, or when ``broken`` 502
    (never an answer with ``hang``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*ORIGINS, LB).configure_cert(context)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1]
            if broken and hang and path != b"/health":
                await trio.sleep_forever()  # the hang under test: the proxy's 524 ends it
            code, body = (502, b"bad gateway") if broken and path != b"/health" else (200, b"ok")
            reply = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                code,
                len(body),
                body,
            )
            await stream.send_all(reply)
            await stream.aclose()

    task_status.started(port)
    await trio.serve_listeners(handle, [trio.SSLListener(lst, context) for lst in listeners])


def config(ports: dict[str, int], passive: dict[str, Any] | None, **limits: float) -> str:
    engine: dict[str, Any] = {
        "listen": [{"address": "127.0.0.1", "port": 0}],
        "admin": "127.0.0.1:0",
        "minimum_interval": 1,
        "limits": limits,
    }
    if passive is not None:
        engine["passive_health"] = passive
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "m",
                    "type": "https",
                    "path": "/health",
                    "interval": 1,
                    "timeout": 2,
                    "retries": 0,
                }
            ],
            "pools": [
                {
                    "name": "p",
                    "monitor": "m",
                    "origins": [{"name": name.split(".")[0], "address": name} for name in ORIGINS],
                }
            ],
            "load_balancers": [{"name": LB, "default_pools": ["p"], "fallback_pool": "p"}],
            "connect_to": {f"{name}:443": f"127.0.0.1:{ports[name]}" for name in ORIGINS},
            "engine": engine,
        }
    )


async def start(
    tmp_path: Path,
    nursery: trio.Nursery,
    passive: dict[str, Any] | None,
    *,
    hang: bool = False,
    **limits: float,
) -> tuple[Running, list[HealthEvent]]:
    ca = trustme.CA()
    upstream = ssl.create_default_context()
    ca.configure_trust(upstream)
    ports = {
        name: await nursery.start(serve_origin, ca, name == "bad.example", hang) for name in ORIGINS
    }
    path = tmp_path / "lb.json"
    path.write_text(config(ports, passive, **limits))
    running: Running = await nursery.start(
        lambda task_status: serve_lb(
            [str(path)],
            upstream_ssl=upstream,
            seed=1,
            handle_signals=False,
            task_status=task_status,
        )
    )
    events: list[HealthEvent] = []
    running.engine.observers.health.append(events.append)
    await wait_until(lambda: running.engine.ready, seconds=20)
    return running, events


def passive_events(events: list[HealthEvent]) -> list[HealthEvent]:
    return [e for e in events if e.vantage == "passive"]


async def test_an_endpoint_answering_502_is_ejected_and_its_monitor_brings_it_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    passive = {"consecutive_5xx": 3, "base_ejection_time": 3, "max_ejection_percent": 50}
    running, events = await start(tmp_path, nursery, passive)
    (host, port), (admin_host, admin_port) = running.proxy[0], running.admin
    url = f"http://{host}:{port}/"
    async with httpx.AsyncClient(timeout=10, headers={"Host": LB}) as client:
        answers = []
        for _ in range(300):
            answers.append((await client.get(url)).status_code)
            if passive_events(events):
                break
        # the third 502 in a row ejected it, before its answer reached the client
        assert answers.count(502) == 3 and answers[-1] == 502
        ejected, aggregate = events[-2:]
        assert (ejected.vantage, ejected.endpoint, ejected.after) == (
            "passive",
            "bad",
            Health.UNHEALTHY,
        )
        assert aggregate.reason == "passive: 3 consecutive 502"
        assert ejected.reason == "passive: 3 consecutive 502, ejected for 3s"
        # traffic moves away while the monitor still passes
        moved = [(await client.get(url)).status_code for _ in range(20)]
        assert running.engine.book.state("p", "bad", "local") is Health.HEALTHY
        if len(passive_events(events)) == 1:  # (the 3 s may be over on a slow machine)
            assert moved == [200] * 20
        async with httpx.AsyncClient(base_url=f"http://{admin_host}:{admin_port}") as admin:
            status = (await admin.get("/status")).json()
            metrics = (await admin.get("/metrics")).text
        bad = {e["name"]: e for e in status["pools"][0]["endpoints"]}["bad"]
        assert bad["passive"]["reason"] == "passive: 3 consecutive 502"
        assert bad["passive"]["ejections"] == 1
        found = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert found[("lb_passive_ejections_total", (("endpoint", "bad"), ("pool", "p")))] == 1
        assert ("lb_pool_ejected_endpoints", (("pool", "p"),)) in found
        # the monitor's first passing check after the ejection time brings it back
        await wait_until(lambda: len(passive_events(events)) >= 2, seconds=20)
        back = passive_events(events)[1]
        assert back.after is Health.HEALTHY and "local check passed" in back.reason
        assert back.at - ejected.at >= 3
        # still broken: three more 502s eject it again, for twice as long
        for _ in range(300):
            await client.get(url)
            if len(passive_events(events)) >= 3:
                break
        again = passive_events(events)[2]
        assert again.reason == "passive: 3 consecutive 502, ejected for 6s"
    nursery.cancel_scope.cancel()


async def test_without_passive_health_502s_never_change_health(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    running, events = await start(tmp_path, nursery, None)
    host, port = running.proxy[0]
    async with httpx.AsyncClient(timeout=10, headers={"Host": LB}) as client:
        answers = [(await client.get(f"http://{host}:{port}/")).status_code for _ in range(40)]
    assert answers.count(502) >= 6  # random steering sends about half there
    assert [e for e in events if e.endpoint == "bad" and e.after is not Health.HEALTHY] == []
    assert running.engine.book.passive("p", "bad") is None
    nursery.cancel_scope.cancel()


async def test_an_endpoint_that_never_answers_is_ejected_by_its_524s(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A response timeout counts as the 524 it is answered with, in the proxy as in the
    simulator: three in a row eject an endpoint whose monitor still passes."""
    passive = {"consecutive_5xx": 3, "base_ejection_time": 30}
    running, events = await start(tmp_path, nursery, passive, hang=True, request_timeout=0.5)
    host, port = running.proxy[0]
    async with httpx.AsyncClient(timeout=10, headers={"Host": LB}) as client:
        answers = []
        for _ in range(100):
            answers.append((await client.get(f"http://{host}:{port}/")).status_code)
            if passive_events(events):
                break
    assert answers.count(524) == 3 and answers[-1] == 524, answers
    ejected = passive_events(events)[0]
    assert (ejected.endpoint, ejected.after) == ("bad", Health.UNHEALTHY)
    assert ejected.reason.startswith("passive: 3 consecutive 524")
    nursery.cancel_scope.cancel()
