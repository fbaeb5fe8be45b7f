"""The admin listener's guard over real loopback sockets: the measured attacks, and the token.

The three attacks measured against an unguarded listener (issue "the admin listener is an
attack surface"): ``POST /reload`` without credentials, a cross-origin form-style
``text/plain`` POST, and ``/status`` with a foreign ``Host`` (DNS rebinding).  Every test here
fails against the listener as it was before :mod:`lb.admin_guard`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from admin_builders import HOST, StartAdmin, all_healthy, config
from admin_builders import engine as make_engine
from stack_support import one_pool_config

from lb.admin import ReloadResult, serve_admin
from lb.admin_guard import Guard, guard_for, load_token
from lb.cli import main
from lb.config.errors import ConfigError
from lb.config.model import Config
from lb.engine import Engine
from lb.metrics import Metrics

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-0123456789abcdef"
ADMIN = {"X-Tunnel-LB": "1"}


class Reloads:
    """A reload callable that counts its calls: a refused request must not reach it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> ReloadResult:
        self.calls += 1
        return ReloadResult(ok=True, generation=self.calls)


async def raw(client: httpx.AsyncClient, request: bytes) -> bytes:
    """Send ``request`` as written (any Host) to the client's listener; the whole reply."""
    url = httpx.URL(str(client.base_url))
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


# --------------------------------------------------------------------------- the attacks


async def test_post_reload_without_credentials_or_marker_is_refused(
    start_admin: StartAdmin,
) -> None:
    reloads = Reloads()
    client = await start_admin(reloads)
    for extra in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
        r = await client.post("/reload", headers=extra)
        assert r.status_code == 403, r.text
        assert "X-Tunnel-LB" in r.json()["error"]
    # A no-cors fetch with a multipart body: still a simple request.
    r = await client.post("/reload", files={"a": b"b"})
    assert r.status_code == 403
    assert reloads.calls == 0
    # What a script sends: the marker header, or a JSON body.
    assert (await client.post("/reload", headers=ADMIN)).status_code == 200
    assert (await client.post("/reload", json={})).status_code == 200
    assert reloads.calls == 2


async def test_cross_origin_text_plain_post_is_refused(start_admin: StartAdmin) -> None:
    reloads = Reloads()
    client = await start_admin(reloads)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    r = await client.post("/reload", headers=evil, content=b"x=1")
    assert r.status_code == 403
    assert "cross-origin" in r.json()["error"]
    # Even with the marker header: a page that got a preflight through elsewhere is refused.
    r = await client.post("/reload", headers={**evil, **ADMIN})
    assert r.status_code == 403
    # Origin "null" (sandboxed frames, file:) is not this listener either.
    r = await client.post("/reload", headers={"Origin": "null", **ADMIN})
    assert r.status_code == 403
    assert reloads.calls == 0
    # The same origin (the status page's own fetch) is fine.
    same = {"Origin": str(client.base_url).rstrip("/"), **ADMIN}
    assert (await client.post("/reload", headers=same)).status_code == 200


