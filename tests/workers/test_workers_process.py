"""`tunnel-lb run` with ``engine.workers: 2``: two processes serve, one probes.

The LB runs as its own process (parent + one child worker); the two tunnel stand-ins run
in the test's trio loop so that the test can count the health checks each one receives and
kill one.  127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
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
    start_lb_process,
    tunnel_certs,
    two_tunnel_config,
)
from waiting import wait_until

from lb.connector.config import ConnectorConfig
from lb.connector.ingress import IngressRule
from lb.connector.server import serve_connector
from lb.connector.stats import ConnectorStats

pytestmark = [pytest.mark.integration]

OTHER = "other.localhost"


def lb_config(ports: dict[str, int], ca: Path, names: tuple[str, ...]) -> str:
    """Listen and admin on port 0: the parent binds the proxy port (SO_REUSEPORT) and hands
    the port it got to its worker, so both serve one port that nobody picked beforehand."""
    return two_tunnel_config(ports, ca, names=names, workers=2, access_log=True)


def write(path: Path, text: str) -> None:
    path.write_text(text)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def wait_for(check: Any, what: str, seconds: float = 20) -> Any:
    """Poll the processes' admin API or log (no event crosses the process boundary)."""
    return await wait_until(check, seconds, what=what, step=0.1, ignore=(httpx.TransportError,))


async def fresh_requests(base: str, host: str, n: int) -> Counter[str]:
    """``n`` requests, each on a new connection so the kernel spreads them over workers."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"{base}/", headers={"Host": host})
        seen[f"{r.status_code} {r.json()['tunnel'] if r.status_code == 200 else ''}".strip()] += 1
    return seen


def metric(text: str, name: str, *labels: str) -> float:
    """Sum of the samples of ``name`` whose line holds every one of ``labels``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )


