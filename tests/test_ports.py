"""Listen addresses: ``--listen``/``--admin`` override the file, port 0 picks a free port, the
chosen ports are logged and on ``/status``, and a busy port is one line and exit 2."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from ports_support import busy_port
from session_support import session
from stack_support import (
    APP,
    EU,
    connector_config,
    event_of,
    logged,
    one_pool_config,
    processes,
    start_connector_process,
    start_lb_process,
)

from lb.config.model import Listener
from lb.lifecycle import ListenError, listen_error
from lb.logs import JsonFormatter, TextFormatter
from lb.service import Overrides, Running, serve_lb

ROOT = Path(__file__).resolve().parent.parent
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z mono=\d+\.\d{3} (debug|info|warning|error) [a-z_]+"
)


@pytest.fixture
def busy() -> Iterator[int]:
    """A port the kernel picked, with a listener on it for the whole test."""
    with busy_port() as port:
        yield port


def tunnel_lb(*args: str, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tunnel-lb`` (with ``TMPDIR=tmp`` when given) in a session of its own; fail if a
    process of that session outlives it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lb", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **({"TMPDIR": str(tmp)} if tmp else {})},
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=60)
        assert session(process.pid) == [], "processes left running"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if "error" in line[:6]]


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("which", ["--listen", "--admin"])
def test_a_busy_port_is_one_line_and_exit_2(
    tmp_path: Path, busy: int, command: str, which: str
) -> None:
    config = tmp_path / "lb.json"
    config.write_text(one_pool_config())
    free = "--admin" if which == "--listen" else "--listen"
    args = [which, f"127.0.0.1:{busy}", free, "127.0.0.1:0", "--log-format", "text"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = tunnel_lb(command, *([str(config)] if command == "run" else []), *args, tmp=tmp)
    assert done.returncode == 2, done.stderr[-2000:]
    assert list(tmp.iterdir()) == []  # the demo's key is gone with its directory
    assert errors(done) == [f"error: cannot listen on 127.0.0.1:{busy}: address already in use"]
    assert "Traceback" not in done.stdout + done.stderr
    # Every other line on stderr is a log line in the text format.
    for line in done.stderr.splitlines():
        assert line.startswith("error: ") or TEXT_LINE.match(line), line


@pytest.mark.integration
def test_log_level_warning_hides_the_info_lines(tmp_path: Path, busy: int) -> None:
    config = tmp_path / "lb.json"
    config.write_text(one_pool_config())
    done = tunnel_lb("run", str(config), "--admin", f"127.0.0.1:{busy}", "--log-level", "warning")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{busy}: address already in use"
    ]


def test_the_error_names_the_address_inside_exception_groups() -> None:
    error = ListenError("[::1]:80", PermissionError(13, "Permission denied"))
    group = BaseExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [error])])
    assert listen_error(group) is error
    assert (
        str(error)
        == "cannot listen on [::1]:80: permission denied (ports below 1024 need privileges)"
    )
    assert listen_error(ValueError("x")) is None


@pytest.mark.integration
async def test_overrides_win_over_the_file_at_start_and_on_reload(
    tmp_path: Path, nursery: trio.Nursery, busy: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The file says a busy port; ``--listen 127.0.0.1:0`` and ``--admin 127.0.0.1:0`` win,
    the ports chosen are logged and on /status, and a reload keeps them."""
    path = tmp_path / "lb.json"
    path.write_text(one_pool_config(listen=(busy,)))
    overrides = Overrides(listen=(Listener(address="127.0.0.1", port=0),), admin="127.0.0.1:0")
    with caplog.at_level(logging.INFO):
        running: Running = await nursery.start(
            lambda task_status: serve_lb(
                [str(path)],
                seed=1,
                handle_signals=False,
                overrides=overrides,
                task_status=task_status,
            )
        )
    [(_, port)] = running.proxy
    ahost, aport = running.admin
    assert port not in (0, busy) and aport != 0
    events = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    assert events["proxy_listening"] == {"addr": f"127.0.0.1:{port}", "tls": False}
    assert events["admin_listening"] == {"addr": f"127.0.0.1:{aport}"}
    async with httpx.AsyncClient(base_url=f"http://{ahost}:{aport}", timeout=10) as client:
        status = (await client.get("/status")).json()
        assert status["listening"] == {
            "proxy": [f"127.0.0.1:{port}"],
            "admin": [f"127.0.0.1:{aport}"],
        }
        path.write_text(one_pool_config(listen=(busy,), interval=20))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert (await client.post("/reload", headers={"X-Tunnel-LB": "1"})).status_code == 200
    assert running.engine.config.engine.listen == (Listener(address="127.0.0.1", port=0),)
    assert running.engine.config.engine.admin == "127.0.0.1:0"
    assert not [r for r in caplog.records if r.getMessage() == "config_listeners_unchanged"]
    running.shutdown.set()


