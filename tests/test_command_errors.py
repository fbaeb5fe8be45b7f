"""``tunnel-lb connector`` and ``tunnel-lb access tcp``: every error names its file or address,
``connector --check`` loads what a start loads, and a failed access session is logged with
its reason in the project's log format."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme
from ports_support import busy_port, dead_port

pytestmark = pytest.mark.integration

TUNNEL = "6ff42ae2-765d-4adf-8112-31c55c1551ef"


@pytest.fixture
def busy() -> Iterator[int]:
    """A port the kernel picked, with a listener on it for the whole test."""
    with busy_port() as port:
        yield port


def tunnel_lb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lb", *args], capture_output=True, text=True, timeout=60
    )


def connector_file(tmp_path: Path, **files: str) -> Path:
    lines = [f"tunnel: {TUNNEL}", "listen: 127.0.0.1:0"]
    lines += [f"{key}: {value}" for key, value in files.items() if key != "caPool"]
    if "caPool" in files:
        lines += ["originRequest:", f"  caPool: {files['caPool']}"]
    lines += ["ingress:", "  - service: hello_world"]
    path = tmp_path / "x.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The only ``error:`` line of a command that failed, checked to be alone and clean."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return line


def test_check_loads_the_certificate_a_start_would_load(tmp_path: Path) -> None:
    """docs/connector.md's example names ``certs/cert.pem``: without the file, ``--check``
    said ok and the start failed with ``[Errno 2] No such file or directory``.  Like every
    problem of the file, it names the file, the line and the field (it named only the PEM
    file, exit 1)."""
    path = connector_file(tmp_path, certificate="certs/cert.pem")
    cert = tmp_path / "certs" / "cert.pem"
    for args in ([str(path), "--check"], [str(path)]):
        done = tunnel_lb("connector", *args)
        assert done.returncode == 2
        assert one_error(done) == (
            f"error: {path}:3: certificate: {cert}: no such file or directory"
        )


def test_unusable_pem_files_are_named(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "certs").mkdir()
    cert, key, pool = (tmp_path / "certs" / name for name in ("cert.pem", "key.pem", "ca.pem"))
    cert.write_text("not a certificate\n")
    path = connector_file(tmp_path, certificate="certs/cert.pem")
    assert one_error(tunnel_lb("connector", str(path), "--check")) == (
        f"error: {path}:3: certificate: {cert}: not a PEM certificate chain with its private key"
    )
    ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(cert))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(key))
    path = connector_file(tmp_path, certificate="certs/cert.pem", key="certs/key.pem")
    assert f"{path}:3: certificate: {cert} with key {key}: " in one_error(
        tunnel_lb("connector", str(path), "--check")
    )
    key.unlink()
    assert one_error(tunnel_lb("connector", str(path), "--check")) == (
        f"error: {path}:4: key: {key}: no such file or directory"
    )
    pool.write_text("junk\n")
    path = connector_file(tmp_path, caPool="certs/ca.pem")
    assert one_error(tunnel_lb("connector", str(path), "--check")).startswith(
        f"error: {path}:4: originRequest.caPool: {pool}: no PEM certificate in it"
    )
    ca.cert_pem.write_to_path(str(pool))
    done = tunnel_lb("connector", str(path), "--check")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: ok (1 ingress rules)\n"


@pytest.mark.parametrize("option", ["--listen", "--control"])
def test_a_busy_port_of_the_connector_is_named(tmp_path: Path, busy: int, option: str) -> None:
    path = connector_file(tmp_path)
    done = tunnel_lb("connector", str(path), option, f"127.0.0.1:{busy}")
    assert done.returncode == 1
    assert one_error(done) == f"error: cannot listen on 127.0.0.1:{busy}: address already in use"


def test_a_busy_port_of_access_is_named(busy: int) -> None:
    done = tunnel_lb("access", "tcp", "--hostname", "h.example.com", "--url", f"127.0.0.1:{busy}")
    assert done.returncode == 1
    assert one_error(done) == f"error: cannot listen on 127.0.0.1:{busy}: address already in use"


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_a_failed_access_session_is_logged_with_its_reason(log_format: str) -> None:
    """The reason was in the record's fields, which ``logging.basicConfig``'s format dropped:
    only ``WARNING access_session_failed`` was printed."""
    via = f"http://127.0.0.1:{dead_port()}"
    cmd = [sys.executable, "-m", "lb", "access", "tcp", "--hostname", "tcp.example.com"]
    cmd += ["--url", "127.0.0.1:0", "--via", via, "--log-format", log_format]
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the command exited before listening"
                line += chunk
            port = int(line.split(b"127.0.0.1:")[1].split(b",")[0])
            local = await trio.open_tcp_stream("127.0.0.1", port)
            assert await local.receive_some(100) == b""  # refused with a FIN
            await local.aclose()
            err = b""
            while b"access_session_failed" not in err or not err.endswith(b"\n"):
                chunk = await process.stderr.receive_some(65536)
                assert chunk, err
                err += chunk
    finally:
        process.kill()
        await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()
    [failed] = [x for x in err.decode().splitlines() if "access_session_failed" in x]
    if log_format == "json":
        event = json.loads(failed)
        assert (event["level"], event["hostname"]) == ("warning", "tcp.example.com")
        assert event["error"].startswith(f"cannot reach 127.0.0.1:{via.rsplit(':', 1)[1]}")
    else:
        assert " warning access_session_failed hostname=tcp.example.com error=" in failed
        assert "cannot reach 127.0.0.1:" in failed
