"""Passive health with ``engine.workers: 2``: both processes' traffic counts, one decides.

A real ``tunnel-lb run`` (parent + one child worker) in front of two tunnel stand-ins that
run in the test's trio loop over HTTPS (trustme), so that the test can count the requests
each one answers.  The eu tunnel's ``/fail`` answers 502 while its monitor's ``/healthz``
passes.  Which process serves a request is made certain, not raced: the test keeps one
keep-alive connection on each process (the access log, through ``X-Request-Id``, says
which) and sends 3 failures through the child and 2 through the parent with
``consecutive_5xx: 5``, so that neither process alone saw enough.  127.0.0.1 and port 0
only; every wait is bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from stack_support import (
    APP,
    EU,
    LB,
    US,
    log_events,
    processes,
    start_process,
    tunnel_certs,
    two_tunnel_config,
)
from waiting import wait_until

from lb.connector.config import ConnectorConfig
from lb.connector.ingress import IngressRule
from lb.connector.server import serve_connector
from lb.connector.stats import ConnectorStats

pytestmark = [pytest.mark.integration]

FAIL_RULE, APP_RULE = 1, 2
"""The eu tunnel's ingress rules that real traffic reaches (0 is the monitor's health route)."""


def traffic(stats: ConnectorStats) -> int:
    """Requests the tunnel answered other than its monitor's health checks."""
    return stats.by_rule[FAIL_RULE] + stats.by_rule[APP_RULE]


async def start_tunnel(
    nursery: trio.Nursery, uuid: str, cert: Path, rules: tuple[IngressRule, ...]
) -> tuple[int, ConnectorStats]:
    stats = ConnectorStats()
    cc = ConnectorConfig(
        tunnel=uuid, ingress=rules, certificate=str(cert), key=str(cert), listen="127.0.0.1:0"
    )
    addresses = await nursery.start(lambda **kw: serve_connector(cc, stats=stats, **kw))
    return addresses[0][1], stats


async def test_two_workers_eject_together_and_both_steer_around(tmp_path: Path) -> None:
    cert, ca_file = tunnel_certs(tmp_path)
    health = IngressRule("http_status:200", APP, "^/healthz$")
    eu_rules = (health, IngressRule("http_status:502", APP, "^/fail$"), IngressRule("hello_world"))
    us_rules = (health, IngressRule("hello_world"))
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"

    async with processes() as nursery:
        eu_port, eu = await start_tunnel(nursery, EU, cert, eu_rules)
        us_port, _ = await start_tunnel(nursery, US, cert, us_rules)
        passive = {"consecutive_5xx": 5, "consecutive_connect_failure": 0, "base_ejection_time": 2}
        config.write_text(
            two_tunnel_config(
                {EU: eu_port, US: us_port},
                ca_file,
                workers=2,
                access_log=True,
                passive_health=passive,
            )
        )
        await start_process(nursery, "run", str(config), log=log)
        await story(log, eu)


async def story(log: Path, eu: ConnectorStats) -> None:
    def tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    async def wait_for(check: Any, what: str, seconds: float = 10) -> Any:
        return await wait_until(
            check,
            seconds,
            what=lambda: f"{what}; log:\n{tail()}",
            step=0.05,
            ignore=(httpx.TransportError,),
        )

    def ready() -> dict[str, Any] | None:
        found = log_events(log, "ready")
        return found[0] if found and log_events(log, "worker_ready") else None

    started = await wait_for(ready, "the parent ready and worker 1 listening", 20)
    base, admin = f"http://{started['proxy'][0]}", f"http://{started['admin']}"
    async with httpx.AsyncClient(timeout=5) as control:

        async def eu_passive() -> dict[str, Any]:
            status = (await control.get(f"{admin}/status")).json()
            pools = {p["name"]: p for p in status["pools"]}
            passive: dict[str, Any] = pools["eu"]["endpoints"][0]["passive"]
            return passive

        async def monitored() -> bool:
            return (await control.get(f"{admin}/readyz")).status_code == 200

        await wait_for(monitored, "both tunnels probed healthy")
        clients = await one_connection_per_worker(base, log, wait_for)
        try:
            await eject_and_return(clients, log, eu, eu_passive, wait_for)
        finally:
            for client in clients.values():
                await client.aclose()


