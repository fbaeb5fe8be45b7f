"""The files a configuration names are read the same way by ``check``, ``run`` and a reload.

The reload tests run ``tunnel-lb run`` as a real process with an HTTPS listener on
127.0.0.1 port 0 and look at the certificate a real TLS client is served; the tunnel behind
is never reachable, which is irrelevant to which certificate the listener presents.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from stack_support import (
    LB,
    event_of,
    log_events,
    log_size,
    logged,
    one_pool_config,
    running_stack,
    start_lb_process,
    until_url,
)
from waiting import wait_until

from lb.admin_guard import MIN_TOKEN_LENGTH
from lb.cli import main
from lb.config.errors import ConfigError
from lb.config.loader import LoadResult, load_config
from lb.files import read_files
from lb.proxy.listeners import TlsListener
from lb.service import Swappable, _Rereader, worker_file_problems

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-of-enough-length-0123456789"


def write_config(path: Path, **engine: Any) -> None:
    """:func:`one_pool_config` with an HTTPS listener on ``lb.pem`` (relative to ``path``)
    and ``engine`` fields, one key per line so that every field has its own line."""
    document = json.loads(one_pool_config())
    document["engine"]["listen"] = [
        {"address": "127.0.0.1", "port": 0, "certificate": "lb.pem", "key": "lb.pem"}
    ]
    document["engine"].update(engine)
    path.write_text(json.dumps(document, indent=2) + "\n")


def line_of(path: Path, text: str) -> int:
    """The line of ``path`` that contains ``text`` (exactly one)."""
    found = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


def issue(ca: trustme.CA, path: Path) -> str:
    """A new certificate for :data:`LB` written to ``path`` (key included); its serial."""
    leaf = ca.issue_cert(LB)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return f"{cert.serial_number:X}"


async def open_tls(port: int, ca: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    """A verified TLS connection to the listener, handshake done."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=LB)
    with trio.fail_after(10):
        await stream.do_handshake()
    return stream


async def served_serial(port: int, ca: trustme.CA) -> str:
    """The serial number of the certificate a new connection is served."""
    stream = await open_tls(port, ca)
    try:
        cert = stream.getpeercert()
        assert cert
        return str(cert["serialNumber"]).lstrip("0") or "0"
    finally:
        await trio.aclose_forcefully(stream)


async def status_line(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    """Send a request on ``stream``; the status line of its answer."""
    await stream.send_all(f"GET / HTTP/1.1\r\nHost: {LB}\r\n\r\n".encode())
    data = b""
    with trio.fail_after(30):
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, "closed before a status line"
            data += chunk
    return data.split(b"\r\n", 1)[0]


async def reload(admin: int) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"http://127.0.0.1:{admin}/reload", headers={"X-Tunnel-LB": "1"}, timeout=30
        )
    body: dict[str, Any] = resp.json()
    return resp.status_code, body


