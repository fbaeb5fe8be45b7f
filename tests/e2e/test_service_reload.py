"""Reload robustness of :mod:`lb.service`: a reload that blows up is a failed reload.

In process, on 127.0.0.1 port 0; the tunnels are never reachable (nothing listens on the
``connect_to`` ports), which is irrelevant to reloading.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from stack_support import LB, one_pool_config
from waiting import wait_until

import lb.service
from lb.engine import Engine
from lb.service import Running, serve_lb


def reload_failures(running: Running) -> float:
    return running.metrics.reloads.values.get(("failure",), 0.0)


async def start(nursery: trio.Nursery, path: Path) -> Running:
    running: Running = await nursery.start(
        lambda task_status: serve_lb(
            [str(path)], seed=1, handle_signals=False, task_status=task_status
        )
    )
    return running


def billion_laughs(depth: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "deep-yaml": ("lb.yaml", "a: " + "[" * 50000 + "]" * 50000 + "\n", "nested deeper than 64"),
    "deep-json": ("lb.json", '{"a": ' + "[" * 50000 + "]" * 50000 + "}", "nested deeper than 64"),
    "long-number": ("lb.json", '{"a": ' + "7" * 5000 + "}", "a number of 5000 characters"),
    "alias-bomb-6": ("lb.yaml", billion_laughs(6), "aliases repeat more than"),
    "huge": ("lb.yaml", "# padding\n" * 300_000, "the file is larger than 2 MiB"),
}


@pytest.mark.integration
@pytest.mark.parametrize(("name", "text", "expected"), HOSTILE.values(), ids=HOSTILE)
async def test_a_hostile_file_is_a_failed_reload_and_the_old_config_serves(
    tmp_path: Path,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    name: str,
    text: str,
    expected: str,
) -> None:
    path = tmp_path / name
    path.write_text(one_pool_config())
    running = await start(nursery, path)
    old, generation = running.engine.config, running.engine.generation
    path.write_text(text)
    with caplog.at_level(logging.ERROR):
        result = await running.reload()
    assert not result.ok
    [error] = result.errors
    assert error.startswith(f"{path}:") and expected in error
    assert running.engine.config is old and running.engine.generation == generation
    assert reload_failures(running) == 1
    assert any(r.getMessage() == "config_reload_failed" for r in caplog.records)
    # Over the admin endpoint: a 400 with the error, not a 500; the old LB still answers.
    host, port = running.admin
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        response = await client.post("/reload", headers={"X-Tunnel-LB": "1"})
        assert response.status_code == 400
        assert expected in response.json()["errors"][0]
        explained = await client.get("/explain", params={"host": LB})
        assert explained.status_code == 200
    path.write_text(one_pool_config(interval=20))
    assert (await running.reload()).ok
    assert running.engine.generation == generation + 1
    running.shutdown.set()


EMPTY = {
    "empty": "",
    "comments-only": "# the configuration moved to lb.d/\n",
    "no-load-balancers": "monitors:\n  - {id: m, type: http}\n",
}


@pytest.mark.integration
@pytest.mark.parametrize("text", EMPTY.values(), ids=EMPTY)
async def test_a_reload_that_removes_every_load_balancer_needs_force(
    tmp_path: Path, nursery: trio.Nursery, text: str
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(one_pool_config())
    running = await start(nursery, path)
    old, generation = running.engine.config, running.engine.generation
    path.write_text(text)
    result = await running.reload()  # what SIGHUP does
    assert not result.ok
    assert result.errors == (
        f"{path}: load_balancers: no load balancer is configured: every request would be "
        "answered 404 (the old configuration keeps serving; POST /reload?force=1 applies it "
        "anyway)",
    )
    assert running.engine.config is old and running.engine.generation == generation
    host, port = running.admin
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        refused = await client.post("/reload", headers={"X-Tunnel-LB": "1"})
        assert refused.status_code == 400
        assert "no load balancer is configured" in refused.json()["errors"][0]
        assert (await client.get("/explain", params={"host": LB})).status_code == 200
        forced = await client.post("/reload", params={"force": "1"}, headers={"X-Tunnel-LB": "1"})
        assert forced.status_code == 200, forced.text
        assert running.engine.config.load_balancers == ()
        assert (await client.get("/explain", params={"host": LB})).status_code == 404
    running.shutdown.set()


@pytest.mark.integration
async def test_an_exception_from_reconfigure_keeps_the_old_config(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(one_pool_config())
    running = await start(nursery, path)
    old = running.engine.config

    def boom(self: Engine, config: Any, *, now: float) -> None:
        raise ValueError("cannot apply")

    monkeypatch.setattr(Engine, "reconfigure", boom)
    path.write_text(one_pool_config(interval=20))
    result = await running.reload()
    assert not result.ok
    assert result.errors == ("ValueError: cannot apply",)
    assert running.engine.config is old
    assert reload_failures(running) == 1
    running.shutdown.set()


@pytest.mark.integration
async def test_reload_warns_about_fields_that_need_a_restart(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(one_pool_config())
    running = await start(nursery, path)
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    path.write_text(one_pool_config(workers=2, upstream_ca=str(ca)))
    with caplog.at_level(logging.WARNING):
        result = await running.reload()
    assert result.ok
    assert result.as_json()["restart_required"] == ["engine.workers"]  # the CA is swapped in
    warnings = [r for r in caplog.records if r.getMessage() == "config_restart_required"]
    assert len(warnings) == 1
    fields = warnings[0].__dict__["fields"]["needs_restart"]
    assert fields == ["engine.workers"]
    assert running.workers is None  # unchanged until a restart
    # Compared with what runs, not with the previous reload: still not in force, still said.
    path.write_text(one_pool_config(workers=2, upstream_ca=str(ca), interval=20))
    result = await running.reload()
    assert result.as_json()["restart_required"] == ["engine.workers"]
    caplog.clear()
    path.write_text(one_pool_config(upstream_ca=str(ca), interval=20))  # back to what runs
    with caplog.at_level(logging.WARNING):
        result = await running.reload()
    assert result.ok and "restart_required" not in result.as_json()
    assert not [r for r in caplog.records if r.getMessage() == "config_restart_required"]
    running.shutdown.set()


async def test_sigterm_does_not_wait_behind_a_slow_reload() -> None:
    release = trio.Event()
    reloading = trio.Event()

    async def slow_reload() -> None:
        reloading.set()
        await release.wait()  # a reload that never finishes by itself

    shutdown = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(lb.service._signals, slow_reload, shutdown)  # receiver is up
            os.kill(os.getpid(), signal.SIGHUP)
            await reloading.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            await shutdown.wait()
            nursery.cancel_scope.cancel()


async def test_sighup_reload_that_raises_does_not_kill_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Belt and braces: even a reload callable that raises is logged, not fatal."""

    async def bad_reload() -> None:
        raise RuntimeError("boom")

    def failure_logged() -> bool:
        return any(r.getMessage() == "config_reload_failed" for r in caplog.records)

    shutdown = trio.Event()
    with caplog.at_level(logging.ERROR), trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(lb.service._signals, bad_reload, shutdown)
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(failure_logged, what="config_reload_failed in the log")
            os.kill(os.getpid(), signal.SIGTERM)
            await shutdown.wait()
            nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_a_reload_cannot_leave_an_admin_beyond_loopback_without_a_token(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The token is rotated on reload, not removed where the start would have refused to
    listen: the admin API bound to every interface keeps asking for its token."""
    token = "t0ken-of-enough-length-0123456789"
    (tmp_path / "token").write_text(token)
    path = tmp_path / "lb.json"
    path.write_text(one_pool_config(admin="0.0.0.0:0", admin_token_file="token"))
    running = await start(nursery, path)
    # Moved back to loopback in the file (the loader's own rule is then met) and without a
    # token: but the listener bound at start stays where it is until a restart.
    path.write_text(one_pool_config(admin="127.0.0.1:0"))
    result = await running.reload()
    assert not result.ok
    assert result.errors == (
        f"{path}: engine.admin: the admin API would listen on 0.0.0.0, beyond this machine, "
        "without a token: set engine.admin_token_file or engine.admin_token_env, or bind "
        "127.0.0.1",
    )
    admin = f"http://127.0.0.1:{running.admin[1]}"
    async with httpx.AsyncClient(timeout=10) as client:
        explain = f"{admin}/explain?host={LB}"
        assert (await client.get(explain)).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.get(explain, headers=auth)).status_code == 200
    running.shutdown.set()
