"""The Grafana dashboard in contrib/ works against real data.

Its shape is checked without anything running (valid JSON, a data-source variable so it
imports as is, unique panel ids, panels that do not overlap).  Then the whole stack runs as
real processes (two connectors, ``tunnel-lb run``), a real Prometheus scrapes the admin
listener while traffic flows and one tunnel dies, and every panel's PromQL (and the
annotation's) is sent to Prometheus: a query Prometheus rejects, or one that returns no
series, fails the test.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_support import running_prometheus, tool
from stack_support import EU, LB, running_stack, until_url

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "tunnel-lb.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$load_balancer": ".*"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and annotation, Grafana variables filled in."""
    data = dashboard()
    out = [(f"panel {p['title']!r}", t["expr"]) for p in data["panels"] for t in p["targets"]]
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in data["annotations"]["list"]]
    for old, new in GRAFANA_VARIABLES.items():
        out = [(where, expr.replace(old, new)) for where, expr in out]
    return out


def test_dashboard_shape() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in data["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    assert all("$" not in expr for _, expr in queries()), "a Grafana variable left unfilled"


async def evaluate(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """Run one instant query; a query Prometheus rejects fails the test at once."""
    r = await client.get("/api/v1/query", params={"query": expr})
    body = r.json()
    if r.status_code == 400 or body.get("status") != "success":
        pytest.fail(f"Prometheus rejected {expr!r}: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_data(series: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in series)


async def test_every_panel_returns_data_after_traffic_and_a_failover(tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    async with (
        running_stack(tmp_path) as stack,
        running_prometheus(prometheus, f"127.0.0.1:{stack.admin}", tmp_path) as prom,
        httpx.AsyncClient(timeout=5) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom.web}", timeout=5) as api,
    ):
        await prom.query_until("lb_ready")
        stop = trio.Event()

        async def traffic() -> None:
            # Bounded: at most 3,000 requests, about 50 per second, until told to stop.
            for _ in range(3000):
                if stop.is_set():
                    return
                # A response the killed tunnel was sending is cut (the proxy cannot answer
                # twice): only the dashboard's data is checked here.
                with contextlib.suppress(httpx.TransportError):
                    await client.get(f"{stack.base}/", headers={"Host": LB})
                await trio.sleep(0.02)  # on purpose: paced traffic

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            await prom.query_until('sum(lb_requests_total{endpoint="tunnel-eu"}) > 20')
            stack.tunnels[EU].kill()

            def eu_critical(r: httpx.Response) -> bool:
                return any(
                    p["name"] == "eu" and p["state"] == "critical" for p in r.json()["pools"]
                )

            await until_url(client, f"{stack.admin_base}/status", eu_critical)
            await prom.query_until('sum(lb_requests_total{endpoint="tunnel-us"}) > 20')
            await prom.query_until('lb_pool_health{pool="eu",state="critical"} == 1')
            # Counters born by the failover need two samples before rate() has a value.
            await prom.query_until("count_over_time(lb_retries_total[1m]) >= 2")
            await prom.query_until('count_over_time(lb_probes_total{result="failure"}[1m]) >= 2')

            # Every series the panels read has been scraped by now (the last waits above
            # needed the failover's own series): one evaluation each is the honest check.
            empty = [
                f"{where}: {expr}"
                for where, expr in queries()
                if not has_data(await evaluate(api, expr))
            ]
            stop.set()
        assert not empty, "queries without data:\n" + "\n".join(empty)
