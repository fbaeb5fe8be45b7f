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
grows with the work each tick does, so that the loop stays under 3 % of a core: 2 µs per
connection (a deadline check costs ~60 ns; 100,000 connections are checked every 0.2 s),
and 15 µs more per request body being read (judging its rate clock costs ~300-450 ns;
with 100,000 connections all uploading, a tick every 1.7 s).  The figures are ``timeit``
on the watch loop's own code.

The same tick keeps each request body's rate clock (:class:`BodyClock`): a body that
trickles (a byte every ``idle_timeout - 1`` seconds: the "slow POST") never trips the
inactivity deadline, so what it is judged by is its average rate over the time the proxy
waited for it, as Kestrel's ``MinRequestBodyDataRate`` judges it.  The clock runs only
while the proxy is waiting for the client's body bytes (a flag the body reader sets around
its read), and is advanced here, a tick at a time: no clock read or arithmetic per read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio

__all__ = [
    "MAX_TICK",
    "MIN_TICK",
    "PER_BODY",
    "PER_CONNECTION",
    "BodyClock",
    "Watchdog",
    "expire",
    "tick",
]

MIN_TICK = 0.005
MAX_TICK = 0.25
PER_CONNECTION = 2e-6
"""Seconds of tick per connection checked (see the module docstring)."""
PER_BODY = 15e-6
"""Seconds of tick per request body whose rate clock is judged, on top of its connection's
(see the module docstring)."""


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


def tick(connections: int, *timeouts: float, bodies: int = 0) -> float:
    """How often the deadlines of ``connections`` guarded by ``timeouts`` (seconds), and the
    rate clocks of ``bodies`` request bodies, are checked."""
    work = connections * PER_CONNECTION + bodies * PER_BODY
    return max(MIN_TICK, min(MAX_TICK, min(timeouts) / 20), work)


def expire(watchdogs: Iterable[Watchdog], now: float) -> None:
    """Cancel each of ``watchdogs`` whose deadline is ``now`` or earlier."""
    for watchdog in watchdogs:
        if watchdog.due <= now:
            watchdog.cancel()


class BodyClock:
    """How long the proxy has waited for one request body, and whether it is too slow.

    ``elapsed`` runs only while ``reading`` is set (the body reader sets it around its wait
    for the client's bytes), so the time the proxy spends elsewhere (steering, dialing,
    blocked writing to a slow upstream) is never blamed on the client.  The watch loop
    advances it by a tick at a time (:meth:`advance`).
    """

    __slots__ = ("closed_by", "elapsed", "reading")

    def __init__(self) -> None:
        self.reading = False
        self.elapsed = 0.0
        """Seconds spent waiting for the body's bytes (the rate clock)."""
        self.closed_by = ""
        """Why the connection was closed for being slow (``min_body_rate``,
        ``connection_cap``); empty while it was not."""

    def advance(self, seconds: float) -> None:
        """One tick of ``seconds`` passed: count it if the body was being waited for."""
        if self.reading:
            self.elapsed += seconds

    def slow(self, received: int, rate: float, grace: float) -> bool:
        """Whether ``received`` body bytes are fewer than ``rate`` per second of the clock,
        once the clock passed ``grace`` seconds (Kestrel's test: the average since the body
        began, the grace included)."""
        elapsed = self.elapsed
        return elapsed > grace and received < rate * elapsed
