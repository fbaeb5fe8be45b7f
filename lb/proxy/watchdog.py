"""Inactivity deadlines of client connections, checked by one task per proxy.

Why not trio's own deadlines: a request moves its connection's deadline at least twice
(``idle_timeout`` while the client is awaited, ``request_timeout`` while the upstream is),
and each ``CancelScope.deadline`` assignment costs 3-5 µs in trio (a context manager and a
push on the runner's deadline heap; the first figure by ``timeit``, the second in the
request path): some 3 % of the proxy's CPU per request (docs/bench.md).  Here moving a
deadline is one float store, and one task per proxy (``watch_loop`` in
lb/proxy/connection.py) wakes every :func:`tick` seconds and cancels the connections whose
deadline passed (:func:`expire`).  A timeout never fires early, and late by about one tick
(plus the wait for the scheduler to run that task, as for any trio deadline).  The tick is
a twentieth of the shortest timeout it serves, between 5 ms and a quarter of a second, and
grows with the connections to check (2 µs per connection: a check costs ~60 ns each, so
the loop stays under 3 % of a core; 100,000 connections are checked every 0.2 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio

__all__ = ["MAX_TICK", "MIN_TICK", "PER_CONNECTION", "Watchdog", "expire", "tick"]

MIN_TICK = 0.005
MAX_TICK = 0.25
PER_CONNECTION = 2e-6
"""Seconds of tick per connection checked (see the module docstring)."""


class Watchdog:
    """One connection's cancel scope and the time past which it is cancelled."""

    __slots__ = ("due", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.due = math.inf
        """The trio time past which :func:`expire` cancels ``scope`` (inf: never)."""

    def push(self, seconds: float, now: float | None = None) -> None:
        """Move the deadline ``seconds`` from now (``math.inf`` turns it off); ``now`` is the
        trio time when the caller has just read it (a clock read costs a few thousand
        instructions)."""
        self.due = (trio.current_time() if now is None else now) + seconds

    def cancel(self) -> None:
        """Cancel now (shutdown, the connection cap, the drain deadline)."""
        self.due = math.inf
        self.scope.cancel()

    @property
    def fired(self) -> bool:
        """Whether the scope was cancelled and caught the cancellation."""
        return self.scope.cancelled_caught


def tick(connections: int, *timeouts: float) -> float:
    """How often the deadlines of ``connections`` guarded by ``timeouts`` (seconds) are
    checked."""
    return max(MIN_TICK, min(MAX_TICK, min(timeouts) / 20), connections * PER_CONNECTION)


def expire(watchdogs: Iterable[Watchdog], now: float) -> None:
    """Cancel each of ``watchdogs`` whose deadline is ``now`` or earlier."""
    for watchdog in watchdogs:
        if watchdog.due <= now:
            watchdog.cancel()