async def test_a_reload_serves_the_renewed_certificate_and_keeps_open_connections(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    first = issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    write_config(config)
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")
    port = ready.listen[0]
    assert await served_serial(port, ca) == first
    opened = await open_tls(port, ca)  # before the renewal

    renewed = issue(ca, tmp_path / "lb.pem")  # same path, as certbot renews
    assert renewed != first
    code, body = await reload(ready.admin)
    assert (code, body["ok"], body["errors"]) == (200, True, [])
    assert "restart_required" not in body
    assert await served_serial(port, ca) == renewed
    # The connection accepted before the reload keeps its session and still serves.
    assert (await status_line(opened)).startswith(b"HTTP/1.1 ")
    assert opened.getpeercert()["serialNumber"].lstrip("0") == first  # type: ignore[index]
    await trio.aclose_forcefully(opened)
    process.send_signal(signal.SIGTERM)


async def test_a_reload_with_a_missing_certificate_or_ca_is_refused_and_the_old_one_serves(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    serial = issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    write_config(config)
    log = tmp_path / "lb.log"
    process, ready = await start_lb_process(nursery, config, log=log)
    port = ready.listen[0]

    document = json.loads(config.read_text())
    document["engine"]["listen"][0]["certificate"] = "missing.pem"
    config.write_text(json.dumps(document, indent=2) + "\n")
    line = line_of(config, "missing.pem")
    code, body = await reload(ready.admin)
    assert (code, body["ok"]) == (400, False)
    assert body["errors"] == [
        f'{config}:{line}: engine.listen[0].certificate: cannot read "{tmp_path}/missing.pem": '
        "No such file or directory"
    ]
    assert await served_serial(port, ca) == serial

    write_config(config, upstream_ca="missing-ca.pem")
    line = line_of(config, "missing-ca.pem")
    code, body = await reload(ready.admin)
    assert (code, body["ok"]) == (400, False)
    assert body["errors"] == [
        f'{config}:{line}: engine.upstream_ca: cannot read "{tmp_path}/missing-ca.pem": '
        "No such file or directory"
    ]

    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    write_config(config, upstream_ca="not-a-ca.pem")
    code, body = await reload(ready.admin)
    assert code == 400
    assert "engine.upstream_ca: cannot use" in body["errors"][0]

    # SIGHUP: the same refusal, logged; the old certificate keeps serving.
    (tmp_path / "lb.pem").write_text("broken\n")
    write_config(config)
    since = log_size(log)
    process.send_signal(signal.SIGHUP)
    failed = await logged(
        log,
        since,
        lambda text: event_of(text, "config_reload_failed"),
        process,
        "the failed reload's log line",
    )
    assert re.search(
        r"lb\.json:\d+: engine\.listen\[0\]: cannot use certificate", failed["errors"][0]
    )
    assert await served_serial(port, ca) == serial
    process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_rotates_the_admin_token(
    tmp_path: Path, nursery: trio.Nursery, workers: int
) -> None:
    """``systemctl reload`` after writing a new token file: the old token is refused from the
    reload's reply on, the new one is accepted, no restart needed (with ``workers: 2`` too:
    the admin listener lives in the parent only)."""
    ca = trustme.CA()
    issue(ca, tmp_path / "lb.pem")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = tmp_path / "lb.json"
    write_config(config, admin_token_file="token", workers=workers)
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")
    admin = f"http://127.0.0.1:{ready.admin}"

    def bearer(value: str) -> dict[str, str]:
        return {"X-Tunnel-LB": "1", "Authorization": f"Bearer {value}"}

    async with httpx.AsyncClient(timeout=30) as client:
        token.write_text("short")  # a broken token file is refused, the old token serves on
        resp = await client.post(f"{admin}/reload", headers=bearer(TOKEN))
        assert resp.status_code == 400
        line = line_of(config, '"admin_token_file"')
        assert resp.json()["errors"] == [
            f"{config}:{line}: engine.admin_token_file: the token in {tmp_path}/token is "
            f"shorter than {MIN_TOKEN_LENGTH} characters"
        ]
        assert (
            await client.get(f"{admin}/explain?host={LB}", headers=bearer(TOKEN))
        ).status_code == 200

        rotated = TOKEN + "-rotated"
        token.write_text(rotated)
        resp = await client.post(f"{admin}/reload", headers=bearer(TOKEN))
        assert (resp.status_code, resp.json()["ok"]) == (200, True)
        assert "restart_required" not in resp.json()
        # The old token is refused at once, on calls that need it...
        assert (await client.post(f"{admin}/reload", headers=bearer(TOKEN))).status_code == 401
        assert (
            await client.get(f"{admin}/explain?host={LB}", headers=bearer(TOKEN))
        ).status_code == 401
        # ...the new one is accepted, and calls that need none still work.
        assert (
            await client.get(f"{admin}/explain?host={LB}", headers=bearer(rotated))
        ).status_code == 200
        resp = await client.post(f"{admin}/reload", headers=bearer(rotated))
        assert (resp.status_code, resp.json()["ok"]) == (200, True)
        assert (await client.get(f"{admin}/status")).status_code == 200
    process.send_signal(signal.SIGTERM)


async def test_a_reload_reads_admin_token_env_from_the_start_environment(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is fixed at start: a reload naming another variable that was set
    then rotates to its value; one naming a variable that was not is refused as not set."""
    other = TOKEN + "-other"
    monkeypatch.setenv("LB_TEST_TOKEN_A", TOKEN)
    monkeypatch.setenv("LB_TEST_TOKEN_B", other)
    monkeypatch.delenv("LB_TEST_TOKEN_UNSET", raising=False)
    ca = trustme.CA()
    issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    write_config(config, admin_token_env="LB_TEST_TOKEN_A")
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")
    admin = f"http://127.0.0.1:{ready.admin}"

    def bearer(value: str) -> dict[str, str]:
        return {"X-Tunnel-LB": "1", "Authorization": f"Bearer {value}"}

    def naming(variable: str) -> None:
        document = json.loads(config.read_text())
        document["engine"]["admin_token_env"] = variable
        config.write_text(json.dumps(document, indent=2) + "\n")

    async with httpx.AsyncClient(timeout=30) as client:
        naming("LB_TEST_TOKEN_UNSET")
        resp = await client.post(f"{admin}/reload", headers=bearer(TOKEN))
        assert resp.status_code == 400
        line = line_of(config, "LB_TEST_TOKEN_UNSET")
        assert resp.json()["errors"] == [
            f"{config}:{line}: engine.admin_token_env: "
            "environment variable LB_TEST_TOKEN_UNSET is not set"
        ]
        naming("LB_TEST_TOKEN_B")
        resp = await client.post(f"{admin}/reload", headers=bearer(TOKEN))
        assert (resp.status_code, resp.json()["ok"]) == (200, True)
        assert "restart_required" not in resp.json()
        assert (await client.post(f"{admin}/reload", headers=bearer(TOKEN))).status_code == 401
        resp = await client.post(f"{admin}/reload", headers=bearer(other))
        assert (resp.status_code, resp.json()["ok"]) == (200, True)
    process.send_signal(signal.SIGTERM)


# ----------------------------------------------------------------- check agrees with run

BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (engine fields, text on the line, the problem after "file:line: ")
    "certificate": (
        {"listen": [{"port": 0, "certificate": "nope.pem", "key": "key.pem"}]},
        "nope.pem",
        'engine.listen[0].certificate: cannot read "{d}/nope.pem": No such file or directory',
    ),
    "key": (
        {"listen": [{"port": 0, "certificate": "cert.pem", "key": "nokey.pem"}]},
        "nokey.pem",
        'engine.listen[0].key: cannot read "{d}/nokey.pem": No such file or directory',
    ),
    "sni-certificate": (
        {
            "listen": [
                {
                    "port": 0,
                    "certificate": "cert.pem",
                    "key": "key.pem",
                    "certificates": [{"certificate": "sni.pem", "key": "key.pem"}],
                }
            ]
        },
        "sni.pem",
        'engine.listen[0].certificates[0].certificate: cannot read "{d}/sni.pem": '
        "No such file or directory",
    ),
    "upstream_ca": (
        {"upstream_ca": "no-ca.pem"},
        "no-ca.pem",
        'engine.upstream_ca: cannot read "{d}/no-ca.pem": No such file or directory',
    ),
    "admin_token_file": (
        {"admin_token_file": "no-token"},
        "no-token",
        "engine.admin_token_file: cannot read {d}/no-token: No such file or directory",
    ),
    "short-token": (
        {"admin_token_file": "short-token"},
        '"short-token"',
        "engine.admin_token_file: the token in {d}/short-token is shorter than "
        f"{MIN_TOKEN_LENGTH} characters",
    ),
    "affinity_secret_file": (
        {"affinity_secret_file": "no-secret"},
        "no-secret",
        "engine.affinity_secret_file: cannot read this file",  # the loader's own check
    ),
    "state_file": (
        {"state_file": "no-dir/state.json"},
        "no-dir/state.json",
        'engine.state_file: cannot write "{d}/no-dir/state.json": '
        'the directory "{d}/no-dir" does not exist',
    ),
}


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN)
def test_check_and_run_report_each_bad_file_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[dict[str, Any], str, str]
) -> None:
    engine, text, message = case
    leaf = trustme.CA().issue_cert(LB)
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "short-token").write_text("short\n")
    config = tmp_path / "lb.json"
    document = json.loads(one_pool_config())
    document["engine"].update(engine)
    config.write_text(json.dumps(document, indent=2) + "\n")
    expected = f"{config}:{line_of(config, text)}: {message.format(d=tmp_path)}"

    assert main(["check", str(config)]) == 2
    assert expected in capsys.readouterr().err.splitlines()
    assert main(["check", "--json", str(config)]) == 2
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert (error["file"], error["line"]) == (str(config), line_of(config, text))
    run = [sys.executable, "-m", "lb", "run", str(config)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2  # before anything listens
    assert f"error: {expected}" in done.stderr.splitlines()
    assert "Traceback" not in done.stderr


def test_run_reports_an_unset_admin_token_env_with_its_line(tmp_path: Path) -> None:
    """``check`` does not read the variable (it belongs to the service's environment), so
    ``run`` is the one to report it: it said file and path but no line."""
    config = tmp_path / "lb.json"
    document = json.loads(one_pool_config())
    document["engine"]["admin_token_env"] = "LB_TEST_TOKEN_NEVER_SET"
    config.write_text(json.dumps(document, indent=2) + "\n")
    line = line_of(config, "LB_TEST_TOKEN_NEVER_SET")
    env = {k: v for k, v in os.environ.items() if k != "LB_TEST_TOKEN_NEVER_SET"}
    run = [sys.executable, "-m", "lb", "run", str(config)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 2  # before anything listens
    assert "Traceback" not in done.stderr
    assert (
        f"error: {config}:{line}: engine.admin_token_env: "
        "environment variable LB_TEST_TOKEN_NEVER_SET is not set"
    ) in done.stderr.splitlines(), done.stderr


def test_check_passes_what_run_starts_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = trustme.CA().issue_cert(LB)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "lb.pem"))
    config = tmp_path / "lb.json"
    write_config(config)
    assert main(["check", str(config)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


# ----------------------------------------------------------------- configs/https.yaml

ROOT = Path(__file__).resolve().parents[2]


async def test_the_https_example_runs_with_the_certificates_its_comment_makes(
    tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "https.yaml"
    config.write_text((ROOT / "configs" / "https.yaml").read_text())
    assert main(["check", str(config)]) == 2  # before: the files are not there
    line = line_of(config, "certificate: certs/default.pem")
    assert (
        f"{config}:{line}: engine.listen[1].certificate: "
        f'cannot read "{tmp_path}/certs/default.pem": No such file or directory'
    ) in capsys.readouterr().err.splitlines()

    script = [str(ROOT / "scripts" / "example-certs"), str(tmp_path / "certs")]
    await trio.run_process(script, capture_stdout=True)
    assert main(["check", str(config)]) == 0
    capsys.readouterr()
    ports = ("--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    process, ready = await start_lb_process(nursery, config, *ports, log=tmp_path / "lb.log")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
    for name in ("www.example.com", "x.api.example.com", "localhost"):
        raw = await trio.open_tcp_stream("127.0.0.1", ready.listen[1])
        stream = trio.SSLStream(raw, ctx, server_hostname=name)  # verified against the CA
        with trio.fail_after(10):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)
    process.send_signal(signal.SIGTERM)


async def test_with_workers_every_process_serves_the_renewed_certificate(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    first = issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    write_config(config, workers=2)
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")
    port = ready.listen[0]
    assert await served_serial(port, ca) == first

    renewed = issue(ca, tmp_path / "lb.pem")
    code, body = await reload(ready.admin)
    assert (code, body["ok"]) == (200, True)

    async def twenty_renewed() -> bool:
        # The kernel spreads new connections over both processes (SO_REUSEPORT): twenty in
        # a row all reach the parent with a chance of one in a million.
        return all([await served_serial(port, ca) == renewed for _ in range(20)])

    await wait_until(twenty_renewed, 30, what="every process serving the renewed certificate")
    process.send_signal(signal.SIGTERM)


async def test_a_child_rereads_its_certificates_while_the_token_file_is_bad(
    tmp_path: Path,
) -> None:
    """A child worker has no admin listener: the token file, being rewritten (here: empty)
    when a configuration reaches the child, must not keep it on its old certificate."""
    ca = trustme.CA()
    issue(ca, tmp_path / "lb.pem")
    (tmp_path / "token").write_text("")
    config = tmp_path / "lb.json"
    write_config(config, admin_token_file="token")
    loaded = load_config([config])
    with pytest.raises(ConfigError, match="admin_token_file"):
        read_files(loaded)  # the parent's reload is refused

    files = read_files(loaded, token=False)
    assert files.token is None and files.listeners[0] is not None

    [socket_listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    before = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    listener = TlsListener(socket_listener, before)
    swappable = Swappable(listeners=[listener], opened_as=[("127.0.0.1", 0)])
    reread = _Rereader(swappable)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reread.run)
            reread(loaded.config)
            await wait_until(lambda: listener.context is not before, 10, what="a new context")
            nursery.cancel_scope.cancel()
    finally:
        await listener.aclose()


async def test_a_reload_swaps_the_upstream_ca_for_new_probe_connections(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack, httpx.AsyncClient(timeout=5) as client:
        status = f"{stack.admin_base}/status"

        def states(r: httpx.Response) -> dict[str, str]:
            return {p["name"]: p["state"] for p in r.json()["pools"]}

        await until_url(client, status, lambda r: set(states(r).values()) == {"healthy"})
        right = stack.ca_file.read_bytes()
        trustme.CA().cert_pem.write_to_path(str(stack.ca_file))  # a CA that signed nothing
        code, body = await reload(stack.admin)
        assert (code, body["ok"]) == (200, True)
        assert "restart_required" not in body
        # Each check opens a new connection: verified against the new CA, they all fail.
        await until_url(client, status, lambda r: set(states(r).values()) == {"critical"})

        stack.ca_file.write_bytes(right)
        assert (await reload(stack.admin))[0] == 200
        await until_url(client, status, lambda r: set(states(r).values()) == {"healthy"})


async def test_a_listener_that_moved_keeps_its_certificate_until_the_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    first = issue(ca, tmp_path / "lb.pem")
    issue(ca, tmp_path / "other.pem")
    config = tmp_path / "lb.json"
    write_config(config)
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")

    await _reload_moved_listener(config, ready.admin)
    # The bound listener is not the one the file now describes: it keeps what it serves.
    assert await served_serial(ready.listen[0], ca) == first
    process.send_signal(signal.SIGTERM)


async def test_a_restarted_worker_keeps_the_certificate_of_a_listener_that_moved(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A child started after such a reload binds the parent's socket, not the moved address:
    it must also serve that socket's certificate, as the parent does, not the new entry's."""
    ca = trustme.CA()
    first = issue(ca, tmp_path / "lb.pem")
    other = issue(ca, tmp_path / "other.pem")
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"
    write_config(config, workers=2, access_log=True)
    process, ready = await start_lb_process(nursery, config, log=log)
    port = ready.listen[0]
    await wait_until(lambda: log_events(log, "worker_ready"), 20, what="worker 1 ready")

    await _reload_moved_listener(config, ready.admin)

    (started,) = log_events(log, "worker_started")
    os.kill(int(started["pid"]), signal.SIGKILL)
    await wait_until(
        lambda: len(log_events(log, "worker_ready")) >= 2, 20, what="worker 1 restarted"
    )
    mark = len(log_events(log, "request"))
    served = []
    for _ in range(30):  # new connections, spread over both processes by the kernel
        stream = await open_tls(port, ca)
        served.append(str(stream.getpeercert()["serialNumber"]).lstrip("0"))  # type: ignore[index]
        await status_line(stream)
        await trio.aclose_forcefully(stream)
    assert other not in served
    assert set(served) == {first}
    workers = {e["worker"] for e in log_events(log, "request")[mark:]}
    assert workers == {0, 1}, workers  # the restarted child served some of them
    process.send_signal(signal.SIGTERM)


class Origin:
    """An HTTPS endpoint on 127.0.0.1 port 0 with a certificate for :data:`LB`: answers
    every request ``200 ok`` on a keep-alive connection (``/close``: then closes it) and
    records, per request, the number of the connection it came on."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(LB).configure_cert(self.context)
        self.connections = 0
        self.requests: list[tuple[int, str]] = []
        self.handshakes_failed = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:  # the proxy refused our certificate
                self.handshakes_failed += 1
                return
            self.connections += 1
            number, data = self.connections, b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode()
                self.requests.append((number, path))
                close = path == "/close"
                extra = b"Connection: close\r\n" if close else b""
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok"
                )
                if close:
                    return
        except trio.BrokenResourceError:
            return
        finally:
            await trio.aclose_forcefully(stream)


async def test_a_reload_swaps_the_upstream_ca_for_new_proxy_connections(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The proxy's side of ``engine.upstream_ca`` on reload (the file rewritten in place):
    new connections to endpoints verify with the new bundle; a pooled connection made before
    stays in the pool and keeps serving until it closes."""
    signer, stranger = trustme.CA(), trustme.CA()
    origin = Origin(signer)
    port = await nursery.start(origin.serve)
    ca_file = tmp_path / "ca.pem"
    stranger.cert_pem.write_to_path(str(ca_file))  # a CA that did not sign the origin's
    document = json.loads(one_pool_config())
    del document["monitors"], document["pools"][0]["monitor"]  # traffic only, no probes
    (address,) = document["connect_to"]
    document["connect_to"][address] = f"127.0.0.1:{port}"
    document["engine"].update(upstream_ca="ca.pem")
    config = tmp_path / "lb.json"
    config.write_text(json.dumps(document, indent=2) + "\n")
    process, ready = await start_lb_process(nursery, config, log=tmp_path / "lb.log")
    base = f"http://127.0.0.1:{ready.listen[0]}"

    async with httpx.AsyncClient(timeout=10, headers={"Host": LB}) as client:
        assert (await client.get(f"{base}/a")).status_code == 526  # untrusted: invalid cert
        assert origin.requests == []
        await wait_until(
            lambda: origin.handshakes_failed, 10, what="the origin's refused handshake"
        )

        signer.cert_pem.write_to_path(str(ca_file))  # same name, the right CA now
        code, body = await reload(ready.admin)
        assert (code, body["ok"]) == (200, True)
        assert "restart_required" not in body
        r = await client.get(f"{base}/b")
        assert (r.status_code, r.text) == (200, "ok")
        assert origin.requests == [(1, "/b")]

        # Back to the CA that signed nothing: the pooled connection, verified when it was
        # made, is reused (it is not dropped by the reload)...
        stranger.cert_pem.write_to_path(str(ca_file))
        assert (await reload(ready.admin))[0] == 200
        assert (await client.get(f"{base}/c")).status_code == 200
        assert (await client.get(f"{base}/close")).status_code == 200
        assert origin.requests == [(1, "/b"), (1, "/c"), (1, "/close")]
        # ...and once it is closed, a new one is verified with the new bundle, and refused.
        failed = origin.handshakes_failed
        assert (await client.get(f"{base}/d")).status_code == 526
        await wait_until(
            lambda: origin.handshakes_failed > failed, 10, what="the new connection refused"
        )
        assert origin.connections == 1
    process.send_signal(signal.SIGTERM)


def _rename_certificate(ca: trustme.CA, config: Path) -> str:
    """Issue ``lb-2027.pem`` beside ``config`` and name it in the listener: its serial."""
    renewed = issue(ca, config.parent / "lb-2027.pem")
    document = json.loads(config.read_text())
    document["engine"]["listen"][0].update(certificate="lb-2027.pem", key="lb-2027.pem")
    config.write_text(json.dumps(document, indent=2) + "\n")
    return renewed


def _move_listener(config: Path) -> None:
    """Point the first listener of ``config`` at 127.0.0.2 with other.pem."""
    document = json.loads(config.read_text())
    document["engine"]["listen"][0].update(
        address="127.0.0.2", certificate="other.pem", key="other.pem"
    )
    config.write_text(json.dumps(document, indent=2) + "\n")


async def _reload_moved_listener(config: Path, admin: int) -> None:
    """Move the first listener (:func:`_move_listener`) and reload: accepted, with a
    restart required for ``engine.listen`` (the bound socket stays where it is)."""
    _move_listener(config)
    code, body = await reload(admin)
    assert (code, body["restart_required"]) == (200, ["engine.listen"])


async def _reload_renamed_certificate(ca: trustme.CA, config: Path, admin: int) -> str:
    """:func:`_rename_certificate`, then a reload that needs no restart: the new serial."""
    renewed = _rename_certificate(ca, config)
    code, body = await reload(admin)
    assert (code, body["ok"]) == (200, True)
    assert "restart_required" not in body
    return renewed


async def _restart_child(log: Path) -> None:
    """Kill the first child worker and wait until the parent has started another."""
    (started,) = log_events(log, "worker_started")
    os.kill(int(started["pid"]), signal.SIGKILL)
    await wait_until(
        lambda: len(log_events(log, "worker_ready")) >= 2,
        20,
        what=lambda: f"worker 1 restarted: {log.read_text()[-2000:]}",
    )


async def test_a_restarted_worker_starts_with_the_certificate_files_in_force(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A reload that names a new certificate file (same address), the old file deleted: a
    child started afterwards loads the file in force, not the deleted one of the start."""
    ca = trustme.CA()
    issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"
    write_config(config, workers=2, access_log=True)
    process, ready = await start_lb_process(nursery, config, log=log)
    port = ready.listen[0]
    await wait_until(lambda: log_events(log, "worker_ready"), 20, what="worker 1 ready")

    renewed = await _reload_renamed_certificate(ca, config, ready.admin)
    (tmp_path / "lb.pem").unlink()
    await _restart_child(log)
    mark = len(log_events(log, "request"))
    for _ in range(30):  # new connections, spread over both processes by the kernel
        stream = await open_tls(port, ca)
        assert str(stream.getpeercert()["serialNumber"]).lstrip("0") == renewed  # type: ignore[index]
        await status_line(stream)
        await trio.aclose_forcefully(stream)
    workers = {e["worker"] for e in log_events(log, "request")[mark:]}
    assert workers == {0, 1}, workers
    process.send_signal(signal.SIGTERM)


async def test_a_restarted_worker_falls_back_to_the_start_files_when_the_new_ones_broke(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A reload names a new certificate file, which then breaks: a child started afterwards
    cannot load it, opens the listener with the start's file instead (logged, naming the
    broken file) and serves, rather than failing every restart."""
    ca = trustme.CA()
    first = issue(ca, tmp_path / "lb.pem")
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"
    write_config(config, workers=2)
    process, ready = await start_lb_process(nursery, config, log=log)
    port = ready.listen[0]
    await wait_until(lambda: log_events(log, "worker_ready"), 20, what="worker 1 ready")

    renewed = await _reload_renamed_certificate(ca, config, ready.admin)
    (tmp_path / "lb-2027.pem").write_text("not a certificate\n")
    await _restart_child(log)
    (fallback,) = log_events(log, "worker_start_files")
    assert "lb-2027.pem" in " ".join(fallback["errors"]), fallback
    # The parent serves the renewed certificate it holds, the child the start's: thirty new
    # connections, spread by the kernel, reach both with a chance of one in 2**29.
    serials = {await served_serial(port, ca) for _ in range(30)}
    assert serials == {first, renewed}, serials
    process.send_signal(signal.SIGTERM)


async def test_with_workers_every_process_swaps_the_upstream_ca(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The child reads ``engine.upstream_ca`` again when the reloaded configuration reaches
    it (a moment after the parent's reply): then no process answers 526 any more."""
    signer, stranger = trustme.CA(), trustme.CA()
    origin = Origin(signer)
    port = await nursery.start(origin.serve)
    ca_file = tmp_path / "ca.pem"
    stranger.cert_pem.write_to_path(str(ca_file))
    document = json.loads(one_pool_config())
    del document["monitors"], document["pools"][0]["monitor"]
    (address,) = document["connect_to"]
    document["connect_to"][address] = f"127.0.0.1:{port}"
    document["engine"].update(upstream_ca="ca.pem", workers=2, access_log=True)
    config = tmp_path / "lb.json"
    log = tmp_path / "lb.log"
    config.write_text(json.dumps(document, indent=2) + "\n")
    process, ready = await start_lb_process(nursery, config, log=log)
    base = f"http://127.0.0.1:{ready.listen[0]}"
    await wait_until(lambda: log_events(log, "worker_ready"), 20, what="worker 1 ready")

    async def statuses(n: int) -> set[int]:
        seen = set()
        for _ in range(n):  # each on a new connection: the kernel spreads them
            async with httpx.AsyncClient(timeout=10, headers={"Host": LB}) as client:
                seen.add((await client.get(f"{base}/")).status_code)
        return seen

    mark = len(log_events(log, "request"))
    assert await statuses(20) == {526}
    assert {e["worker"] for e in log_events(log, "request")[mark:]} == {0, 1}

    signer.cert_pem.write_to_path(str(ca_file))
    assert (await reload(ready.admin))[0] == 200

    async def all_trusted() -> bool:
        return await statuses(20) == {200}

    await wait_until(all_trusted, 20, what="every process trusting the new CA")
    mark = len(log_events(log, "request"))
    assert await statuses(20) == {200}
    assert {e["worker"] for e in log_events(log, "request")[mark:]} == {0, 1}
    process.send_signal(signal.SIGTERM)


async def test_a_child_logs_file_problems_at_their_lines_as_the_parent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A child re-reading its files after a reload logged ``lb.json: engine.listen[0]...``
    without the line the parent's own report of the same file has."""
    config = tmp_path / "lb.json"
    write_config(config)  # lb.pem does not exist
    loaded = load_config([config])
    with pytest.raises(ConfigError) as parent:
        read_files(loaded)
    with pytest.raises(ConfigError) as child:
        read_files(LoadResult(config=loaded.config, warnings=[]), token=False)
    assert child.value.problems and all(p.line is None for p in child.value.problems)

    problems = worker_file_problems(loaded.config, child.value)
    assert problems == parent.value.problems
    assert all(p.file == str(config) and p.line for p in problems)
    assert problems[0].line == line_of(config, '"certificate"')

    # What the child logs when a configuration reaches it (its reader runs in a thread).
    swappable = Swappable(listeners=[], opened_as=[])
    reread = _Rereader(swappable)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reread.run)
        reread(loaded.config)
        await wait_until(
            lambda: "worker_files_unchanged" in caplog.text, 10, what="the child's log"
        )
        nursery.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if r.getMessage() == "worker_files_unchanged"]
    assert record.fields["errors"] == [str(p) for p in problems]  # type: ignore[attr-defined]

    # Files that no longer load leave the problems as they were, without lines.
    config.write_text("engine: [\n")
    assert worker_file_problems(loaded.config, child.value) == child.value.problems
