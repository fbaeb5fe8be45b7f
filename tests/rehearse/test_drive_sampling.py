"""The driver's readings of the LB's timed-out checks (lb/rehearse/drive.py): dated by when
each GET of the counter was sent and returned, missed ticks skipped, a failed GET a gap.

Under load a GET of the LB's metrics takes 0.5 to 1.5 s: a check counted while it is on its
way must lie in its reading's window, and the rehearsal must go on when one fails.  The
stack here is a stand-in on a virtual clock, so the GETs take exactly as long as told.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import httpx
import trio
import trio.testing

from lb.rehearse.drive import Driven, _at_the_end


class _Stack:
    """Answers the counter's GETs as scripted by the scenario second they are sent:
    ``(seconds the GET takes, counts)``, or an exception to raise after that long."""

    def __init__(self, start: float, script: dict[float, tuple[float, Any]]) -> None:
        self.start = start
        self.script = script
        self.sent: list[float] = []

    def cpu(self) -> dict[int, Any]:
        return {}

    async def probe_timeouts(self, client: object) -> dict[str, int]:
        at = trio.current_time() - self.start
        self.sent.append(at)
        took, answer = self.script.get(at, (0.0, None))
        await trio.sleep(took)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer or {})

    async def probes(self, client: object) -> int:
        return 0

    async def probe_duration(self, client: object) -> float:
        return 0.0


async def test_readings_are_dated_by_their_gets_and_a_failed_one_is_a_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The GET sent at 0.5 s takes 1 s and first counts a check: it lies in [0, 1.5] (the
    previous GET's sending, this one's return), not in [0, 0.5], which ends before it could
    have timed out.  The driver then resumes at the next tick (1.75 s) instead of taking
    the ticks it missed back to back.  The GET at 2 s times out: the rehearsal goes on, and
    the checks counted across that gap get a window no reading covers (never excused)."""
    start = trio.current_time()
    stack = _Stack(
        start,
        {
            0.5: (1.0, {"app/a": 1}),
            2.0: (0.1, httpx.ReadTimeout("slow")),
            2.5: (0.0, {"app/a": 3}),
            3.0: (0.0, {"app/a": 3}),
        },
    )
    out = Driven(0.0, {})
    sc: Any = SimpleNamespace(duration=3.0)
    await _at_the_end(sc, stack, httpx.AsyncClient(), start, out)  # type: ignore[arg-type]
    assert stack.sent == [0.0, 0.5, 2.0, 2.5, 3.0]
    assert [t for t, _ in out.samples] == [0.0, 0.25, 0.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
    assert out.timed_out == [("app/a", 0.0, 1.5, 1), ("app/a", -math.inf, 2.5, 2)]
    assert out.gaps == 1


async def test_the_last_reading_keeps_the_time_it_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The last GET, sent at the scenario's end, returns 0.75 s later: a check it first
    counts may have timed out until then, not only until the end."""
    start = trio.current_time()
    stack = _Stack(start, {1.0: (0.75, {"app/b": 2})})
    out = Driven(0.0, {})
    sc: Any = SimpleNamespace(duration=1.0)
    await _at_the_end(sc, stack, httpx.AsyncClient(), start, out)  # type: ignore[arg-type]
    assert out.timed_out == [("app/b", 0.5, 1.75, 2)]
