"""How many client connections the proxy may hold: the file-descriptor limit and the cap.

Every client connection costs a file descriptor, and most also hold an upstream connection
while a request is in flight.  The common default soft limit (1,024) is far below what the
kernel allows a process (the hard limit), and a proxy that runs out of descriptors fails
every new request at once, for every client.  So the proxy raises its soft limit to the hard
one at start, and caps client connections below what the limit can carry
(``engine.limits.max_connections``, docs/proxy.md, "Connection cap").

At the cap a new connection takes the place of one that has not earned it
(:func:`make_room`): the connection waiting longest for the first byte of a request, else the
one stuck longest in the middle of a head past :data:`HEAD_GRACE`, else the oldest whose
request body comes slower than the minimum rate, else the one whose client takes its
response the slowest below the minimum rate.  Without the second rule a slowloris
(connections that each send a few bytes of a head and then trickle or stall) would hold the
whole cap until ``idle_timeout``, and every new client would be refused; without the third,
a "slow POST" (a whole head, then its body a byte at a time) would do the same, and without
the fourth a "slow read" (a large download taken a few bytes at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

__all__ = [
    "BODY_RATE",
    "HEAD_GRACE",
    "RESERVED_FDS",
    "RESPONSE_RATE",
    "default_max_connections",
    "make_room",
    "raise_fd_limit",
]

log = logging.getLogger("lb.proxy")

RESERVED_FDS = 64
"""Descriptors left for listeners, the admin server, probes, logs and configuration files."""


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force (0 when
    the platform has none).  Logged when it changes; a refusal leaves the limit as it was."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    # Linux refuses an "unlimited" soft limit (fs.nr_open caps it); 2**20 is its usual ceiling.
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "fd_limit_unchanged",
            extra={"fields": {"soft": soft, "hard": hard, "reason": str(exc)}},
        )
        return soft
    log.info("fd_limit_raised", extra={"fields": {"from": soft, "to": target}})
    return target


def default_max_connections(fd_limit: int) -> int:
    """The connection cap when ``engine.limits.max_connections`` is 0: half of what the
    descriptor limit leaves after :data:`RESERVED_FDS` (each client connection may hold an
    upstream connection too), at least 16; 10,000 when the limit is unknown."""
    if fd_limit <= 0:
        return 10_000
    return max(16, (fd_limit - RESERVED_FDS) // 2)


HEAD_GRACE = 2.0
"""Seconds a request head may take, from its first bytes, before a connection that still
holds only part of it may be closed for a new one at the cap.  A client on a working
connection sends a head within a round trip or two; at the cap, this is the head timeout
under pressure (as Envoy's overload manager shortens its timeouts near a resource limit).
Below the cap a head has ``idle_timeout`` between reads, as always."""
BODY_RATE = 240
"""Bytes per second a request body must average, after its grace, not to count as slow at
the connection cap when ``limits.min_body_rate`` is 0 (Kestrel's default minimum).  Below
the cap a body that slow is left alone: only the cap needs its place."""
RESPONSE_RATE = 240
"""Bytes per second a client must take its response at, over the time the proxy is blocked
writing to it and past its grace, not to count as slow at the connection cap when
``limits.min_response_rate`` is 0 (Kestrel's default ``MinResponseDataRate``)."""

_C = TypeVar("_C")


def make_room(
    idle: Mapping[_C, object],
    heads: Mapping[_C, float],
    now: float,
    grace: float,
    slow: Mapping[_C, object] | None = None,
    readers: Mapping[_C, object] | None = None,
) -> _C | None:
    """The connection to close so that a new one fits under the cap, or None.

    ``idle`` holds the connections waiting for the first byte of a request (a new one, or
    a keep-alive one between requests; a TLS handshake counts as waiting), ``heads`` those
    holding part of a request head with the time its first bytes came, ``slow`` those
    whose request body comes slower than the minimum rate (lb/proxy/watchdog.py,
    :class:`~lb.proxy.watchdog.RateClock`); all oldest first; ``readers`` those blocked
    on a client that takes its response slower than the minimum rate, slowest first.  The
    idlest connection goes first: closing it costs its client at most a reconnect.  Else
    the oldest partial head, if it began ``grace`` seconds ago or more; else the oldest
    slow body (its client gets a 408); else the slowest reader (its response is cut).  A
    request in progress at a fair rate is never chosen.
    """
    for client in idle:
        return client
    for client, since in heads.items():
        if now - since >= grace:
            return client
        break
    if slow:
        for client in slow:
            return client
    if readers:
        for client in readers:
            return client
    return None
