"""The ``retry_on`` part of the attempt policy, and the retry budget (lb/core/attempts.py,
lb/core/budget.py): a table, then properties over random requests and failures."""

from __future__ import annotations

from typing import Any

import core_builders
import pytest
from core_builders import FAILOVER_CODES as CODES
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.model import LoadBalancer, Pool, RetryOn
from lb.core.attempts import Action, Body, Failure, Retry, Step, next_step, retry_on_for
from lb.core.budget import RetryBudget, budget_cap

F = Failure
ALL = RetryOn(conditions=("reset", "empty_response"), statuses=(502, 503), num_retries=2)


def step(failure: Failure, *, rules: RetryOn | None = ALL, **kw: Any) -> Step:
    return core_builders.step(failure, rules=rules, **kw)


def test_without_retry_on_nothing_changes() -> None:
    # Cloudflare-exact: a reset on a fresh connection and a 502 answer are the answer.
    assert step(F.CLOSED_BEFORE_RESPONSE, rules=None) == Step(Action.ANSWER, 502)
    assert step(F.CLOSED_IN_RESPONSE, rules=None) == Step(Action.ANSWER, 502)
    assert step(F.STATUS, rules=None, answered=503) == Step(Action.ANSWER, 503)


@pytest.mark.parametrize(
    ("failure", "answered", "reason"),
    [
        (F.CLOSED_BEFORE_RESPONSE, 0, "reset"),
        (F.CLOSED_IN_RESPONSE, 0, "empty_response"),
        (F.STATUS, 502, "502"),
        (F.STATUS, 503, "503"),
    ],
)
def test_each_named_condition_is_retried(failure: Failure, answered: int, reason: str) -> None:
    status = answered or 502
    assert step(failure, answered=answered) == Step(Action.RETRY, status, reason)
    assert step(failure, answered=answered).retry is Retry.RETRY_ON


def test_conditions_not_named_are_answered() -> None:
    only_reset = RetryOn(conditions=("reset",))
    assert step(F.CLOSED_IN_RESPONSE, rules=only_reset) == Step(Action.ANSWER, 502)
    assert step(F.STATUS, rules=only_reset, answered=502) == Step(Action.ANSWER, 502)
    assert step(F.STATUS, answered=504) == Step(Action.ANSWER, 504)  # not in ALL.statuses
    # never retried, whatever retry_on says: a timeout, a protocol error, a bad config
    for failure in (F.RESPONSE_TIMEOUT, F.PROTOCOL, F.BAD_CONFIG):
        assert step(failure).action is Action.ANSWER


def test_cloudflare_retries_come_first_and_are_unchanged() -> None:
    # R42: a failed connection fails over once, outside retry_on and its budget
    assert step(F.CONNECT_REFUSED) == Step(Action.FAILOVER, 521)
    # a stale pooled connection is retried fresh first, not counted as a retry_on retry
    assert step(F.CLOSED_BEFORE_RESPONSE, reused=True) == Step(Action.FRESH, 502)
    # and a failover's second failure is not turned into a retry_on retry
    assert step(F.CONNECT_REFUSED, retries=(Retry.FAILOVER,)) == Step(Action.ANSWER, 521)


def test_only_idempotent_requests_whose_body_can_be_sent_again() -> None:
    assert step(F.CLOSED_BEFORE_RESPONSE, idempotent=False).action is Action.ANSWER
    assert step(F.CLOSED_BEFORE_RESPONSE, body=Body.STREAMED).action is Action.ANSWER
    assert step(F.CLOSED_BEFORE_RESPONSE, body=Body.UNTOUCHED).action is Action.RETRY
    assert step(F.STATUS, answered=502, body=Body.STREAMED).action is Action.ANSWER


def test_num_retries_bounds_the_retries() -> None:
    once = RetryOn(conditions=("reset",), num_retries=1)
    assert step(F.CLOSED_BEFORE_RESPONSE, rules=once, retries=(Retry.RETRY_ON,)) == Step(
        Action.ANSWER, 502, "reset"
    )
    two = (Retry.RETRY_ON,)
    assert step(F.CLOSED_BEFORE_RESPONSE, retries=two).action is Action.RETRY
    assert step(F.CLOSED_BEFORE_RESPONSE, retries=two * 2).action is Action.ANSWER
    # Cloudflare's own retries do not use up retry_on's
    assert step(F.CLOSED_BEFORE_RESPONSE, retries=(Retry.STALE,)).action is Action.RETRY


def test_the_budget_refuses_a_first_retry_and_says_so() -> None:
    budget = RetryBudget()
    rules = RetryOn(conditions=("reset",), budget_percent=50, min_retry_concurrency=1)
    for _ in range(4):
        budget.started()
    budget.retrying_now()
    budget.retrying_now()  # 2 of 4 retrying: 50 % spent
    refused = step(F.CLOSED_BEFORE_RESPONSE, rules=rules, budget=budget)
    assert refused == Step(Action.ANSWER, 502, "reset", refused=True)
    # a request already retrying holds its place: its second retry is not refused
    again = RetryOn(conditions=("reset",), num_retries=2, budget_percent=50)
    later = step(F.CLOSED_BEFORE_RESPONSE, rules=again, budget=budget, retries=(Retry.RETRY_ON,))
    assert later == Step(Action.RETRY, 502, "reset")
    budget.finished(retried=True)
    # 1 of 3 retrying, the cap is max(1, 1): still spent; one more request makes room
    assert step(F.CLOSED_BEFORE_RESPONSE, rules=rules, budget=budget).refused
    budget.started()
    assert step(F.CLOSED_BEFORE_RESPONSE, rules=rules, budget=budget) == Step(
        Action.RETRY, 502, "reset", budget=True
    )


