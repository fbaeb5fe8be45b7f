"""End to end: a real Prometheus scrapes the admin listener, and promtool lints /metrics.

Needs the Debian package ``prometheus`` (``prometheus`` and ``promtool`` on PATH);
``scripts/install-prometheus`` installs it and ``scripts/test`` runs that first.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
from admin_builders import HOST, all_healthy, probe
from prometheus_client import generate_latest
from prometheus_support import Prometheus, running_prometheus, tool

from lb.admin import serve_admin
from lb.engine import Engine
from lb.metrics import Metrics
from lb.proxy.hooks import Attempt, RequestRecord

pytestmark = pytest.mark.e2e


@pytest.fixture
def promtool() -> str:
    return tool("promtool")


@pytest.fixture
def prometheus() -> str:
    return tool("prometheus")


def populate(engine: Engine, metrics: Metrics) -> None:
    all_healthy(engine)
    probe(engine, "eu", "b", ok=False, reason="TCP connection failed", vantages=["SIN"])
    for _ in range(3):
        metrics.request_done(HOST, "eu", "a", 200, 0.004)
    metrics.request_done(HOST, "eu", "b", 502, 0.3)
    metrics.retry(HOST, "522")
    metrics.reload(True)
    # The proxy's own metrics, as a failed-over request reports them.
    record = RequestRecord("GET", HOST, "/", "127.0.0.1", "", "r1", HOST, "eu", "eu/a")
    record.upstream_status, record.bytes_in, record.bytes_out = 200, 12, 3400
    record.attempts = [
        Attempt("eu", "eu/b", 521, "refused"),
        Attempt("eu", "eu/a", 200, connect_time=0.002, first_byte=0.04),
    ]
    metrics.connection(1)
    metrics.request_started(record)
    metrics.exchange_done(record)


async def test_promtool_check_metrics_is_clean(
    promtool: str, engine: Engine, metrics: Metrics
) -> None:
    populate(engine, metrics)
    exposition = generate_latest(metrics.registry)
    result = await trio.run_process(
        [promtool, "check", "metrics"],
        stdin=exposition,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    assert output.strip() == "", f"promtool lint findings:\n{output}"


async def test_prometheus_scrapes_admin(
    prometheus: str, engine: Engine, metrics: Metrics, tmp_path: Path, nursery: trio.Nursery
) -> None:
    populate(engine, metrics)
    host, port = await nursery.start(
        partial(serve_admin, engine, metrics, host="127.0.0.1", port=0)
    )
    async with running_prometheus(prometheus, f"{host}:{port}", tmp_path) as prom:
        await check_scrapes(prom, metrics, f"{host}:{port}")


async def check_scrapes(prom: Prometheus, metrics: Metrics, instance: str) -> None:
    result = await prom.query_until("lb_requests_total")
    series = {
        (r["metric"]["endpoint"], r["metric"]["status"]): float(r["value"][1]) for r in result
    }
    assert series == {("a", "200"): 3.0, ("b", "502"): 1.0}
    first = result[0]["metric"]
    assert first["job"] == "tunnel-lb"
    assert first["instance"] == instance
    assert first["load_balancer"] == HOST
    assert first["pool"] == "eu"

    # New traffic shows up on the next scrapes.
    metrics.request_done(HOST, "eu", "a", 200, 0.004)
    await prom.query_until('lb_requests_total{endpoint="a"}', value=4.0)

    # State gauges and histograms survive the trip too.
    up = await prom.query_until('up{job="tunnel-lb"}')
    assert float(up[0]["value"][1]) == 1.0
    health = await prom.query_until('lb_endpoint_health{pool="eu",endpoint="b",vantage="SIN"} == 1')
    assert health[0]["metric"]["state"] == "unhealthy"
    p50 = await prom.query_until(
        "histogram_quantile(0.5, sum by (le) (lb_request_duration_seconds_bucket))"
    )
    assert 0.0 < float(p50[0]["value"][1]) <= 0.005