async def one_connection_per_worker(
    base: str, log: Path, wait_for: Any
) -> dict[int, httpx.AsyncClient]:
    """A keep-alive client connection on each process: workers 0 and 1."""
    found: dict[int, httpx.AsyncClient] = {}
    for i in range(64):  # the kernel spreads new connections: both come up quickly
        client = httpx.AsyncClient(
            base_url=base,
            headers={"Host": LB},
            timeout=5,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        rid = f"conn-{i}"
        r = await client.get("/", headers={"X-Request-Id": rid})
        assert r.status_code == 200 and r.json()["tunnel"] == EU

        def served(rid: str = rid) -> list[dict[str, Any]]:
            return [e for e in log_events(log, "request") if e["request_id"] == rid]

        (record,) = await wait_for(served, f"the access log line of {rid}")
        worker = int(record["worker"])
        if worker in found:
            await client.aclose()
        else:
            found[worker] = client
        if len(found) == 2:
            return found
    pytest.fail(f"64 new connections all went to worker {set(found)}")


async def eject_and_return(
    clients: dict[int, httpx.AsyncClient],
    log: Path,
    eu: ConnectorStats,
    eu_passive: Any,
    wait_for: Any,
) -> None:
    parent, child = clients[0], clients[1]

    async def answered_by(client: httpx.AsyncClient, path: str) -> str:
        r = await client.get(path)
        return str(r.json()["tunnel"]) if r.status_code == 200 else str(r.status_code)

    # Three failures through the child, two through the parent: five in a row only together.
    # The parent counts the child's in the order they arrive, a batch window later: the
    # parent's own are sent once it has counted the child's (behind the child's earlier
    # success, which would otherwise arrive after them and end the run).
    before = eu.by_rule[FAIL_RULE]
    for _ in range(3):
        assert (await child.get("/fail")).status_code == 502

    async def childs_counted() -> bool:
        return bool((await eu_passive())["consecutive_5xx"] == 3)

    await wait_for(childs_counted, "the parent counting the child's three 502")
    for _ in range(2):
        assert (await parent.get("/fail")).status_code == 502
    assert eu.by_rule[FAIL_RULE] - before == 5

    def by_worker() -> bool:
        failed = [e for e in log_events(log, "request") if e["target"] == "/fail"]
        return sorted(e["worker"] for e in failed) == [0, 0, 1, 1, 1]

    await wait_for(by_worker, "the access log: three 502 served by the child, two by the parent")

    async def ejected() -> dict[str, Any] | None:
        passive: dict[str, Any] = await eu_passive()
        return passive if passive["ejected"] else None

    passive = await wait_for(ejected, "the parent ejecting the eu tunnel")
    assert passive["reason"] == "passive: 5 consecutive 502"

    # The child learns it a pipe hop later: its traffic moves to us as well.
    async def child_moved() -> bool:
        return await answered_by(child, "/") == US

    await wait_for(child_moved, "the child steering around the ejected tunnel")
    mark = traffic(eu)
    for _ in range(10):
        for client in (child, parent):
            assert await answered_by(client, "/fail") == US
    assert traffic(eu) == mark, "a worker still sent requests to the ejected tunnel"
    assert (await eu_passive())["ejected"]

    # After base_ejection_time, the next passing check returns it, in both processes.
    async def returned() -> bool:
        return not (await eu_passive())["ejected"]

    await wait_for(returned, "the eu tunnel's return after its ejection time")
    transitions = [e for e in log_events(log, "health_transition") if e["vantage"] == "passive"]
    assert [e["after"] for e in transitions] == ["unhealthy", "healthy"]
    assert "check passed" in transitions[-1]["reason"]
    for client, who in ((parent, "the parent"), (child, "the child")):

        async def back(client: httpx.AsyncClient = client) -> bool:
            return await answered_by(client, "/") == EU

        await wait_for(back, f"{who} sending traffic to eu again")
