"""A rehearsal stack that fails to start leaves no process behind, running or zombie.

Every process the stack starts is recorded (its real ``open_process``), and after the failure
each PID is looked up in the real process table: ``/proc/<pid>`` is gone only once the child
has exited *and* its parent has waited for it (a zombie keeps its entry, state ``Z``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from lb.rehearse import stack
from lb.rehearse.stack import StartError, running
from lb.sim.scenario import Scenario, load_scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "configs" / "scenarios" / "reference-two-datacenters.yaml"


def _state(pid: int) -> str | None:
    """The process's state letter in the real process table (``Z``: a zombie), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def _pipes_open(spawned: list[trio.Process]) -> list[str]:
    """The pipes to a recorded process that are still open on our side."""
    return [
        f"{p.pid} {name}"
        for p in spawned
        for name, pipe in (("stdin", p.stdin), ("stdout", p.stdout), ("stderr", p.stderr))
        if isinstance(pipe, trio.lowlevel.FdStream) and pipe.fileno() != -1
    ]


def _left_behind(spawned: list[trio.Process]) -> dict[int, str]:
    """PID -> state of every recorded process still in the process table."""
    states = {p.pid: _state(p.pid) for p in spawned}
    return {pid: s for pid, s in states.items() if s is not None}


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> tuple[list[trio.Process], trio.Event]:
    """Every process the stack starts, and an event set at the first."""
    out: list[trio.Process] = []
    first = trio.Event()
    real: Callable[..., Awaitable[trio.Process]] = trio.lowlevel.open_process

    async def recording(*args: Any, **kwargs: Any) -> trio.Process:
        process = await real(*args, **kwargs)
        out.append(process)
        first.set()
        return process

    monkeypatch.setattr(trio.lowlevel, "open_process", recording)
    return out, first


@pytest.fixture
def scenario() -> Scenario:
    return load_scenario(REFERENCE)


async def test_a_connector_that_does_not_become_ready_is_reaped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario,
    spawned: tuple[list[trio.Process], trio.Event],
) -> None:
    monkeypatch.setattr(stack, "READY_WAIT", 0.0)  # gives up before the connector's ports
    with pytest.raises(ExceptionGroup) as failed:  # from the stack's nursery
        async with running(scenario, {}, tmp_path, seed=1):
            pytest.fail("the stack started")
    assert failed.group_contains(StartError, match="a connector did not start")
    processes, _ = spawned
    assert len(processes) == 1  # the first connector: it was still starting
    assert _left_behind(processes) == {}  # first: reading `returncode` would reap a zombie
    assert all(p.returncode is not None for p in processes)
    assert _pipes_open(processes) == []


async def test_a_start_cancelled_while_a_connector_starts_leaves_nothing_running(
    tmp_path: Path, scenario: Scenario, spawned: tuple[list[trio.Process], trio.Event]
) -> None:
    processes, first = spawned

    async def start() -> None:
        async with running(scenario, {}, tmp_path, seed=1):
            pytest.fail("the stack started")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await first.wait()  # the first connector exists, it has not reported its ports yet
        nursery.cancel_scope.cancel()
    assert processes
    assert _left_behind(processes) == {}  # first: reading `returncode` would reap a zombie
    assert all(p.returncode is not None for p in processes)
    assert _pipes_open(processes) == []


async def test_an_lb_that_never_becomes_ready_is_reaped_with_the_connectors(
    tmp_path: Path, scenario: Scenario, spawned: tuple[list[trio.Process], trio.Event]
) -> None:
    raw = {"load_balancers": "not a list"}  # `tunnel-lb run` refuses it and exits
    with pytest.raises(ExceptionGroup) as failed:
        async with running(scenario, raw, tmp_path, seed=1):
            pytest.fail("the stack started")
    assert failed.group_contains(StartError, match="did not become ready")
    processes, _ = spawned
    lb = [p for p in processes if "run" in p.args]
    assert len(lb) == 1 and len(processes) > 1, [p.args for p in processes]
    assert _left_behind(processes) == {}  # first: reading `returncode` would reap a zombie
    assert all(p.returncode is not None for p in processes)
    assert _pipes_open(processes) == []
    assert json.loads((tmp_path / "lb.json").read_text())["load_balancers"] == "not a list"


async def test_an_edge_stand_in_gone_before_the_end_is_a_one_line_error() -> None:
    """The real report asks each edge stand-in's process for the replicas it used; one that
    has exited makes a one-line error, not a hang or a traceback."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", "pass"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    await proc.wait()
    assert proc.stdout is not None
    edge = stack.EdgeProcess(proc, stack._Lines(proc.stdout))
    with pytest.raises(StartError, match=r"^an edge stand-in exited or hung before the end"):
        await edge.answered()