async def test_two_workers_share_one_prober(tmp_path: Path) -> None:
    cert, ca_file = tunnel_certs(tmp_path)
    rules = (
        IngressRule("http_status:200", APP, "^/healthz$"),
        IngressRule("hello_world", APP),
        IngressRule("http_status:404"),
    )
    stats = {EU: ConnectorStats(), US: ConnectorStats()}
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"

    async with trio.open_nursery() as nursery:
        scopes: dict[str, trio.CancelScope] = {}
        ports: dict[str, int] = {}
        for uuid in (EU, US):
            scope = trio.CancelScope()
            scopes[uuid] = scope
            cc = ConnectorConfig(tunnel=uuid, ingress=rules, certificate=str(cert), key=str(cert))

            async def one(
                cc: ConnectorConfig,
                st: ConnectorStats,
                scope: trio.CancelScope,
                *,
                task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await serve_connector(cc, stats=st, task_status=task_status)

            addresses = await nursery.start(one, cc, stats[uuid], scope)
            ports[uuid] = addresses[0][1]
        config.write_text(lb_config(ports, ca_file, (LB,)))
        lb, ready = await start_lb_process(nursery, config, log=log)
        [listen] = ready.listen
        base, admin_base = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{ready.admin}"
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await story(
                    client, lb, log, config, stats, scopes, ports, ca_file, base, admin_base
                )
        finally:
            if lb.returncode is None:
                lb.kill()
            nursery.cancel_scope.cancel()


async def story(
    client: httpx.AsyncClient,
    lb: trio.Process,
    log: Path,
    config: Path,
    stats: dict[str, ConnectorStats],
    scopes: dict[str, trio.CancelScope],
    ports: dict[str, int],
    ca_file: Path,
    base: str,
    admin_base: str,
) -> None:
    async def ready() -> bool:
        r = await client.get(f"{admin_base}/readyz")
        return r.status_code == 200 and bool(log_events(log, "worker_ready"))

    await wait_for(ready, "parent ready and worker 1 listening")
    (started,) = log_events(log, "worker_started")
    child = int(started["pid"])

    # Both processes serve: new connections are spread by SO_REUSEPORT.
    assert await fresh_requests(base, LB, 40) == Counter({f"200 {EU}": 40})
    served = Counter(e["worker"] for e in log_events(log, "request"))
    assert set(served) == {0, 1}, served

    # ...and the parent's /metrics counts the child's requests too (reported every ~1 s).
    async def counted() -> bool:
        text = (await client.get(f"{admin_base}/metrics")).text
        return metric(text, "lb_requests_total", f'load_balancer="{LB}"', 'pool="eu"') == 40

    await wait_for(counted, "40 requests in the parent's lb_requests_total", 5)

    # ...and the proxy's own metrics too: every request's time to first byte (both processes
    # served some), and the bytes sent to clients.
    async def proxy_counted() -> bool:
        text = (await client.get(f"{admin_base}/metrics")).text
        ttfb = metric(text, "lb_upstream_first_byte_seconds_count", 'pool="eu"')
        sent = metric(text, "lb_client_bytes_total", f'load_balancer="{LB}"', 'direction="sent"')
        return ttfb == 40 and sent > 0

    await wait_for(proxy_counted, "40 first bytes and the bytes in the parent's metrics", 5)

    # ...and its live gauges count the child's pooled upstream connection next to its own:
    # requests one at a time leave each process one keep-alive connection to the tunnel.
    async def both_connections() -> bool:
        text = (await client.get(f"{admin_base}/metrics")).text
        status = (await client.get(f"{admin_base}/status")).json()
        in_status = status["traffic"]["connections"]
        return metric(text, "lb_endpoint_connections", 'pool="eu"') == 2 == in_status

    await wait_for(both_connections, "one upstream connection per process in the gauges", 5)

    # One probe stream: the eu tunnel sees ~1 health check per interval (1 s), not 2.
    def healthz(uuid: str) -> int:
        return sum(1 for r in stats[uuid].recent if r.target == "/healthz")

    before = healthz(EU)
    await trio.sleep(4)  # on purpose: the probes of four intervals are counted
    probes = healthz(EU) - before
    assert 3 <= probes <= 5, probes

    # A tunnel dies: every worker marks it down (no more first attempts at it, so no
    # more zero-downtime retries once the parent saw it critical).
    scopes[EU].cancel()

    async def eu_critical() -> bool:
        pools = {p["name"]: p for p in (await client.get(f"{admin_base}/status")).json()["pools"]}
        return bool(pools["eu"]["state"] == "critical")

    await wait_for(eu_critical, "eu critical")
    # A report interval (children report about every second; nothing to wait on from here):
    # the retries made before detection are counted by then.
    await trio.sleep(1.5)
    retries = metric((await client.get(f"{admin_base}/metrics")).text, "lb_retries_total")
    mark = len(log_events(log, "request"))
    assert await fresh_requests(base, LB, 30) == Counter({f"200 {US}": 30})
    after = log_events(log, "request")[mark:]
    assert {e["worker"] for e in after} == {0, 1}
    assert all(e["retried"] is None or e["retried"] == "" for e in after), after
    await trio.sleep(1.5)  # a report interval: a retry, had there been one, would be in
    assert metric((await client.get(f"{admin_base}/metrics")).text, "lb_retries_total") == retries

    # A reload reaches the worker: a new load balancer host is served by both processes.
    write(config, lb_config(ports, ca_file, (LB, OTHER)))
    lb.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return (
            b'lb_config_reloads_total{result="success"} 1.0'
            in (await client.get(f"{admin_base}/metrics")).content
        )

    await wait_for(reloaded, "reload applied")

    async def both_have_it() -> bool:
        # The child logs nothing when the configuration arrives down the pipe: ask both.
        mark = len(log_events(log, "request"))
        await fresh_requests(base, OTHER, 10)
        after = log_events(log, "request")[mark:]
        return {e["worker"] for e in after if e["status"] == 200} == {0, 1}

    await wait_for(both_have_it, "both processes serving the reloaded host", 10)
    mark = len(log_events(log, "request"))
    assert await fresh_requests(base, OTHER, 30) == Counter({f"200 {US}": 30})
    assert {e["worker"] for e in log_events(log, "request")[mark:]} == {0, 1}

    # A worker that dies is started again and gets the current health (eu stays down).
    os.kill(child, signal.SIGKILL)

    async def restarted() -> bool:
        return len(log_events(log, "worker_ready")) >= 2

    await wait_for(restarted, "worker 1 restarted", 10)
    assert log_events(log, "worker_died")
    mark = len(log_events(log, "request"))
    assert await fresh_requests(base, OTHER, 30) == Counter({f"200 {US}": 30})
    after = log_events(log, "request")[mark:]
    assert {e["worker"] for e in after} == {0, 1}
    assert all(not e["retried"] for e in after), after

    # SIGTERM: both processes drain and exit; the parent exits 0.
    new_child = int(log_events(log, "worker_started")[-1]["pid"])
    lb.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        code = await lb.wait()
    assert code == 0, tail(log)
    with pytest.raises(ProcessLookupError):
        os.kill(new_child, 0)
