"""R16 end to end on loopback: two HTTPS member monitors of one group probe one endpoint.

The real scheduler and transport probe a trustme-certified server; the results go into the
real :class:`~lb.core.book.HealthBook`, which combines the members.  The server answers each
member's path with the status a test sets, so each member is judged on its own probe.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from collections.abc import Callable

import pytest
import trio
from monitor_servers import HostRouter, Reply, respond

from lb.commands.probe import probe_targets, render_table
from lb.config import load_config_text
from lb.core.book import HealthBook
from lb.core.health import Health, ProbeResult
from monitors import NetworkTransport, Scheduler, jobs_for_config

pytestmark = pytest.mark.integration

H, U = Health.HEALTHY, Health.UNHEALTHY

CONFIG = """\
engine: {{minimum_interval: 1}}
connect_to: {{"origin.test:{port}": "127.0.0.1:{port}"}}
monitors:
  - {{id: api, type: https, port: {port}, path: /api, interval: 1, timeout: 1, retries: 0,
      header: {{Host: [app.test]}}}}
  - {{id: login, type: https, port: {port}, path: /login, interval: 1, timeout: 1, retries: 0,
      header: {{Host: [app.test]}}}}
monitor_groups:
  - {{id: g, members: [{{monitor_id: api}}, {{monitor_id: login, must_be_healthy: true}}]}}
pools:
  - {{name: p, monitor_group: g, origins: [{{name: e, address: origin.test}}]}}
load_balancers:
  - {{name: app.test, proxied: true, default_pools: [p], fallback_pool: p}}
"""


async def test_each_member_probes_and_a_critical_member_decides(
    nursery: trio.Nursery,
    server_context: Callable[..., ssl.SSLContext],
    transport: NetworkTransport,
) -> None:
    status = {"/api": 200, "/login": 200}

    async def by_path(r: Reply) -> None:
        await respond(status[r.request.target.decode()])(r)

    server = HostRouter(rules=[("app.test", by_path)], ssl_context=server_context("app.test"))
    port = await server.start(nursery)
    config = load_config_text(CONFIG.format(port=port)).config
    book = HealthBook(config)
    changed = trio.Event()

    def on_result(result: ProbeResult) -> None:
        nonlocal changed
        book.apply(result)
        changed.set()
        changed = trio.Event()

    async def until(health: Health, members: dict[str, Health]) -> None:
        with trio.fail_after(20):
            while True:
                endpoint = book.snapshot().pools["p"].endpoints[0]
                if endpoint.health is health and book.member_states("p", "e") == {"local": members}:
                    return
                await changed.wait()

    jobs = jobs_for_config(config, book.targets())
    assert sorted(j.probe.path for j in jobs) == ["/api", "/login"]
    scheduler = Scheduler(transport, on_result, rng=random.Random(1))
    scheduler.update(jobs)
    await nursery.start(scheduler.run)

    await until(H, {"api": H, "login": H})
    assert {"/api", "/login"} <= set(server.paths)
    assert set(server.sni) == {"app.test"}

    status["/login"] = 503  # the critical member fails alone: the endpoint is unhealthy
    await until(U, {"api": H, "login": U})
    last = book.member_results("p", "e")[("local", "login")]
    assert (last.ok, last.status, last.reason) == (False, 503, "Response code mismatch")

    status["/login"], status["/api"] = 200, 503  # one of two others is not a majority
    await until(H, {"api": U, "login": H})


def test_plan_keeps_members_apart_unless_their_probes_are_identical() -> None:
    base = CONFIG.format(port=8443)
    # a third member identical on the wire to `api` (only its thresholds differ)
    text = base.replace(
        "monitor_groups:",
        "  - {id: api2, type: https, port: 8443, path: /api, interval: 1, timeout: 1,\n"
        "      retries: 0, consecutive_down: 3, header: {Host: [app.test]}}\n"
        "monitor_groups:",
    ).replace("{monitor_id: api}, ", "{monitor_id: api}, {monitor_id: api2}, ")
    config = load_config_text(text).config
    jobs = jobs_for_config(config, HealthBook(config).targets())
    routes = {j.probe.path: j.routes for j in jobs}
    assert routes == {
        "/api": (("p", "e", "api"), ("p", "e", "api2")),
        "/login": (("p", "e", "login"),),
    }
    assert all(j.fanout == (("p", "e"),) for j in jobs)


async def test_probe_command_checks_each_member_once(
    nursery: trio.Nursery,
    server_context: Callable[..., ssl.SSLContext],
    transport: NetworkTransport,
) -> None:
    """``tunnel-lb probe`` on a group pool: one row per member, each its own verdict."""
    status = {"/api": 200, "/login": 503}

    async def by_path(r: Reply) -> None:
        await respond(status[r.request.target.decode()])(r)

    server = HostRouter(rules=[("app.test", by_path)], ssl_context=server_context("app.test"))
    port = await server.start(nursery)
    config = load_config_text(CONFIG.format(port=port)).config
    rows = await probe_targets(config, HealthBook(config).targets(), transport)
    assert [(r.endpoint, r.member, r.verdict.ok, r.verdict.status) for r in rows] == [
        ("e", "api", True, 200),
        ("e", "login", False, 503),
    ]
    assert rows[1].as_json()["member"] == "login"
    assert "member" not in dataclasses.replace(rows[1], member="").as_json()
    assert render_table(rows).splitlines()[1].split()[:3] == ["p", "e/api", "healthy"]
