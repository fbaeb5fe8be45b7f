"""Supervision of real child workers by an in-process :class:`lb.workers.Workers`.

* a reload that changes ``engine.listen`` does not break later restarts: children get the
  listeners the parent bound at start;
* a stalled child (SIGSTOP) is noticed by its missing heartbeats, killed and restarted,
  while an idle child that heartbeats is left alone.

Everything on 127.0.0.1; the tunnels are never reachable (probes are irrelevant here).
There is no parent process to bind the listen port (port 0) and hand it to the children, so
the test holds the ports it names while they run (:func:`ports_support.reserved_port`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from ports_support import reserved_port
from stack_support import LB, one_pool_config
from waiting import wait_until

import lb.workers
from lb.config.loader import load_config
from lb.engine import Engine
from lb.metrics import Metrics
from lb.workers import Workers

pytestmark = [pytest.mark.integration]


@pytest.fixture
def ports() -> Iterator[tuple[int, int, int]]:
    """Three ports held for the test: the children's, and two a reload moves them to."""
    with reserved_port() as a, reserved_port() as b, reserved_port() as c:
        yield a, b, c


async def answers(port: int) -> bool:
    """Some HTTP answer on ``port`` (only the child listens there)."""
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            response = await client.get(f"http://127.0.0.1:{port}/", headers={"Host": LB})
    except httpx.HTTPError:
        return False
    return response.status_code > 0


async def next_child(workers: Workers, old_pid: int | None, seconds: float) -> int:
    """Wait until a child other than ``old_pid`` has reported; its pid."""
    slot = workers.slots[0]

    def reported() -> int | None:
        process = slot.process
        if process is not None and process.pid != old_pid and slot.last_seen is not None:
            return process.pid
        return None

    pid: int = await wait_until(reported, seconds, what=f"a child other than {old_pid}")
    return pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_restart_after_listen_reload_and_stalled_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ports: tuple[int, int, int]
) -> None:
    monkeypatch.setattr(lb.workers, "SILENT_TIMEOUT", 2.5)
    port, moved, other = ports
    path = tmp_path / "lb.json"
    path.write_text(one_pool_config(interval=30, listen=[port], workers=2))
    engine = Engine(load_config([str(path)]).config, now=trio.current_time())
    workers = Workers(
        engine,
        Metrics(),
        count=1,
        command=[sys.executable, "-m", "lb", "run", "--worker", str(path)],
        seeds=lambda: 7,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(workers.run, [("127.0.0.1", port)], shutdown)
        first = await next_child(workers, None, 20)
        assert await answers(port)

        # An idle child heartbeats: it outlives SILENT_TIMEOUT without traffic.
        await trio.sleep(4)  # on purpose: longer than SILENT_TIMEOUT
        assert workers.slots[0].process is not None
        assert workers.slots[0].process.pid == first

        # A reload moves and adds listeners (not rebound until a restart); the child dies.
        path.write_text(one_pool_config(interval=30, listen=[moved, other], workers=2))
        engine.reconfigure(load_config([str(path)]).config, now=trio.current_time())
        os.kill(first, signal.SIGKILL)
        second = await next_child(workers, first, 20)
        assert await answers(port)  # the restarted child serves the bound address...
        assert not await answers(other)  # ...and not the reloaded one
        await trio.sleep(1.5)  # on purpose: long enough for a crash at start to show
        assert workers.slots[0].process is not None
        assert workers.slots[0].process.pid == second  # it did not crash at start

        # A stalled child stops heartbeating: killed and started again.
        os.kill(second, signal.SIGSTOP)
        third = await next_child(workers, second, 20)
        assert gone(second)
        assert await answers(port)

        shutdown.set()
        with trio.fail_after(15):
            await workers.stopped()
        assert gone(third)
