"""``tunnel-lb probe``: one check per selected endpoint, a table or JSON, exit status."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from monitor_servers import HostRouter, respond, unused_port

from lb.cli import main
from lb.commands.probe import probe_targets, render_table, select
from lb.config.loader import load_config
from lb.core.book import HealthBook
from monitors import NetworkTransport

CONFIG = """
monitors:
  - id: m
    type: {type}
    port: {port}
    timeout: 1
    retries: 0
    header: {{Host: [app.test]}}
pools:
  - name: eu
    monitor: m
    origins:
      - {{name: fra, address: fra.test}}
      - {{name: ams, address: ams.test, header: {{Host: [nowhere.test]}}}}
  - name: us
    monitor: m
    origins:
      - {{name: iad, address: fra.test}}
load_balancers:
  - {{name: app.localhost, proxied: true, default_pools: [eu, us], fallback_pool: us}}
connect_to:
  fra.test:{port}: 127.0.0.1:{dial}
  ams.test:{port}: 127.0.0.1:{dial}
"""


def write(tmp_path: Path, *, type: str, port: int, dial: int) -> str:
    path = tmp_path / "lb.yaml"
    path.write_text(CONFIG.format(type=type, port=port, dial=dial))
    return str(path)


async def test_probe_targets_table(
    tmp_path: Path,
    nursery: trio.Nursery,
    server_context: Callable[..., ssl.SSLContext],
    transport: NetworkTransport,
) -> None:
    r = HostRouter(rules=[("app.test", respond())], ssl_context=server_context("app.test"))
    await r.start(nursery)
    config = load_config([write(tmp_path, type="https", port=443, dial=r.port)]).config
    targets = HealthBook(config).targets()
    rows = await probe_targets(config, targets, transport)
    got = [(row.pool, row.endpoint, row.verdict.ok, row.host) for row in rows]
    assert got == [
        ("eu", "fra", True, "app.test"),
        ("eu", "ams", False, "nowhere.test"),
        ("us", "iad", True, "app.test"),
    ]
    assert r.hosts.count("app.test") == 1  # eu/fra and us/iad share one probe
    assert rows[1].as_json()["reason"] == "TLS name mismatch"
    table = render_table(rows)
    assert table.splitlines()[0].split() == [
        "POOL", "ENDPOINT", "RESULT", "STATUS", "RTT", "HOST", "SNI", "REASON",
    ]  # fmt: skip
    assert "UNHEALTHY" in table
    assert [t.endpoint for t in select(targets, ["eu"], ["ams"])] == ["ams"]


def test_cli_json_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = unused_port()
    path = write(tmp_path, type="tcp", port=dead, dial=dead)
    assert main(["probe", path, "--pool", "us", "--json"]) == 1
    [row] = json.loads(capsys.readouterr().out)
    assert row == {
        "pool": "us",
        "endpoint": "iad",
        "healthy": False,
        "reason": "TCP connection failed",
        "status": None,
        "rtt_ms": None,
        "host": "app.test",
        "sni": None,
    }
    assert main(["probe", path, "--pool", "nope"]) == 2
    assert "--pool nope" in capsys.readouterr().err
