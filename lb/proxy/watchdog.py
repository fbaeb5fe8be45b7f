"""Inactivity deadlines of client connections, checked by one task per proxy.

Why not trio's own deadlines: a request moves its connection's deadline at least twice
(``idle_timeout`` while the client is awaited, ``request_timeout`` while the upstream is),
and each ``CancelScope.deadline`` assignment costs 3-5 µs in trio (a context manager and a
push on the runner's deadline heap; the first figure by ``timeit``, the second in the
request path): some 3 % of the proxy's CPU per request (docs/bench.md).  Here moving a
deadline is one float store, and one task per proxy (``watch_loop`` in
lb/proxy/connection.py) wakes every :func:`tick` seconds and cancels the connections whose
deadline passed (``watch_clients`` there).  A timeout never fires early, and late by about
one tick (plus the wait for the scheduler to run that task, as for any trio deadline).  The
tick is a twentieth of the shortest timeout it serves, between 5 ms and a quarter of a
second, and grows with the work each tick does, so that the loop stays under 3 % of a core:
2 µs per connection (a deadline check costs ~60 ns; 100,000 connections are checked every
0.2 s), and 15 µs more per rate clock judged, of a request body being read or a response
blocked on its client (judging costs ~300-450 ns; with 100,000 connections all uploading, a
tick every 1.7 s).  The figures are ``timeit`` on the watch loop's own code.

The same tick keeps the rate clocks (:class:`RateClock`) of the two waits a slow client can
stretch.  A request body that trickles (a byte every ``idle_timeout - 1`` seconds: the "slow
POST", which never trips the inactivity deadline) is judged by its average rate over the
time the proxy waited for it, as Kestrel's ``MinRequestBodyDataRate`` judges it; a response
read slowly (the "slow read") a write at a time, by the bytes of the write over the time
the proxy was blocked writing them, as Kestrel's ``MinResponseDataRate`` judges each write.
The inactivity deadline, pushed once per write, already bounds a write to ``idle_timeout``;
the response clock is what judges writes smaller than the rate times ``idle_timeout``
(streamed responses) or a raised ``idle_timeout``.  Why a write at a time: what the client
took of a write is known only once the write is over, and averaged over the whole response
the bytes the kernel took at once (its buffers: several megabytes on loopback) would be
credit for hours at a rate of 240 bytes a second.  A clock runs only while the proxy waits
on the client (a flag the body reader sets around its read, and the response writer around
its write), and is advanced here, a tick at a time: no clock read or arithmetic per read or
write.  The response clocks are found on the pass over the connections that checks their
deadlines (:func:`lb.proxy.connection.watch_clients`), so a response costs no registration.
That pass costs per connection what it cost before: the flag's check (70-90 ns by
``timeit`` on this shared machine) is paid for by the loop no longer going through a
generator (the same figures for both loops, 140-200 ns).
"""

from __future__ import annotations

import math

import trio

__all__ = [
    "MAX_TICK",
    "MIN_TICK",
    "PER_CLOCK",
    "PER_CONNECTION",
    "RateClock",
    "Watchdog",
    "tick",
]

MIN_TICK = 0.005
MAX_TICK = 0.25
PER_CONNECTION = 2e-6
"""Seconds of tick per connection checked (see the module docstring)."""
PER_CLOCK = 15e-6
"""Seconds of tick per rate clock judged (a request body, or a response blocked on its
client), on top of its connection's (see the module docstring)."""


class Watchdog:
    """One connection's cancel scope and the time past which it is cancelled."""

    __slots__ = ("due", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.due = math.inf
        """The trio time past which the watch loop cancels ``scope`` (inf: never;
        :func:`lb.proxy.connection.watch_clients`)."""

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


def tick(connections: int, *timeouts: float, clocks: int = 0) -> float:
    """How often the deadlines of ``connections`` guarded by ``timeouts`` (seconds), and the
    ``clocks`` rate clocks (request bodies being read, response writes blocked on their
    client), are checked."""
    work = connections * PER_CONNECTION + clocks * PER_CLOCK
    return max(MIN_TICK, min(MAX_TICK, min(timeouts) / 20), work)


class RateClock:
    """How long the proxy has waited on one client for a request body or a response, and
    whether the client is too slow.

    ``elapsed`` runs only while ``waiting`` is set: the body reader sets it around its wait
    for the client's bytes, the response writer around its wait for the client to take them
    (lb/proxy/replies.py, ``flush_down``).  So the time the proxy spends elsewhere
    (steering, dialing, blocked writing to a slow upstream, waiting for a slow upstream's
    response) is never blamed on the client.  The watch loop advances it by a tick at a
    time (:meth:`advance`).
    """

    __slots__ = ("closed_by", "elapsed", "seen", "size", "waiting")

    def __init__(self) -> None:
        self.waiting = False
        self.seen = False
        """For a response: the watch loop has already seen the write in progress.  The tick
        a write is first seen is not charged (the write may have begun just before it), so
        that the clock never runs ahead of the time the client really held the write:
        a fast client caught once mid-write is never charged a whole tick, however short
        the grace."""
        self.elapsed = 0.0
        """Seconds spent waiting on the client (the rate clock)."""
        self.size = 0
        """For a response: the bytes of the write being waited on (a body is judged by the
        bytes received, kept in its request's record)."""
        self.closed_by = ""
        """Why the connection was closed for being slow (``min_body_rate``,
        ``min_response_rate``, ``connection_cap``); empty while it was not."""

    def advance(self, seconds: float) -> None:
        """One tick of ``seconds`` passed: count it if the client was being waited on."""
        if self.waiting:
            self.elapsed += seconds

    def slow(self, moved: int, rate: float, grace: float) -> bool:
        """Whether ``moved`` bytes are fewer than ``rate`` per second of the clock, once the
        clock passed ``grace`` seconds (Kestrel's test: the average since the clock
        started, the grace included)."""
        elapsed = self.elapsed
        return elapsed > grace and moved < rate * elapsed
