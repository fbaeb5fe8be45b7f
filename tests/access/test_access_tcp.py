"""Private TCP services end to end: ``serve_access`` -> the LB -> two connectors -> echo.

Real sockets on 127.0.0.1 (port 0), TLS between the LB and the connectors with trustme
certificates, the LB as ``tunnel-lb run`` builds it (``serve_lb``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from access_support import (
    APP,
    BASTION,
    EU,
    LB,
    US,
    Echo,
    Tunnel,
    certificates,
    lb_config,
    roundtrip,
    serve_echo,
    start_access,
    start_lb,
    start_tunnel,
)
from ports_support import start_on_a_free_port
from waiting import wait_until

from lb.connector import IngressRule
from lb.logs import JsonFormatter
from lb.service import Running

pytestmark = pytest.mark.integration


def tcp_rules(echo: Echo) -> list[IngressRule]:
    return [
        IngressRule("http_status:200", APP, "^/healthz$"),  # the monitors' health route
        IngressRule(f"tcp://127.0.0.1:{echo.port}", APP),
        IngressRule("http_status:404"),
    ]


class Stack:
    def __init__(self, echo: Echo, tunnels: list[Tunnel], lb: Running) -> None:
        self.echo, self.tunnels, self.lb = echo, tunnels, lb
        self.via = f"http://127.0.0.1:{lb.proxy[0][1]}"

    def carrying(self) -> list[Tunnel]:
        return [t for t in self.tunnels if t.stats.sessions_open]


@pytest.fixture
async def stack(nursery: trio.Nursery, tmp_path: Path) -> Stack:
    server_ctx, _, ca = certificates(tmp_path)
    echo: Echo = await nursery.start(serve_echo)
    tunnels = [await start_tunnel(nursery, u, server_ctx, tcp_rules(echo)) for u in (EU, US)]
    config = tmp_path / "lb.json"
    config.write_text(lb_config(tunnels, ca))
    return Stack(echo, tunnels, await start_lb(nursery, config))


async def test_bytes_round_trip_through_the_lb(stack: Stack, nursery: trio.Nursery) -> None:
    port, stats = await start_access(nursery, LB, stack.via)
    assert await roundtrip(port, b"hello over a tunnel\n") == b"hello over a tunnel\n"
    assert stats.sessions == 1 and stats.refused == 0
    # The client half-closed first; the echo's answer still came back in full.
    await wait_until(lambda: stats.ended)
    assert stats.ended[0].ending == "tcp_closed"
    assert sum(t.stats.sessions for t in stack.tunnels) == 1
    metrics = stack.lb.metrics
    await wait_until(lambda: metrics.websockets_open.get(LB) == 0)
    assert sum(metrics.upgrades.values.values()) == 1
    assert metrics.websocket_bytes.values[(LB, "out")] >= 20


async def test_a_finished_session_is_an_event_at_both_ends(
    stack: Stack, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Events with fields, as every log line of the project (lb/logs.py), not a sentence in
    the ``log`` event's message."""
    caplog.set_level(logging.INFO)
    port, _ = await start_access(nursery, LB, stack.via)
    assert await roundtrip(port, b"twelve bytes") == b"twelve bytes"

    def events(name: str) -> list[dict[str, object]]:
        lines = (json.loads(JsonFormatter().format(r)) for r in caplog.records)
        return [line for line in lines if line["event"] == name]

    await wait_until(lambda: events("access_session_ended") and events("tcp_stream_ended"))
    [ended] = events("access_session_ended")
    # to_ws / to_tcp: the bridge's own names at both ends (lb/connector/wsbridge.py)
    assert {k: ended[k] for k in ("hostname", "ending", "to_ws", "to_tcp")} == {
        "hostname": LB,
        "ending": "tcp_closed",
        "to_ws": 12,
        "to_tcp": 12,
    }
    [stream] = events("tcp_stream_ended")
    assert (stream["host"], stream["port"]) == ("127.0.0.1", stack.echo.port)
    assert (stream["to_tcp"], stream["to_ws"]) == (12, 12)


