"""The connection watchdog: deadlines are float stores, one loop per proxy enforces them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from lb.config.model import Limits
from lb.proxy import connection, state
from lb.proxy.watchdog import (
    MAX_TICK,
    MIN_TICK,
    PER_CLOCK,
    PER_CONNECTION,
    Watchdog,
    tick,
)


def expire(watchdogs: Iterable[Watchdog], now: float) -> None:
    """The watch loop's deadline check (``connection.watch_clients``) over ``watchdogs``."""
    clients = []
    for watchdog in watchdogs:
        client = state.Client(cast(Any, None), https=False)
        client.watchdog = watchdog
        clients.append(client)
    limits = SimpleNamespace(engine=SimpleNamespace(limits=Limits()))
    shared = SimpleNamespace(
        engine=SimpleNamespace(config=limits), clients=clients, readers={}, blocked_writes=0
    )
    connection.watch_clients(cast(Any, shared), now, 0.0)


def test_the_tick_is_a_twentieth_of_the_shortest_timeout_within_bounds() -> None:
    assert tick(10, 60.0, 100.0) == MAX_TICK
    assert tick(10, 2.0, 100.0) == 0.1
    assert tick(10, 0.01, 100.0) == MIN_TICK


def test_the_tick_grows_with_the_connections_to_check() -> None:
    # Checking one costs ~60 ns: the loop stays a small share of a core however many there are.
    assert tick(100_000, 0.1, 100.0) == 100_000 * PER_CONNECTION == pytest.approx(0.2)
    assert tick(500_000, 60.0, 100.0) == pytest.approx(1.0)


def test_the_tick_grows_with_the_request_bodies_to_judge() -> None:
    # Judging a body's rate clock costs several times a deadline check: counted apart.
    assert PER_CLOCK > 5 * PER_CONNECTION
    assert tick(100_000, 0.1, 100.0, clocks=100_000) == pytest.approx(
        100_000 * (PER_CONNECTION + PER_CLOCK)
    )
    assert tick(10, 60.0, 100.0, clocks=10) == MAX_TICK  # few of them: the timeouts rule


async def test_expire_cancels_only_the_watchdogs_whose_deadline_passed() -> None:
    late, early, off = Watchdog(), Watchdog(), Watchdog()
    late.push(0.0)
    early.push(10.0)
    off.push(math.inf)
    expire([late, early, off], trio.current_time())
    assert late.scope.cancel_called and late.due == math.inf  # not cancelled twice
    assert not early.scope.cancel_called and not off.scope.cancel_called


async def test_a_cancelled_watchdog_reports_that_it_fired() -> None:
    watchdog = Watchdog()
    with watchdog.scope:
        watchdog.push(0.0)
        expire([watchdog], trio.current_time())
        await trio.sleep_forever()
    assert watchdog.fired


async def test_a_pushed_deadline_moves_the_firing_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog()
    start = trio.current_time()
    watchdog.push(5.0)
    watchdog.push(8.0)  # the last push counts, later or earlier
    while not watchdog.scope.cancel_called:
        await trio.sleep(tick(1, 8.0))  # virtual time: the loop proxy.watch_loop runs
        expire([watchdog], trio.current_time())
    fired = trio.current_time() - start
    assert 8.0 <= fired <= 8.0 + tick(1, 8.0)
