"""``tunnel-lb probe``: one check per selected endpoint, a table or JSON, exit status."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trustme
from monitor_servers import HostRouter, respond
from ports_support import dead_port

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


def write(tmp_path: Path, *, type: str, port: int, dial: int, upstream_ca: str = "") -> str:
    path = tmp_path / "lb.yaml"
    engine = f"engine:\n  upstream_ca: {upstream_ca}\n" if upstream_ca else ""
    path.write_text(CONFIG.format(type=type, port=port, dial=dial) + engine)
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
    dead = dead_port()
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
        "hint": "",
    }
    assert main(["probe", path, "--pool", "nope"]) == 2
    assert "--pool nope" in capsys.readouterr().err


async def test_a_private_ca_gets_a_hint_and_engine_upstream_ca_fixes_it(
    tmp_path: Path,
    nursery: trio.Nursery,
    server_context: Callable[..., ssl.SSLContext],
    rogue_ca: trustme.CA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Endpoints with certificates of a CA the system store does not know: the table says
    what to configure; configuring it makes the same probe pass.  ``main`` runs trio itself,
    so it runs in a thread of its own here, against the server of this test's trio run."""
    private = server_context("app.test", issuer=rogue_ca)
    r = HostRouter(rules=[("app.test", respond())], ssl_context=private)
    await r.start(nursery)
    path = write(tmp_path, type="https", port=443, dial=r.port)
    argv = ["probe", path, "--pool", "eu", "--endpoint", "fra"]

    assert await trio.to_thread.run_sync(main, argv) == 1
    out = capsys.readouterr().out
    assert "TLS untrusted certificate" in out
    assert out.splitlines()[-1] == (
        "hint: eu/fra: the certificate is not signed by a CA in the system trust store; if "
        "the endpoints use a private CA, set engine.upstream_ca to its PEM file"
    )
    assert await trio.to_thread.run_sync(main, [*argv, "--json"]) == 1
    [row] = json.loads(capsys.readouterr().out)
    assert "engine.upstream_ca" in row["hint"]

    rogue_ca.cert_pem.write_to_path(str(tmp_path / "private-ca.pem"))
    # relative to the configuration file:
    write(tmp_path, type="https", port=443, dial=r.port, upstream_ca="private-ca.pem")
    assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and "hint:" not in out


async def test_a_wrong_upstream_ca_gets_a_hint_naming_it(
    tmp_path: Path,
    nursery: trio.Nursery,
    server_context: Callable[..., ssl.SSLContext],
    rogue_ca: trustme.CA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = HostRouter(rules=[("app.test", respond())], ssl_context=server_context("app.test"))
    await r.start(nursery)
    rogue_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))  # not the issuer
    path = write(tmp_path, type="https", port=443, dial=r.port, upstream_ca="other-ca.pem")
    argv = ["probe", path, "--pool", "eu", "--endpoint", "fra"]
    assert await trio.to_thread.run_sync(main, argv) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("hint: eu/fra: the certificate is signed neither by a CA in ")
    assert f"engine.upstream_ca ({tmp_path / 'other-ca.pem'})" in last


def test_an_unreadable_upstream_ca_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, type="https", port=443, dial=dead_port(), upstream_ca="missing-ca.pem")
    assert main(["probe", path]) == 2
    err = capsys.readouterr().err
    lines = Path(path).read_text().splitlines()
    (line,) = [i for i, text in enumerate(lines, 1) if "missing-ca.pem" in text]
    assert err == (  # with the line that names it, as `check` and `run` report it
        f'error: {path}:{line}: engine.upstream_ca: cannot read "{tmp_path / "missing-ca.pem"}": '
        "No such file or directory\n"
    )
