"""Waiting in tests: for an event when there is one, else through :func:`wait_until`.

A test that sleeps "long enough" is slow on a fast machine and flaky on a loaded one. So a
test waits for the event itself: a ``trio.Event`` set by the code it drives, a ``started``
value from ``nursery.start``, a readiness line.  Some state has no event to wait on: another
process's HTTP API or log file, a counter that another task updates, a port an external
program opens.  Those are polled, always through this one helper, so every such wait is
bounded, steps briefly and fails saying what it waited for.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

__all__ = ["wait_until"]

T = TypeVar("T")


async def wait_until(
    check: Callable[[], T | Awaitable[T]],
    seconds: float = 10.0,
    *,
    what: str | Callable[[], str] | None = None,
    step: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` (sync or async) every ``step`` seconds until it returns something
    truthy, and return that; fail the test after ``seconds``.

    ``what`` names the wait in the failure (a callable is asked only then, e.g. for the
    last log lines); by default the failure names where ``check`` is defined.  Exceptions in
    ``ignore`` count as "not yet" (say ``OSError`` while a server is still starting)."""
    last: object = None
    with trio.move_on_after(seconds):
        while True:
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
            except ignore as exc:
                last = exc
            else:
                if value:
                    return value
                last = value
            await trio.sleep(step)
    if what is None:
        code = getattr(check, "__code__", None)
        where = f"{Path(code.co_filename).name}:{code.co_firstlineno}" if code else repr(check)
        what = f"the condition at {where}"
    described = what() if callable(what) else what
    pytest.fail(f"timed out after {seconds:g}s waiting for {described} (last: {last!r})")
