"""How many client connections the proxy may hold: the file-descriptor limit and the cap.

Every client connection costs a file descriptor, and most also hold an upstream connection
while a request is in flight.  The common default soft limit (1,024) is far below what the
kernel allows a process (the hard limit), and a proxy that runs out of descriptors fails
every new request at once, for every client.  So the proxy raises its soft limit to the hard
one at start, and caps client connections below what the limit can carry
(``engine.limits.max_connections``, docs/proxy.md, "Connection cap").
"""

from __future__ import annotations

import logging

__all__ = ["RESERVED_FDS", "default_max_connections", "raise_fd_limit"]

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
