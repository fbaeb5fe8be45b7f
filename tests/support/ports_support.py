"""Ports for the tests where a program cannot simply bind port 0 and say what it got.

Our own programs bind port 0 and report the port (tests/support/stack_support.py reads it);
Prometheus too, and redis-server listens on a unix socket.  Three cases remain:

* :func:`reserved_port`: a port the test hands to SO_REUSEPORT listeners it does not bind
  itself (worker children started without their parent).  A bound socket that never listens
  holds it: no other process can bind it (the kernel's port-0 choice skips it, and an
  explicit bind without SO_REUSEPORT by the same user fails), the children can (SO_REUSEPORT,
  same user), and it receives no connection (only listening sockets do).
* :func:`dead_port`: a port where nothing listens, so that connections are refused.  It is
  held (bound, never listening, no SO_REUSEADDR or SO_REUSEPORT) until the test process
  exits: nobody can start listening there meanwhile and answer instead.
* :func:`start_on_a_free_port`: a third-party server that can only be told a port (sshd).
  The port was free a moment ago; if the server then fails to bind it (another process
  took it meanwhile), the start is tried again with a new port, a bounded number of times,
  so a lost race costs a retry, not a failed test.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

__all__ = ["dead_port", "reserved_port", "start_on_a_free_port"]

T = TypeVar("T")

TRIES = 5
"""Starts :func:`start_on_a_free_port` makes before failing the test."""

_HELD: list[socket.socket] = []
"""The sockets that hold the :func:`dead_port` ports, closed when the process exits."""


@contextmanager
def reserved_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 held (bound, not listening, SO_REUSEPORT) until the end of
    the ``with``: SO_REUSEPORT listeners of this user may bind it, nobody else can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@contextmanager
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 with a listener on it until the end of the ``with``: what a
    program told to listen there finds taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


def dead_port() -> int:
    """A TCP port on 127.0.0.1 that refuses connections for the rest of the test session."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    port: int = sock.getsockname()[1]
    return port


def _unused_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (no longer held)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_on_a_free_port(start: Callable[[int], Awaitable[T | None]], what: str) -> T:
    """``start(port)`` with a port that was free a moment ago; ``start`` returns None when
    its server could not bind the port (taken meanwhile), and is then called again with
    another port, up to :data:`TRIES` times."""
    tried = []
    for _ in range(TRIES):
        port = _unused_port()
        started = await start(port)
        if started is not None:
            return started
        tried.append(port)
    pytest.fail(f"{what} could not bind any of the ports {tried}", pytrace=False)
