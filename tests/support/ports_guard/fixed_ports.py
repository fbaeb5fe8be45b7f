"""No test binds a fixed port: two copies of the suite can run side by side on one machine.

An audit hook (PEP 578) refuses every ``socket.bind`` to a TCP/UDP port outside the kernel's
ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default).  A
port the kernel picked (port 0, or a number read back from such a socket) is always in that
range; a number below it was written by a person (8080, 9100, 18443...), and a second
copy of the suite would collide on it.  Port 0 is always allowed.

tests/conftest.py installs it in the test process and puts this directory on the
``PYTHONPATH`` of every process the tests start, whose ``sitecustomize`` installs it there
too (``tunnel-lb run``, ``demo``, the stand-ins, workers).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

__all__ = ["FixedPortError", "ephemeral_range", "install"]


class FixedPortError(OSError):
    """A bind to a port that the kernel did not pick."""


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (inclusive)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 65535
    return low, high


_RANGE = ephemeral_range()
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.bind":
        return
    sock, address = args
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    if not isinstance(address, tuple) or len(address) < 2:
        return
    port = address[1]
    if isinstance(port, int) and port != 0 and not _RANGE[0] <= port <= _RANGE[1]:
        raise FixedPortError(
            f"test setup: bind to fixed port {address[0]}:{port} refused; "
            "use port 0 (a second copy of the suite would collide on it)"
        )


def install() -> None:
    """Add the audit hook to this process (once; audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
