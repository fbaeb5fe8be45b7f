"""The attempt policy, row by row of its table (docs/proxy.md, "Retries")."""

from __future__ import annotations

import pytest

from lb.core.attempts import Action, Body, Failure, Retry, Step, next_step, status_of

CODES = frozenset({521, 522, 523})
F = Failure


def step(
    failure: Failure,
    *,
    reused: bool = False,
    body: Body = Body.BUFFERED,
    sent: bool = True,
    replayable: bool = False,
    retries: tuple[Retry, ...] = (),
    codes: frozenset[int] = CODES,
) -> Step:
    return next_step(
        failure,
        reused=reused,
        body=body,
        sent=sent,
        replayable=replayable,
        retries=retries,
        failover_codes=codes,
    )


@pytest.mark.parametrize(
    ("failure", "status"),
    [(F.CONNECT_REFUSED, 521), (F.CONNECT_TIMEOUT, 522), (F.UNREACHABLE, 523)],
)
def test_a_failed_connection_fails_over_once_whatever_the_request(
    failure: Failure, status: int
) -> None:
    for body in Body:
        assert step(failure, body=body) == Step(Action.FAILOVER, status)
    assert step(failure, retries=(Retry.STALE,)) == Step(Action.FAILOVER, status)
    assert step(failure, retries=(Retry.FAILOVER,)) == Step(Action.ANSWER, status)


def test_tls_failures_fail_over_only_when_their_code_is_a_failover_code() -> None:
    assert step(F.TLS_HANDSHAKE) == Step(Action.ANSWER, 525)
    assert step(F.TLS_CERTIFICATE) == Step(Action.ANSWER, 526)
    assert step(F.TLS_HANDSHAKE, codes=CODES | {525}) == Step(Action.FAILOVER, 525)
    assert step(F.CONNECT_REFUSED, codes=frozenset({522})) == Step(Action.ANSWER, 521)


@pytest.mark.parametrize(
    ("body", "sent", "replayable", "action"),
    [
        (Body.BUFFERED, True, False, Action.FRESH),  # a POST with its body in hand
        (Body.BUFFERED, False, False, Action.FRESH),
        (Body.UNTOUCHED, True, True, Action.FRESH),  # a PUT whose body waits at the client
        (Body.UNTOUCHED, False, False, Action.FRESH),  # nothing written at all
        (Body.UNTOUCHED, True, False, Action.ANSWER),  # a POST head went out, body unread
        (Body.STREAMED, True, True, Action.ANSWER),  # body bytes are gone
        (Body.STREAMED, False, True, Action.ANSWER),
    ],
)
def test_a_reused_connection_closed_before_any_response_byte(
    body: Body, sent: bool, replayable: bool, action: Action
) -> None:
    got = step(F.CLOSED_BEFORE_RESPONSE, reused=True, body=body, sent=sent, replayable=replayable)
    assert got == Step(action, 502)
    assert got.retry is (Retry.STALE if action is Action.FRESH else None)


def test_the_stale_retry_needs_a_reused_connection_and_comes_first() -> None:
    assert step(F.CLOSED_BEFORE_RESPONSE).action is Action.ANSWER  # a fresh connection
    for retries in [(Retry.STALE,), (Retry.FAILOVER,)]:
        got = step(F.CLOSED_BEFORE_RESPONSE, reused=True, retries=retries)
        assert got.action is Action.ANSWER


@pytest.mark.parametrize(
    "failure", [F.CLOSED_IN_RESPONSE, F.PROTOCOL, F.BAD_CONFIG, F.RESPONSE_TIMEOUT]
)
def test_everything_else_is_answered(failure: Failure) -> None:
    got = step(failure, reused=True, replayable=True, sent=False)
    assert got == Step(Action.ANSWER, status_of(failure))
    assert got.retry is None


def test_every_failure_has_a_status() -> None:
    # a STATUS is an endpoint's own answer: its status is the response's (``answered``)
    fixed = set(Failure) - {Failure.STATUS}
    assert {status_of(f) for f in fixed} <= {502, 521, 522, 523, 524, 525, 526}
