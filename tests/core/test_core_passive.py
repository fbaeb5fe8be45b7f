"""Passive health (tunnel-lb extension, Envoy's outlier detection as the model) in the core."""

from __future__ import annotations

import dataclasses
from random import Random

from core_builders import make_config, make_pool, result
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.model import Config, PassiveHealth
from lb.core.attempts import Failure
from lb.core.book import HealthBook
from lb.core.health import Health, HealthEvent
from lb.core.passive import PASSIVE, Ejector, Outcome, cap, outcome_of
from steering.router import Router
from steering.types import Request

H, U = Health.HEALTHY, Health.UNHEALTHY
ON = PassiveHealth(consecutive_5xx=3, consecutive_connect_failure=2, base_ejection_time=10)
OK, E502, E503 = Outcome(200), Outcome(502), Outcome(503)
REFUSED = Outcome(521, connect_failed=True, detail="connect_refused")


def passive_config(n: int = 2, passive: PassiveHealth | None = ON, **pool: object) -> Config:
    cfg = make_config(make_pool("a", n, **pool))
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, passive_health=passive))


def healthy_book(cfg: Config) -> HealthBook:
    hb = HealthBook(cfg)
    for p in cfg.pools:
        for o in p.origins:
            hb.apply(result(p.name, o.name, True, at=0.0))
    return hb


def health(hb: HealthBook, endpoint: str = "a-0") -> Health:
    view = hb.snapshot().pools["a"].endpoint(endpoint)
    assert view is not None
    return view.health


def feed(
    hb: HealthBook, outcomes: list[Outcome], at: float = 1.0, ep: str = "a-0"
) -> list[HealthEvent]:
    events = []
    for o in outcomes:
        events += hb.outcome("a", ep, o, now=at)
    return events


def test_off_by_default_outcomes_never_change_health() -> None:
    hb = healthy_book(make_config(make_pool("a", 2)))
    assert feed(hb, [E502] * 100 + [REFUSED] * 100) == []
    assert health(hb) is H
    assert hb.passive("a", "a-0") is None


def test_consecutive_5xx_eject_with_the_reason_and_traffic_moves_away() -> None:
    hb = healthy_book(passive_config())
    assert feed(hb, [E502, E502]) == []
    events = feed(hb, [E502])
    assert [(e.vantage, e.before, e.after) for e in events] == [(PASSIVE, H, U), ("*", H, U)]
    assert events[1].reason == "passive: 3 consecutive 502"
    assert events[0].reason == "passive: 3 consecutive 502, ejected for 10s"
    assert health(hb) is U
    pool = hb.snapshot().pools["a"]
    assert [e.name for e in pool.selectable] == ["a-1"]
    view = pool.endpoint("a-0")
    assert view is not None and "passive health ejected it" in view.ejected


def test_a_success_or_a_mixed_run_resets_and_mixed_statuses_say_5xx() -> None:
    hb = healthy_book(passive_config())
    assert feed(hb, [E502, E502, OK, E502, E502]) == []
    events = feed(hb, [E503])
    assert events[1].reason == "passive: 3 consecutive 5xx (last 503)"


def test_connect_failures_have_their_own_threshold_and_a_5xx_ends_their_run() -> None:
    hb = healthy_book(passive_config())
    assert feed(hb, [REFUSED, E502, REFUSED]) == []
    events = feed(hb, [REFUSED])
    assert events[1].reason == "passive: 2 consecutive connect failures (connect_refused)"
    assert events[0].status is None


def test_the_monitor_brings_it_back_only_after_the_ejection_time() -> None:
    hb = healthy_book(passive_config())
    feed(hb, [E502] * 3, at=100.0)
    assert hb.apply(result("a", "a-0", True, at=105.0)) == []  # too early: still out
    assert health(hb) is U
    events = hb.apply(result("a", "a-0", True, at=110.0))
    assert [(e.vantage, e.after) for e in events] == [(PASSIVE, H), ("*", H)]
    assert events[1].reason.startswith("passive: ejection of 10.0s over")
    assert health(hb) is H


def test_repeated_ejections_last_longer_up_to_the_maximum_and_decay() -> None:
    config = dataclasses.replace(ON, max_ejection_time=25)
    hb = healthy_book(passive_config(passive=config))
    times = []
    t = 0.0
    for _ in range(4):
        events = feed(hb, [E502] * 3, at=t)
        times.append(events[0].reason.rsplit(" ", 1)[1])
        ejector = hb.passive("a", "a-0")
        assert ejector is not None
        t = ejector.until
        hb.apply(result("a", "a-0", True, at=t))
    assert times == ["10s", "20s", "25s", "25s"]
    # 40 s in rotation (4 x base) forgets all four: the next one is the base time again
    events = feed(hb, [E502] * 3, at=t + 40)
    assert events[0].reason.endswith("ejected for 10s")


def test_failures_while_the_monitor_has_it_down_are_not_counted() -> None:
    """Traffic that still reaches an unhealthy endpoint (a fallback pool, every pool down)
    builds no run: its first failure after recovery does not eject it."""
    hb = healthy_book(passive_config())
    for k in range(10):
        hb.apply(result("a", "a-0", False, at=1.0 + k))
        if health(hb) is U:
            break
    assert health(hb) is U
    assert feed(hb, [E502] * 5, at=20.0) == []
    for k in range(10):
        hb.apply(result("a", "a-0", True, at=30.0 + k))
        if health(hb) is H:
            break
    assert health(hb) is H
    assert feed(hb, [E502, E502], at=50.0) == []  # a fresh run: two of three
    assert feed(hb, [E502], at=51.0)


