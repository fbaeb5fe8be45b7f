"""``retry_on`` (issue 14): off by default, per load balancer with a per-pool override,
checked on load with one-line errors."""

from __future__ import annotations

from config_helpers import BASE, errors, load

LB = "  - {name: app.example.com, proxied: true, default_pools: [a, b], fallback_pool: b"


def with_lb(extra: str) -> str:
    """BASE with ``extra`` keys on its load balancer (line 7)."""
    return BASE.replace(LB, LB + ", " + extra)


def test_retry_on_is_off_by_default() -> None:
    config = load(BASE).config
    assert config.load_balancers[0].retry_on is None
    assert all(p.retry_on is None for p in config.pools)


def test_retry_on_loads_with_defaults_and_a_pool_override() -> None:
    config = load(with_lb("retry_on: {}")).config
    rules = config.load_balancers[0].retry_on
    assert rules is not None
    assert (rules.conditions, rules.statuses, rules.num_retries) == (("reset",), (), 1)
    assert (rules.budget_percent, rules.min_retry_concurrency) == (20.0, 3)
    text = BASE.replace(
        "origins: [{name: o1, address: 10.0.0.1}]",
        "origins: [{name: o1, address: 10.0.0.1}], "
        "retry_on: {conditions: [reset, empty_response], statuses: [502, 503], num_retries: 2}",
    )
    pool = load(text).config.pool("a")
    assert pool.retry_on is not None
    assert pool.retry_on.statuses == (502, 503) and pool.retry_on.num_retries == 2


def test_bad_retry_on_values_are_one_line_errors() -> None:
    assert errors(with_lb("retry_on: {statuses: [500]}")) == [
        "lb.yaml:7: load_balancers[0].retry_on.statuses[0]: must be between 502 and 504, got 500"
    ]
    (only,) = errors(with_lb("retry_on: {conditions: [timeout]}"))
    assert only.startswith("lb.yaml:7: load_balancers[0].retry_on.conditions[0]: must be one of")
    (only,) = errors(with_lb("retry_on: {num_retries: 9}"))
    assert "load_balancers[0].retry_on.num_retries" in only and "\n" not in only
    (only,) = errors(with_lb("retry_on: {budget_percent: 150}"))
    assert "load_balancers[0].retry_on.budget_percent" in only


def test_a_retry_on_that_retries_nothing_or_twice_is_an_error() -> None:
    assert errors(with_lb("retry_on: {conditions: []}")) == [
        "lb.yaml:7: load_balancers[0].retry_on: retries nothing: set conditions or statuses, "
        "or remove retry_on"
    ]
    assert errors(with_lb("retry_on: {statuses: [502, 502]}")) == [
        "lb.yaml:7: load_balancers[0].retry_on.statuses[1]: 502 is listed twice"
    ]


def test_buffer_response_is_off_by_default_and_goes_with_truncated() -> None:
    rules = load(with_lb("retry_on: {}")).config.load_balancers[0].retry_on
    assert rules is not None and rules.buffer_response == 0
    text = with_lb("retry_on: {conditions: [reset, truncated], buffer_response: 262144}")
    rules = load(text).config.load_balancers[0].retry_on
    assert rules is not None and rules.buffer_response == 262144
    assert errors(with_lb("retry_on: {conditions: [truncated]}")) == [
        "lb.yaml:7: load_balancers[0].retry_on.conditions: truncated needs buffer_response "
        "(bytes): a streamed response cannot be retried"
    ]
    assert errors(with_lb("retry_on: {buffer_response: 1000}")) == [
        "lb.yaml:7: load_balancers[0].retry_on.buffer_response: buffer_response retries "
        "nothing without truncated in conditions"
    ]
    first = errors(with_lb("retry_on: {conditions: [truncated], buffer_response: 99999999}"))[0]
    assert "load_balancers[0].retry_on.buffer_response: must be between 0 and" in first