async def test_ten_megabytes_arrive_intact(stack: Stack, nursery: trio.Nursery) -> None:
    port, _ = await start_access(nursery, LB, stack.via)
    payload = random.Random(16).randbytes(10 * 1024 * 1024)
    back = await roundtrip(port, payload)
    assert len(back) == len(payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    metrics = stack.lb.metrics
    await wait_until(lambda: metrics.websockets_open.get(LB) == 0)
    # Payload plus framing (2-14 bytes per message) went through the LB both ways.
    assert metrics.websocket_bytes.values[(LB, "in")] >= len(payload)
    assert metrics.websocket_bytes.values[(LB, "out")] >= len(payload)


async def test_affinity_cookie_brings_sessions_back_to_their_tunnel(
    stack: Stack, nursery: trio.Nursery
) -> None:
    port, stats = await start_access(nursery, LB, stack.via)
    assert await roundtrip(port, b"first") == b"first"
    assert stats.cookie is not None  # the 101 set __cflb, and the client kept it
    first = [t for t in stack.tunnels if t.stats.sessions == 1]
    assert len(first) == 1
    for i in range(6):
        assert await roundtrip(port, b"again %d" % i) == b"again %d" % i
    assert first[0].stats.sessions == 7
    assert sum(t.stats.sessions for t in stack.tunnels) == 7


async def test_killing_the_carrying_tunnel_ends_the_session_and_the_next_goes_elsewhere(
    stack: Stack, nursery: trio.Nursery
) -> None:
    port, stats = await start_access(nursery, LB, stack.via)
    session = await trio.open_tcp_stream("127.0.0.1", port)
    await session.send_all(b"ping")
    assert await session.receive_some(100) == b"ping"
    [carrier] = stack.carrying()
    other = next(t for t in stack.tunnels if t is not carrier)
    metrics = stack.lb.metrics
    assert metrics.websockets_open == {LB: 1}  # the open-tunnels gauge, during the session
    assert metrics.upgrades.values == {(LB, "ssh", f"tunnel-{carrier.uuid[:2]}"): 1.0}
    carrier.kill()
    # The session ends cleanly: the local client reads EOF (no hang, no reset).
    with trio.fail_after(10):
        assert await session.receive_some(100) == b""
    await session.aclose()
    await wait_until(lambda: stats.open == 0)
    assert stats.ended[-1].ending == "broken"
    # A new session (same cookie, pointing at the dead tunnel) goes through the other one:
    # the connect fails and the zero-downtime retry picks the healthy tunnel.
    assert await roundtrip(port, b"after failover") == b"after failover"
    assert other.stats.sessions == 1
    await wait_until(lambda: stack.echo.open == 0)
    await wait_until(lambda: metrics.websockets_open == {LB: 0})


async def test_bastion_connects_only_to_allowed_destinations(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server_ctx, client_ctx, _ = certificates(tmp_path)
    echo: Echo = await nursery.start(serve_echo)
    rules = [IngressRule("bastion", BASTION), IngressRule("http_status:404")]
    allowed = f"127.0.0.1:{echo.port}"
    tunnel = await start_tunnel(nursery, EU, server_ctx, rules, bastion_allow=(allowed,))
    via = f"https://127.0.0.1:{tunnel.port}"
    port, stats = await start_access(
        nursery, BASTION, via, destination=allowed, ssl_context=client_ctx
    )
    assert await roundtrip(port, b"jump") == b"jump"
    assert echo.connections == 1
    # Outside the list (here: the connector's own port): refused with 403 before any connect.
    port, stats = await start_access(
        nursery, BASTION, via, destination=f"127.0.0.1:{tunnel.port}", ssl_context=client_ctx
    )
    assert await roundtrip(port, b"jump") == b""
    assert stats.refused == 1 and stats.sessions == 0
    assert "403" in stats.last_error and "bastion_allow" in stats.last_error
    # No destination at all: 400.
    port, stats = await start_access(nursery, BASTION, via, ssl_context=client_ctx)
    assert await roundtrip(port, b"jump") == b""
    assert "400" in stats.last_error
    assert echo.connections == 1
    assert tunnel.stats.by_status[403] == 1 and tunnel.stats.by_status[400] == 1


# ---------------------------------------------------------------------- a real ssh and sshd

SSHD = "/usr/sbin/sshd"


def _ssh_tools() -> tuple[str, str, str]:
    """(ssh, ssh-keygen, sshd), or a skip that says why this sandbox cannot run them."""
    ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
    sshd = shutil.which("sshd") or (SSHD if os.access(SSHD, os.X_OK) else None)
    if not (ssh and keygen and sshd):
        pytest.skip("OpenSSH is not installed: run scripts/install-openssh (Debian packages)")
    if os.geteuid() != 0:
        pytest.skip("a throwaway sshd needs root here (privilege separation, /run/sshd)")
    return ssh, keygen, sshd


def _sshd_files(tmp: Path, port: int) -> None:
    """sshd's configuration and authorized key."""
    (tmp / "authorized_keys").write_bytes((tmp / "client.pub").read_bytes())
    (tmp / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {tmp / 'host'}\nPidFile none\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir


async def _sshd(tmp: Path, keygen: str, sshd: str, nursery: trio.Nursery) -> tuple[int, Path]:
    """A throwaway sshd on loopback: its own host key, one authorized client key.  sshd
    cannot listen on port 0 and say which port it got: it is given a free port, and a new
    one if that was taken before it could bind it (:func:`start_on_a_free_port`)."""
    for name in ("host", "client"):
        await trio.run_process([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)])
    log = tmp / "sshd.log"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    async def start(port: int) -> int | None:
        _sshd_files(tmp, port)
        log.unlink(missing_ok=True)
        cmd = [sshd, "-D", "-f", str(tmp / "sshd_config"), "-E", str(log)]
        process = await nursery.start(partial(trio.run_process, cmd, check=False, **quiet))

        def outcome() -> str | None:
            # sshd logs this line once it listens; it exits if it cannot bind.
            text = log.read_text(errors="replace") if log.exists() else ""
            if f"Server listening on 127.0.0.1 port {port}." in text:
                return "listening"
            if process.poll() is None:
                return None
            if "Address already in use" in text:
                return "taken"
            pytest.fail(f"sshd exited ({process.returncode})\n{text[-2000:]}", pytrace=False)

        said = await wait_until(outcome, what=f"sshd to listen on port {port}")
        return port if said == "listening" else None

    port = await start_on_a_free_port(start, "sshd")
    return port, tmp / "client"


async def test_a_real_ssh_session_through_the_lb(nursery: trio.Nursery, tmp_path: Path) -> None:
    ssh, keygen, sshd = _ssh_tools()
    sshd_port, key = await _sshd(tmp_path, keygen, sshd, nursery)
    server_ctx, _, ca = certificates(tmp_path)
    rules = [
        IngressRule("http_status:200", APP, "^/healthz$"),
        IngressRule(f"ssh://127.0.0.1:{sshd_port}", APP),
        IngressRule("http_status:404"),
    ]
    tunnels = [await start_tunnel(nursery, u, server_ctx, rules) for u in (EU, US)]
    config = tmp_path / "lb.json"
    config.write_text(lb_config(tunnels, ca))
    lb = await start_lb(nursery, config)
    port, stats = await start_access(nursery, LB, f"http://127.0.0.1:{lb.proxy[0][1]}")
    data = random.Random(22).randbytes(1 << 20)
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    options += ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", str(key), "-p", str(port)]
    with trio.fail_after(60):
        done = await trio.run_process(
            [ssh, *options, "root@127.0.0.1", "sha256sum"],
            stdin=data,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert stats.sessions == 1
    assert sum(t.stats.sessions for t in tunnels) == 1


# ---------------------------------------------------------------------- the command


async def test_the_access_command_carries_a_session(stack: Stack) -> None:
    cmd = [sys.executable, "-m", "lb", "access", "tcp", "--hostname", LB]
    cmd += ["--url", "127.0.0.1:0", "--via", stack.via, "--quiet"]
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the command exited before listening"
                line += chunk
        # "access app.localhost: listening on 127.0.0.1:PORT, via http://..."
        assert line.startswith(f"access {LB}: listening on 127.0.0.1:".encode()), line
        port = int(line.split(b"127.0.0.1:")[1].split(b",")[0])
        assert await roundtrip(port, b"through the command") == b"through the command"
    finally:
        process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "nowhere"], 'expected "host:port", got "nowhere"'),
        (["--url", "127.0.0.1:0", "--via", "ftp://x"], "the scheme must be http or https"),
        (["--url", "127.0.0.1:0", "--destination", "db"], 'expected "host:port", got "db"'),
        (
            ["--url", "127.0.0.1:0", "--ca", "/nonexistent/ca.pem"],
            "error: --ca /nonexistent/ca.pem: no such file or directory",
        ),
    ],
)
async def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "lb", "access", "tcp", "--hostname", "h.example.com", *args]
    done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