def test_an_https_listener_moved_by_listen_keeps_its_certificate() -> None:
    from lb.config.model import Config, EngineSettings

    tls = Listener(address="0.0.0.0", port=443, certificate="lb.pem", key="lb.key")
    config = Config(engine=EngineSettings(listen=(tls,)))
    moved = Overrides(
        listen=(Listener(address="127.0.0.1", port=0), Listener(address="127.0.0.1", port=0))
    ).apply(config)
    assert moved.engine.listen == (
        Listener(address="127.0.0.1", port=0, certificate="lb.pem", key="lb.key"),
        Listener(address="127.0.0.1", port=0),
    )


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("lb.test", logging.INFO, __file__, 1, message, args or None, None)
    rec.fields = fields
    rec.mono = 12.5
    return rec


def test_json_lines_carry_wall_clock_and_monotonic_time() -> None:
    line = json.loads(JsonFormatter().format(record("admin_listening", addr="127.0.0.1:1")))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
    assert line == {
        "mono": 12.5,
        "level": "info",
        "event": "admin_listening",
        "addr": "127.0.0.1:1",
    }


def test_text_lines_are_key_value_and_sentences_become_log_events() -> None:
    text = TextFormatter().format(record("ready", proxy=["127.0.0.1:1", "[::1]:2"], n=3, s="a b"))
    assert TEXT_LINE.match(text)
    assert text.endswith(' info ready proxy=127.0.0.1:1,[::1]:2 n=3 s="a b"')
    free = TextFormatter().format(record("accept failed (%s); pausing", "EMFILE"))
    assert free.endswith(' info log logger=lb.test message="accept failed (EMFILE); pausing"')


@pytest.mark.integration
def test_workers_log_in_the_format_of_their_parent(tmp_path: Path) -> None:
    """``engine.workers: 2`` with ``--log-format text``: the worker is told to log as text."""
    config = tmp_path / "lb.json"
    config.write_text(one_pool_config(workers=2))
    process = subprocess.Popen(
        [sys.executable, "-m", "lb", "run", str(config), "--log-format", "text"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if " ready " in line:
                break
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert any(" worker_started " in line for line in lines), lines
    # The worker's own line (it drains when the parent tells it to): text, like the parent's.
    assert any(" worker_draining " in line for line in rest.splitlines()), rest
    for line in lines + rest.splitlines():
        assert TEXT_LINE.match(line), line


@pytest.mark.integration
async def test_on_port_0_our_processes_say_the_ports_they_serve(tmp_path: Path) -> None:
    """What the end-to-end tests rely on, so that they never pick a port themselves
    (tests/support/stack_support.py): a connector given port 0 prints the port it got, even
    with ``--quiet``, and serves there; ``tunnel-lb run`` with port 0 and ``workers: 2``
    logs one proxy port in ``ready``, the parent's, and its worker is told that one (that
    both processes serve it: tests/workers/test_workers_process.py)."""
    ca = trustme.CA()
    cert = tmp_path / "tunnel.pem"
    ca.issue_cert(APP, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    connector = tmp_path / "connector.json"
    connector.write_text(connector_config(EU, "FRA", 0, cert))
    config = tmp_path / "lb.json"
    config.write_text(one_pool_config(workers=2))
    log = tmp_path / "processes.log"
    async with processes() as nursery:
        _, port = await start_connector_process(nursery, connector, EU, log=log)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context, timeout=10) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/", headers={"Host": APP})
        assert answer.json()["tunnel"] == EU

        lb, ready = await start_lb_process(nursery, config, log=log)
        [listen] = ready.listen
        assert 0 not in (listen, ready.admin)

        child = await logged(
            log,
            0,
            lambda line: event_of(line, "worker_ready"),
            lb,
            "the worker's worker_ready line",
        )
        assert child["listen"] == [["127.0.0.1", listen]]
