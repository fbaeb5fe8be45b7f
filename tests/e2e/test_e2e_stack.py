"""End to end: `tunnel-lb run` as its own process over two `tunnel-lb connector` processes.

Real sockets on 127.0.0.1 only, certificates from trustme, a real Prometheus scraping the
admin port.  One test walks the operator's story: traffic flows to the first pool, a tunnel
dies and requests still succeed (zero-downtime failover) while the monitor marks it down, a
broken reload is refused and the old config keeps serving, a good reload takes effect and
keeps health, Prometheus sees the request counter, and SIGTERM drains and exits cleanly.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_support import running_prometheus, tool
from stack_support import EU, LB, US, running_stack, until_url

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def served_by(client: httpx.AsyncClient, base: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = await client.get(f"{base}/", headers={"Host": LB})
        seen[f"{r.status_code} {r.json()['tunnel'] if r.status_code == 200 else ''}".strip()] += 1
    return seen


async def test_lb_process_story(tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    async with running_stack(tmp_path) as stack, httpx.AsyncClient(timeout=5) as client:
        base, admin_base, lb, tunnels = stack.base, stack.admin_base, stack.lb, stack.tunnels

        # Failover order: every request goes to the eu tunnel.
        assert await served_by(client, base, 20) == Counter({f"200 {EU}": 20})

        # The eu tunnel dies: requests still succeed through the zero-downtime retry (R42)
        # across pools at once, and within a few monitor intervals the pool is critical and skipped.
        tunnels[EU].kill()
        assert await served_by(client, base, 10) == Counter({f"200 {US}": 10})

        def eu_down(r: httpx.Response) -> bool:
            pools = {p["name"]: p for p in r.json()["pools"]}
            return bool(pools["eu"]["state"] == "critical")

        await until_url(client, f"{admin_base}/status", eu_down)
        text = (await client.get(f"{admin_base}/metrics")).text
        retried = [line for line in text.splitlines() if line.startswith("lb_retries_total{")]
        assert any(f'load_balancer="{LB}"' in r and 'reason="521"' in r for r in retried), text

        # A broken reload is refused and the old configuration keeps serving.
        good = stack.config.read_text()
        stack.config.write_text(good.replace('"interval": 1', '"interval": "soon"'))
        r = await client.post(f"{admin_base}/reload", headers={"X-Tunnel-LB": "1"})
        assert r.status_code == 400
        assert any("monitors[0].interval" in e for e in r.json()["errors"])
        assert await served_by(client, base, 5) == Counter({f"200 {US}": 5})

        # SIGHUP with a good one: us first now. Health is kept (eu stays critical, us stays
        # healthy, no return to unknown).
        stack.config.write_text(stack.reconfigured(order=("us", "eu")))
        lb.send_signal(signal.SIGHUP)

        def reloaded(r: httpx.Response) -> bool:
            return b'lb_config_reloads_total{result="success"} 1.0' in r.content

        await until_url(client, f"{admin_base}/metrics", reloaded)
        status = (await client.get(f"{admin_base}/status")).json()
        states = {p["name"]: p["state"] for p in status["pools"]}
        assert states == {"eu": "critical", "us": "healthy"}

        # A real Prometheus scrapes the admin port and sees the request counter.
        async with running_prometheus(prometheus, f"127.0.0.1:{stack.admin}", tmp_path) as prom:
            series = await prom.query_until(
                f'sum by (pool) (lb_requests_total{{load_balancer="{LB}",status="200"}})'
            )
            by_pool = {s["metric"]["pool"]: float(s["value"][1]) for s in series}
            assert by_pool == {"eu": 20.0, "us": 15.0}

        # SIGTERM: stop accepting, drain, exit 0.
        lb.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await lb.wait()
        assert code == 0, stack.log.read_text()[-3000:]
        tunnels[US].send_signal(signal.SIGTERM)