def test_min_retry_concurrency_allows_retries_at_low_traffic() -> None:
    assert budget_cap(1, 20, 3) == 3
    assert budget_cap(100, 20, 3) == 20
    assert budget_cap(100, 0, 0) == 0
    budget = RetryBudget()
    budget.started()
    rules = RetryOn(conditions=("reset",), budget_percent=0, min_retry_concurrency=0)
    assert step(F.CLOSED_BEFORE_RESPONSE, rules=rules, budget=budget).refused


def test_a_pool_retry_on_overrides_the_load_balancers() -> None:
    lb_rules, pool_rules = RetryOn(conditions=("reset",)), RetryOn(statuses=(503,))
    lb = LoadBalancer(name="a.example", default_pools=("p",), fallback_pool="p")
    pool = Pool(name="p", origins=())
    assert retry_on_for(lb, pool) is None
    with_lb = LoadBalancer(
        name="a.example", default_pools=("p",), fallback_pool="p", retry_on=lb_rules
    )
    assert retry_on_for(with_lb, pool) is lb_rules
    assert retry_on_for(with_lb, Pool(name="p", origins=(), retry_on=pool_rules)) is pool_rules
    assert retry_on_for(None, None) is None


# ---------------------------------------------------------------------------- properties

failures = st.sampled_from(list(Failure))
bodies = st.sampled_from(list(Body))
rules = st.builds(
    RetryOn,
    conditions=st.sets(st.sampled_from(["reset", "empty_response"])).map(tuple),
    statuses=st.sets(st.sampled_from([502, 503, 504])).map(tuple),
    num_retries=st.integers(1, 3),
    budget_percent=st.floats(0, 100),
    min_retry_concurrency=st.integers(0, 5),
)


@settings(max_examples=400)
@given(
    failure=failures,
    body=bodies,
    reused=st.booleans(),
    sent=st.booleans(),
    idempotent=st.booleans(),
    replayable=st.booleans(),
    retries=st.lists(st.sampled_from(list(Retry)), max_size=4),
    rules=st.none() | rules,
    answered=st.sampled_from([0, 200, 502, 503, 504]),
)
def test_never_a_retry_on_retry_of_a_request_that_cannot_be_sent_again(
    failure: Failure,
    body: Body,
    reused: bool,
    sent: bool,
    idempotent: bool,
    replayable: bool,
    retries: list[Retry],
    rules: RetryOn | None,
    answered: int,
) -> None:
    if failure is Failure.STATUS and not answered:
        answered = 502
    got = next_step(
        failure,
        reused=reused,
        body=body,
        sent=sent,
        replayable=replayable,
        retries=retries,
        failover_codes=CODES,
        idempotent=idempotent,
        retry_on=rules,
        answered=answered,
    )
    if got.action is Action.RETRY:
        assert rules is not None
        assert idempotent and body is not Body.STREAMED
        assert retries.count(Retry.RETRY_ON) < rules.num_retries
        assert got.reason in {*rules.conditions, *map(str, rules.statuses)}
    if rules is None:
        assert got.action is not Action.RETRY and not got.refused
    if failure is Failure.STATUS and got.action is not Action.RETRY:
        assert got.status == answered  # refused or not named: the endpoint's own answer


@settings(max_examples=300)
@given(
    rules=rules,
    events=st.lists(st.sampled_from(["start", "fail", "finish"]), max_size=200),
)
def test_the_budget_is_never_exceeded(rules: RetryOn, events: list[str]) -> None:
    """Requests start, fail (and ask for a retry) and finish in any order: a retry is granted
    only when it keeps the requests retrying within the cap of that moment."""
    budget = RetryBudget()
    flying: list[list[Retry]] = []  # the retries of each request in flight
    for i, event in enumerate(events):
        if event == "start":
            budget.started()
            flying.append([])
        elif event == "fail" and flying:
            retries = flying[i % len(flying)]
            before = budget.retrying
            got = next_step(
                Failure.CLOSED_BEFORE_RESPONSE,
                reused=False,
                body=Body.BUFFERED,
                sent=True,
                replayable=True,
                retries=retries,
                failover_codes=CODES,
                idempotent=True,
                retry_on=RetryOn(
                    conditions=("reset",),
                    num_retries=rules.num_retries,
                    budget_percent=rules.budget_percent,
                    min_retry_concurrency=rules.min_retry_concurrency,
                ),
                budget=budget,
            )
            cap = budget_cap(budget.active, rules.budget_percent, rules.min_retry_concurrency)
            if got.budget:
                budget.retrying_now()
                assert budget.retrying <= cap
            else:
                assert budget.retrying == before
            if got.action is Action.RETRY:
                retries.append(Retry.RETRY_ON)
            assert got.refused == (
                got.action is Action.ANSWER
                and not retries
                and budget.retrying >= cap
                and rules.num_retries > 0
            )
        elif event == "finish" and flying:
            retries = flying.pop(i % len(flying))
            budget.finished(Retry.RETRY_ON in retries)
        assert 0 <= budget.retrying <= budget.active
