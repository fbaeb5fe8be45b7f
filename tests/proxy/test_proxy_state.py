"""The request lifecycle's state machine (lb/proxy/state.py): one table, illegal moves refused.

The proxy's own tests drive every legal path through real sockets (an illegal move there
would end the connection with a logged warning and fail them); these check the table itself.
"""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import trio

from lb.proxy.state import RESPONDED, TRANSITIONS, Exchange, LifecycleError, Move, Phase
from lb.proxy.watchdog import Watchdog


def _exchange(watchdog: Watchdog) -> Exchange:
    none = cast(Any, None)
    return Exchange(
        shared=none,
        client=none,
        config=none,
        stream=none,
        conn=none,
        event=none,
        facts=none,
        record=none,
        watchdog=watchdog,
        started=0.0,
        tasks=None,
        peer="127.0.0.1",
        https=False,
        trusted=False,
        client_ip="127.0.0.1",
        request_id=b"r",
        target=b"/",
    )


def test_every_phase_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for moves in TRANSITIONS.values():
        assert set(moves) <= set(Move)


def test_no_way_back_once_the_response_started() -> None:
    # No new attempt (CONNECT, UPSTREAM before a response) and no second answer.
    for phase in RESPONDED:
        assert set(TRANSITIONS[phase].values()) <= RESPONDED, phase
        assert Move.RESPOND not in TRANSITIONS[phase], phase
    assert TRANSITIONS[Phase.WEBSOCKET] == {}


def test_an_upgrade_comes_only_from_the_wait_for_the_response_head() -> None:
    sources = {p for p, moves in TRANSITIONS.items() if Move.UPGRADE in moves}
    assert sources == {Phase.UPSTREAM}


async def test_a_request_walks_the_table_and_moves_its_deadline() -> None:
    watchdog = Watchdog()  # never entered: only its deadline is read
    ex = _exchange(watchdog)
    assert ex.phase is Phase.NEW and not ex.responded
    seen: list[tuple[Phase, float, bool]] = []
    for move, seconds in [
        (Move.CLIENT, 5.0),
        (Move.DIAL, math.inf),
        (Move.UPSTREAM, 7.0),
        (Move.RESPOND, None),  # no seconds: the deadline stays
        (Move.CLIENT, 1.0),
        (Move.UPSTREAM, 2.0),
    ]:
        ex.advance(move, seconds)
        left = watchdog.due - trio.current_time()
        seen.append((ex.phase, math.inf if left == math.inf else round(left), ex.responded))
    assert seen == [
        (Phase.BODY, 5, False),
        (Phase.CONNECT, math.inf, False),
        (Phase.UPSTREAM, 7, False),
        (Phase.RELAY, 7, True),
        (Phase.SEND, 1, True),
        (Phase.RELAY, 2, True),
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((Move.CLIENT, Move.RESPOND), Move.DIAL),  # a new attempt after an answer
        ((Move.UPSTREAM, Move.RESPOND), Move.RESPOND),  # a second answer
        ((Move.UPSTREAM, Move.UPGRADE), Move.CLIENT),  # HTTP after the splice
        ((Move.CLIENT,), Move.UPGRADE),  # a splice without an upstream answer
    ],
)
def test_illegal_moves_raise(path: tuple[Move, ...], illegal: Move) -> None:
    ex = _exchange(Watchdog())
    for move in path:
        ex.advance(move)
    before = ex.phase
    with pytest.raises(LifecycleError, match=f"{illegal} is not a move from {before}"):
        ex.advance(illegal)
    assert ex.phase is before
