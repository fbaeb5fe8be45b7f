"""Signals at any moment of a long-running command's life, and listen errors in one line.

``tunnel-lb run``, ``demo`` and ``connector`` must stop cleanly on SIGTERM or SIGINT whenever
it arrives: while Python is still importing, while listeners open, while the demo starts its
stand-ins or prints its banner, while draining.  Two pieces make that true:

* :func:`defer_signals` runs first (``python -m lb`` calls it before importing anything
  else): SIGTERM, SIGINT and SIGHUP only *record* the signal instead of killing the process
  or raising ``KeyboardInterrupt`` in the middle of an import or a ``print``.  Python-level
  handlers are reset by ``exec``, so child processes start with the default dispositions.
* :func:`receive_signals`, started with ``nursery.start`` before anything listens or is
  reported ready, takes over inside trio: a signal recorded earlier is delivered first, then
  every new one.  When it exits, trio puts the recording handler back, so a signal during
  the last cleanup or the final ``print`` is recorded and ignored, never a traceback.

Commands that are not daemons call :func:`restore_default_signals` so that Ctrl-C interrupts
``check`` or ``simulate`` as usual; a daemon command run in-process (a test calling
:func:`lb.cli.main`) gets its caller's handlers back afterwards (:func:`restore_signals`).

:class:`ListenError` is a listener that could not be bound; :func:`listen_error` finds one
inside the exception groups trio wraps it in, so that the command prints
``error: cannot listen on 127.0.0.1:8080: address already in use`` and exits 2.
"""

from __future__ import annotations

# Only ``signal`` at import time: ``python -m lb`` imports this module first, and every
# millisecond spent importing before :func:`defer_signals` is a window for a traceback.
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import FrameType

    import trio

    _Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

__all__ = [
    "STOP_SIGNALS",
    "ListenError",
    "defer_signals",
    "host_port",
    "listen_error",
    "receive_signals",
    "restore_default_signals",
    "restore_signals",
    "take_early",
]

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
"""Signals that stop a daemon gracefully (exit status 0)."""
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_early: list[int] = []
"""Signals received while no trio receiver was installed, oldest first."""


def _record(signum: int, frame: FrameType | None) -> None:
    del frame
    _early.append(signum)


def defer_signals() -> dict[int, _Handler]:
    """Record SIGTERM, SIGINT and SIGHUP until :func:`receive_signals` takes them over.

    Returns the previous handlers, for :func:`restore_signals`; none outside the main thread,
    where Python lets no code set handlers (a command run from a thread keeps the process's).
    """
    if not _main_thread():
        return {}
    return {signum: signal.signal(signum, _record) for signum in _HANDLED}


def _main_thread() -> bool:
    import threading  # here, not at the top: see the import note above

    return threading.current_thread() is threading.main_thread()


def restore_signals(previous: dict[int, _Handler]) -> None:
    """Put back the handlers :func:`defer_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def restore_default_signals() -> None:
    """For commands that are not daemons: default dispositions again (Ctrl-C raises
    ``KeyboardInterrupt``), if :func:`defer_signals` had replaced them.  A signal recorded
    meanwhile is raised again now, so that it is not lost.  Only the main thread may set
    handlers: a command run from another thread (a test, an embedding program) keeps them."""
    if signal.getsignal(signal.SIGINT) is not _record:
        return
    if not _main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in take_early():
        signal.raise_signal(signum)


def take_early() -> list[int]:
    """The signals recorded before a receiver took over (and forget them)."""
    early, _early[:] = list(_early), []
    return early


async def receive_signals(
    on_signal: Callable[[int], Awaitable[None] | None],
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Call ``on_signal(signum)`` for every SIGTERM, SIGINT and SIGHUP until cancelled.

    Use with ``await nursery.start(receive_signals, ...)``: once ``start`` returns the
    receiver exists, and a signal recorded before that has been delivered already.
    ``on_signal`` may be a coroutine function; it runs in this task, one call at a time.
    """
    import trio  # here, not at the top: ``python -m lb`` defers signals before trio loads

    with trio.open_signal_receiver(*_HANDLED) as signals:
        for signum in take_early():
            await _call(on_signal, signum)
        task_status.started()
        async for signum in signals:
            await _call(on_signal, signum)


async def _call(on_signal: Callable[[int], Awaitable[None] | None], signum: int) -> None:
    result = on_signal(signum)
    if result is not None:
        await result


class ListenError(OSError):
    """A listener (proxy or admin) could not be bound."""

    def __init__(self, address: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.address = address
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {_reason(self.cause)}"


def _reason(exc: OSError) -> str:
    import errno
    import os
    import socket

    if isinstance(exc, socket.gaierror):
        text = exc.strerror or str(exc)
    elif exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
    else:
        text = str(exc) or type(exc).__name__
    if exc.errno == errno.EACCES:
        text += " (ports below 1024 need privileges)"
    return text[:1].lower() + text[1:]


def host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(exc: BaseException) -> ListenError | None:
    """The :class:`ListenError` in ``exc`` or in the exception groups around it."""
    if isinstance(exc, ListenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = listen_error(inner)
            if found is not None:
                return found
    return None
