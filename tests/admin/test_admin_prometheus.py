"""End to end: a real Prometheus scrapes the admin listener, and promtool lints /metrics.

Needs the Debian package ``prometheus`` (``prometheus`` and ``promtool`` on PATH);
``scripts/install-prometheus`` installs it and ``scripts/test`` runs that first.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from admin_builders import HOST, all_healthy, probe
from prometheus_client import generate_latest

from lb.admin import serve_admin
from lb.engine import Engine
from lb.metrics import Metrics

pytestmark = pytest.mark.e2e

Series = list[dict[str, Any]]
"""``data.result`` of a Prometheus instant query: ``[{"metric": {...}, "value": [t, "v"]}]``."""

SCRAPE_DEADLINE = 30.0
"""Seconds Prometheus gets to start, scrape and answer; it usually takes about two."""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name!r} is not on PATH: run scripts/install-prometheus "
            "(installs the Debian package prometheus) and re-run the tests",
            pytrace=False,
        )
    return path


@pytest.fixture
def promtool() -> str:
    return tool("promtool")


@pytest.fixture
def prometheus() -> str:
    return tool("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def populate(engine: Engine, metrics: Metrics) -> None:
    all_healthy(engine)
    probe(engine, "eu", "b", ok=False, reason="TCP connection failed", vantages=["SIN"])
    for _ in range(3):
        metrics.request_done(HOST, "eu", "a", 200, 0.004)
    metrics.request_done(HOST, "eu", "b", 502, 0.3)
    metrics.retry(HOST, "522")
    metrics.reload(True)


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
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: tunnel-lb\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        f"      - targets: ['{host}:{port}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    command = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{web}",
        "--log.level=warn",
    ]
    # A nursery of its own: leaving it (even on a failed assertion) terminates Prometheus and
    # waits for it to exit, so nothing outlives the test.
    with log_path.open("wb") as log:
        async with trio.open_nursery() as procs:
            run = partial(trio.run_process, command, stdout=subprocess.DEVNULL, stderr=log)
            await procs.start(partial(run, check=False))
            try:
                await check_scrapes(web, log_path, metrics, f"{host}:{port}")
            finally:
                procs.cancel_scope.cancel()


async def check_scrapes(web: int, log_path: Path, metrics: Metrics, instance: str) -> None:
    result = await query_until_present(web, "lb_requests_total", log_path)
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
    await query_until(web, 'lb_requests_total{endpoint="a"}', log_path, value=4.0)

    # State gauges and histograms survive the trip too.
    up = await query_until_present(web, 'up{job="tunnel-lb"}', log_path)
    assert float(up[0]["value"][1]) == 1.0
    health = await query_until_present(
        web, 'lb_endpoint_health{pool="eu",endpoint="b",vantage="SIN"} == 1', log_path
    )
    assert health[0]["metric"]["state"] == "unhealthy"
    p50 = await query_until_present(
        web,
        "histogram_quantile(0.5, sum by (le) (lb_request_duration_seconds_bucket))",
        log_path,
    )
    assert 0.0 < float(p50[0]["value"][1]) <= 0.005


async def query(client: httpx.AsyncClient, expr: str) -> Series | None:
    try:
        r = await client.get("/api/v1/query", params={"query": expr})
    except httpx.TransportError:
        return None  # not listening yet
    if r.status_code != 200:
        return None
    body = r.json()
    assert body["status"] == "success", body
    result: Series = body["data"]["result"]
    return result


async def query_until(web: int, expr: str, log_path: Path, *, value: float | None = None) -> Series:
    """Poll Prometheus until ``expr`` has results (with ``value``, if given), or fail."""
    last: Series | None = None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=5) as client:
        with trio.move_on_after(SCRAPE_DEADLINE):
            while True:
                last = await query(client, expr)
                if last and (value is None or float(last[0]["value"][1]) == value):
                    return last
                await trio.sleep(0.2)
    log = await trio.Path(log_path).read_text()
    pytest.fail(
        f"Prometheus did not return {expr!r} (value {value}) within {SCRAPE_DEADLINE}s; "
        f"last result {last!r}\n--- prometheus log ---\n{log[-4000:]}"
    )


async def query_until_present(web: int, expr: str, log_path: Path) -> Series:
    return await query_until(web, expr, log_path)
