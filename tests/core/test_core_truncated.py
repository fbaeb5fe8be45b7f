"""``retry_on.buffer_response`` in the attempt policy (lb/core/attempts.py): which responses
are read whole before relaying (:func:`buffer_bound`), and the retry of one cut in its body
(:attr:`Failure.TRUNCATED`, the ``truncated`` condition)."""

from __future__ import annotations

import pytest
from core_builders import step
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.model import RetryOn
from lb.core.attempts import Action, Body, Failure, Retry, Step, buffer_bound

ON = RetryOn(conditions=("reset", "truncated"), statuses=(503,), buffer_response=65536)


def bound(
    rules: RetryOn | None = ON,
    *,
    idempotent: bool = True,
    body: Body = Body.BUFFERED,
    bodiless: bool = False,
    status: int = 200,
    length: int | None = 1000,
    chunked: bool = False,
) -> int:
    return buffer_bound(
        rules,
        idempotent=idempotent,
        body=body,
        bodiless=bodiless,
        status=status,
        length=length,
        chunked=chunked,
    )


def truncated(
    rules: RetryOn | None = ON, *, idempotent: bool = True, retries: tuple[Retry, ...] = ()
) -> Step:
    return step(Failure.TRUNCATED, rules=rules, idempotent=idempotent, retries=retries)


def test_a_known_length_within_the_bound_is_read_whole() -> None:
    assert bound() == 65536
    assert bound(length=65536) == 65536
    assert bound(length=None, chunked=True) == 65536  # read until it ends or passes the bound


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("larger than the bound", {"length": 65537}),
        ("delimited by the close", {"length": None}),
        ("not idempotent", {"idempotent": False}),
        ("request body streamed away", {"body": Body.STREAMED}),
        ("HEAD", {"bodiless": True}),
        ("101 upgrade", {"status": 101}),
        ("1xx", {"status": 103}),
        ("204", {"status": 204}),
        ("304", {"status": 304}),
        ("a status retry_on retries", {"status": 503}),
        ("off by default", {"rules": None}),
        ("retry_on without buffer_response", {"rules": RetryOn(conditions=("reset",))}),
        ("without the truncated condition", {"rules": RetryOn(buffer_response=100)}),
    ],
)
def test_everything_else_is_streamed(why: str, kwargs: dict[str, object]) -> None:
    assert bound(**kwargs) == 0, why  # type: ignore[arg-type]


def test_a_cut_in_a_body_read_whole_is_retried_like_a_reset_before_the_answer() -> None:
    assert truncated() == Step(Action.RETRY, 502, "truncated")
    assert truncated().retry is Retry.RETRY_ON


def test_a_cut_is_answered_502_when_truncated_is_not_named_or_retries_are_spent() -> None:
    assert truncated(None) == Step(Action.ANSWER, 502)
    assert truncated(RetryOn(conditions=("reset",))) == Step(Action.ANSWER, 502)
    assert truncated(retries=(Retry.RETRY_ON,)) == Step(Action.ANSWER, 502, "truncated")
    assert truncated(idempotent=False) == Step(Action.ANSWER, 502)


@settings(max_examples=300)
@given(
    idempotent=st.booleans(),
    body=st.sampled_from(Body),
    bodiless=st.booleans(),
    status=st.integers(100, 599),
    length=st.none() | st.integers(0, 1 << 24),
    chunked=st.booleans(),
    size=st.integers(0, 4 << 20),
)
def test_only_a_response_the_policy_could_retry_is_ever_read_whole(
    idempotent: bool,
    body: Body,
    bodiless: bool,
    status: int,
    length: int | None,
    chunked: bool,
    size: int,
) -> None:
    rules = RetryOn(conditions=("truncated",), statuses=(502,), buffer_response=size)
    got = bound(
        rules,
        idempotent=idempotent,
        body=body,
        bodiless=bodiless,
        status=status,
        length=length,
        chunked=chunked,
    )
    assert got in (0, size)
    if got:
        # never more than the bound in memory, never a body the client would wait for in vain
        assert length is None or length <= size
        assert length is not None or chunked
        assert not bodiless and status >= 200 and status not in (204, 304, 502)
        # and a cut in it is a retry the policy grants
        step = truncated(rules, idempotent=idempotent)
        assert body is not Body.STREAMED and step.action is Action.RETRY