def test_the_cap_keeps_the_rest_of_the_pool_in() -> None:
    # 4 endpoints, 50 %: two may be out at once; a third waits until one is back
    hb = healthy_book(passive_config(4, dataclasses.replace(ON, max_ejection_percent=50)))
    assert feed(hb, [E502] * 3, ep="a-0") and feed(hb, [E502] * 3, ep="a-1")
    assert feed(hb, [E502] * 3, ep="a-2") == []
    assert health(hb, "a-2") is H
    hb.apply(result("a", "a-0", True, at=20.0))
    assert feed(hb, [E502], at=21.0, ep="a-2")  # the run stood: one more failure ejects


def test_cap_rounds_down_but_ejects_at_least_one() -> None:
    assert [cap(n, 10) for n in (1, 2, 9, 10, 19, 20)] == [1, 1, 1, 1, 1, 2]
    assert cap(3, 100) == 3 and cap(10, 0) == 1 and cap(10, 33.3) == 3


def test_a_pool_override_turns_it_off_or_on() -> None:
    off = passive_config(passive_health=PassiveHealth(enabled=False))
    hb = healthy_book(off)
    assert feed(hb, [E502] * 10) == [] and hb.passive("a", "a-0") is None
    only_pool = passive_config(passive=None, passive_health=ON)
    assert feed(healthy_book(only_pool), [E502] * 3)


def test_a_reload_keeps_an_ejection_and_turning_it_off_releases() -> None:
    hb = healthy_book(passive_config())
    feed(hb, [E502] * 3)
    cfg = hb.config
    hb.reconfigure(dataclasses.replace(cfg, source=("again",)), now=2.0)
    assert health(hb) is U
    events = hb.reconfigure(passive_config(passive=None), now=3.0)
    assert [(e.endpoint, e.after) for e in events] == [("a-0", H)]
    assert health(hb) is H


def test_outcomes_of_attempt_failures() -> None:
    assert outcome_of(None, 503) == Outcome(503)
    refused = outcome_of(Failure.CONNECT_REFUSED, 0)
    assert refused is not None and refused.connect_failed and refused.status == 521
    tls = outcome_of(Failure.TLS_CERTIFICATE, 0)
    assert tls is not None and tls.connect_failed
    broken = outcome_of(Failure.CLOSED_IN_RESPONSE, 0)
    assert broken == Outcome(502, detail="closed_in_response")
    # the idle-close race of a pooled connection and our own configuration are not the endpoint's
    assert outcome_of(Failure.CLOSED_BEFORE_RESPONSE, 0, reused=True) is None
    assert outcome_of(Failure.BAD_CONFIG, 0) is None


outcomes = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from([OK, E502, E503, REFUSED])), max_size=200
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8),
    st.floats(0, 100),
    outcomes,
    st.lists(st.integers(0, 7), max_size=20),
)
def test_never_more_than_the_cap_out_and_no_failures_no_ejection(
    n: int, percent: float, feed_: list[tuple[int, Outcome]], probes: list[int]
) -> None:
    config = dataclasses.replace(ON, max_ejection_percent=percent, base_ejection_time=1)
    hb = healthy_book(passive_config(n, config))
    failed: set[str] = set()
    t = 1.0
    for i, (which, o) in enumerate(feed_):
        ep = f"a-{which % n}"
        if o.failed:
            failed.add(ep)
        hb.outcome("a", ep, o, now=t)
        if probes and i % 7 == 0:
            hb.apply(result("a", f"a-{probes[i % len(probes)] % n}", True, at=t))
        t += 0.5
        out = [e.name for e in hb.snapshot().pools["a"].endpoints if e.health is U]
        assert len(out) <= cap(n, percent)
        assert set(out) <= failed  # an endpoint that never failed is never ejected


@given(st.lists(st.sampled_from([OK, E502, REFUSED]), max_size=50))
def test_an_ejector_without_failures_never_trips(seq: list[Outcome]) -> None:
    ejector = Ejector(ON)
    reasons = [ejector.observe(o) for o in seq if not o.failed]
    assert not any(reasons)


def test_a_retry_after_an_ejection_never_brings_the_ejected_endpoint_back() -> None:
    """The proxy's order: decide, the attempt fails, its outcome ejects the endpoint (a new
    snapshot), then the retry of the first decision, made on the old snapshot.  The retry
    must pick from the new view of the pool, and leave none of the old one behind in the
    new router for later requests (it once did: the ejected endpoint kept its traffic)."""
    hb = healthy_book(passive_config(3))
    rng = Random(1)
    req = Request(host="app.example.com", client_ip="192.0.2.1")
    old = Router(hb.snapshot(), secret=b"s")
    first = old.decide(req, rng)
    while first.endpoint is None or first.endpoint.name != "a-0":
        first = old.decide(req, rng)
    feed(hb, [E502] * 3)
    assert health(hb) is U
    new = Router(hb.snapshot(), secret=b"s")
    retry = new.retry(first, req, rng, status=502, retry_on=True)
    assert retry is not None and retry.endpoint is not None and retry.endpoint.name != "a-0"
    picked = {d.endpoint.name for d in (new.decide(req, rng) for _ in range(200)) if d.endpoint}
    assert picked == {"a-1", "a-2"}