async def test_foreign_host_is_refused_dns_rebinding(
    start_admin: StartAdmin, engine: Engine
) -> None:
    all_healthy(engine)
    client = await start_admin()
    port = httpx.URL(str(client.base_url)).port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        for path in ("/status", "/explain?host=app.example.com", "/metrics", "/nope"):
            r = await client.get(path, headers={"Host": host})
            assert r.status_code == 421, (host, path, r.text)
            assert "engine.admin_names" in r.json()["error"]
            assert "pools" not in r.text
    # The listener's own names: its address, localhost, loopback, with or without port.
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST"):
        r = await client.get("/status", headers={"Host": host})
        assert r.status_code == 200, host
    # Garbage in Host is a 4xx, never a crash.
    for host in ("", "a b", "x/y", "[::1", "h:notaport", "a@127.0.0.1"):
        reply = await raw(
            client, f"GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 421 ")), (host, reply[:60])
    reply = await raw(
        client, b"GET /status HTTP/1.1\r\nHost: a\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert (await client.get("/healthz")).status_code == 200


async def test_http10_without_host_is_served(start_admin: StartAdmin) -> None:
    client = await start_admin()
    reply = await raw(client, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")


async def test_configured_names_are_accepted(start_admin: StartAdmin) -> None:
    client = await start_admin(guard=Guard(names=frozenset({"lb1.internal"})))
    assert (await client.get("/status", headers={"Host": "lb1.internal:9100"})).status_code == 200
    assert (await client.get("/status", headers={"Host": "lb2.internal"})).status_code == 421


# --------------------------------------------------------------------------- the token


async def test_token_is_required_for_reload_and_explain(
    start_admin: StartAdmin, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    all_healthy(engine)
    reloads = Reloads()
    caplog.set_level(logging.DEBUG, logger="lb")
    client = await start_admin(reloads, guard=Guard(token=TOKEN))
    explain = f"/explain?host={HOST}"
    for auth in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        r = await client.post("/reload", headers={**ADMIN, **auth})
        assert r.status_code == 401, auth
        assert r.headers["www-authenticate"].startswith("Bearer ")
        r = await client.get(explain, headers=auth)
        assert r.status_code == 401, auth
    # Basic credentials a browser may have cached are not the token.
    r = await client.post("/reload", headers={**ADMIN, "Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401
    assert reloads.calls == 0
    good = {"Authorization": f"Bearer {TOKEN}"}
    # A bearer token is no browser's simple request: it is enough on its own.
    assert (await client.post("/reload", headers=good)).status_code == 200
    r = await client.get(explain, headers=good)
    assert r.status_code == 200
    assert TOKEN not in r.text
    # Reading health stays open (Prometheus, curl); the token never appears in it.
    r = await client.get("/status")
    assert r.status_code == 200
    assert TOKEN not in r.text
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    # A wrong Host is refused even with the token.
    r = await client.get(explain, headers={**good, "Host": "evil.example"})
    assert r.status_code == 421
    assert reloads.calls == 1
    assert TOKEN not in caplog.text
    assert "Bearer" not in caplog.text


async def test_non_loopback_admin_needs_a_token(
    engine: Engine, metrics: Metrics, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Refuses before anything listens, with a one-line configuration error.
    with pytest.raises(ConfigError) as info:
        await nursery.start(partial(serve_admin, engine, metrics, host="0.0.0.0", port=0))
    (problem,) = info.value.problems
    assert problem.path == "engine.admin"
    assert "without a token" in problem.message
    # Also when a guard without a token is handed in (the bind address chosen elsewhere).
    with pytest.raises(ConfigError, match="without a token"):
        await nursery.start(
            partial(serve_admin, engine, metrics, host="0.0.0.0", port=0, guard=Guard())
        )
    # With a token it listens on every interface, and the token guards it.
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    eng = make_engine(
        dataclasses.replace(
            config(),
            engine=dataclasses.replace(config().engine, admin_token_file=str(token_file)),
        )
    )
    host, port = await nursery.start(partial(serve_admin, eng, metrics, host="0.0.0.0", port=0))
    assert host == "0.0.0.0"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        r = await client.get(f"/explain?host={HOST}")
        assert r.status_code == 401
        r = await client.get(f"/explain?host={HOST}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200


def with_engine(**fields: Any) -> Config:
    base = config()
    return dataclasses.replace(base, engine=dataclasses.replace(base.engine, **fields))


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("  \n", "is empty"),
        ("short-8d1e", "shorter than 16"),
        ("has a space in it 0123456789", "printable ASCII"),
        ("x" * 5000, "larger than 4096"),
    ],
)
def test_bad_token_files_are_one_line_errors(
    tmp_path: Path, contents: str | None, expected: str
) -> None:
    path = tmp_path / "token"
    if contents is not None:
        path.write_text(contents)
    cfg = with_engine(admin_token_file=str(path))
    with pytest.raises(ConfigError) as info:
        load_token(cfg)
    (problem,) = info.value.problems
    assert problem.path == "engine.admin_token_file"
    assert expected in problem.message
    assert "\n" not in str(problem)
    if contents and contents.strip():
        assert contents.strip() not in str(problem)


def test_token_from_the_environment() -> None:
    cfg = with_engine(admin_token_env="LB_ADMIN_TOKEN")
    assert load_token(cfg, {"LB_ADMIN_TOKEN": f" {TOKEN}\n"}) == TOKEN
    with pytest.raises(ConfigError, match="LB_ADMIN_TOKEN is not set"):
        load_token(cfg, {})


def test_guard_never_shows_its_token() -> None:
    guard = Guard(token=TOKEN, names=frozenset({"a.example"}))
    assert TOKEN not in repr(guard)
    assert TOKEN not in str(guard)


def test_guard_for_names_and_bind_address() -> None:
    cfg = with_engine(admin_names=("LB1.Internal.", "10.1.2.3"))
    guard = guard_for(cfg, "127.0.0.2")
    assert guard.names == {"lb1.internal", "10.1.2.3", "127.0.0.2"}
    assert guard.token is None
    assert guard_for(cfg, "::1").names == {"lb1.internal", "10.1.2.3", "::1"}
    for every in ("", "0.0.0.0", "::", "lb.example"):
        with pytest.raises(ConfigError, match="without a token"):
            guard_for(cfg, every)
    cfg = with_engine(admin_token_env="LB_GUARD_TEST_TOKEN")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LB_GUARD_TEST_TOKEN", TOKEN)
        guard = guard_for(cfg, "0.0.0.0")
    assert guard.token == TOKEN
    assert guard.names == set()  # "every interface" is no name


# --------------------------------------------------------------------------- /readyz


async def test_readyz_is_503_from_the_first_moment_of_a_drain(
    start_admin: StartAdmin, engine: Engine
) -> None:
    all_healthy(engine)
    draining = trio.Event()
    client = await start_admin(draining=draining)
    assert (await client.get("/readyz")).status_code == 200
    draining.set()
    r = await client.get("/readyz")
    assert (r.status_code, r.text) == (503, "not ready: draining\n")
    assert (await client.get("/healthz")).status_code == 200  # still alive while draining


# --------------------------------------------------------------------------- check and run


def lb_file(tmp_path: Path, **engine: Any) -> str:
    path = tmp_path / "lb.json"
    path.write_text(one_pool_config(**engine))
    return str(path)


def test_check_refuses_a_wide_admin_without_token_and_warns_with_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = lb_file(tmp_path, admin="0.0.0.0:9100")
    assert main(["check", path]) == 2
    out, err = capsys.readouterr()
    (line,) = [line for line in err.splitlines() if "engine." in line]
    assert "engine.admin: the admin API would listen on every interface" in line
    assert not line.startswith("warning")
    path = lb_file(tmp_path, admin="0.0.0.0:9100", admin_token_env="LB_ADMIN_TOKEN")
    assert main(["check", path]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK: {path} (")
    (line,) = [line for line in err.splitlines() if "engine." in line]
    assert line.startswith("warning:")
    assert "engine.admin: the admin API listens on every interface" in line
    path = lb_file(tmp_path, admin="[::1]:9100", admin_names=["lb1.internal", "no/slash"])
    assert main(["check", path]) == 2
    out, err = capsys.readouterr()
    assert "engine.admin_names[1]" in err
    assert "every interface" not in err
    path = lb_file(tmp_path, admin_token_env="A", admin_token_file="token")
    assert main(["check", path]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ({"admin": "0.0.0.0:0"}, "engine.admin: the admin API would listen on every interface"),
        (
            {"admin": "0.0.0.0:0", "admin_token_env": "LB_TEST_UNSET_TOKEN"},
            "engine.admin_token_env: environment variable LB_TEST_UNSET_TOKEN is not set",
        ),
        ({"admin_token_file": "missing-token"}, "engine.admin_token_file: cannot read"),
    ],
)
async def test_run_refuses_to_start_with_one_line(
    tmp_path: Path, engine: dict[str, str], expected: str
) -> None:
    path = lb_file(tmp_path, **engine)
    env = {k: v for k, v in os.environ.items() if k != "LB_TEST_UNSET_TOKEN"}
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "lb", "run", path], capture_stderr=True, check=False, env=env
        )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and expected in lines[0], err


async def test_run_reports_a_wide_admin_option_as_the_option(tmp_path: Path) -> None:
    """``--admin 0.0.0.0:0`` without a token is the option's problem: it was reported under
    ``engine.admin`` of the file, which says nothing of the kind."""
    path = lb_file(tmp_path)
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "lb", "run", path, "--admin", "0.0.0.0:0"],
            capture_stderr=True,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line.lower()]
    assert line.startswith("error: --admin 0.0.0.0:0: the admin API would listen on 0.0.0.0"), err
    assert "engine.admin:" not in line and path not in line
