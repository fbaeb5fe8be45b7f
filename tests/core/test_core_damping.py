"""Flap damping (tunnel-lb extension, RFC 2439's model) in the pure health core."""

from __future__ import annotations

import dataclasses
import random

from core_builders import make_config, make_pool, result
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lb.config.model import FlapDamping
from lb.core.book import DAMPING, HealthBook
from lb.core.damping import Damper, ceiling, decay_bound
from lb.core.health import Health
from steering import Request, Router

H, U = Health.HEALTHY, Health.UNHEALTHY
DAMPING_ON = FlapDamping(penalty=1.0, half_life=60, suppress=2.5, reuse=1.0, max_suppress=300)


def damped_book() -> HealthBook:
    cfg = make_config(make_pool("a", 2))
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, flap_damping=DAMPING_ON))
    return HealthBook(cfg)


def health(hb: HealthBook, endpoint: str = "a-1") -> Health:
    view = hb.snapshot().pools["a"].endpoint(endpoint)
    assert view is not None
    return view.health


def test_off_by_default_every_flip_is_followed() -> None:
    hb = HealthBook(make_config(make_pool("a", 2)))
    for i in range(10):
        hb.apply(result("a", "a-1", i % 2 == 0, at=10.0 * i))
        assert health(hb) is (H if i % 2 == 0 else U)
    assert hb.damping("a", "a-1", 100.0) is None


def test_a_flapping_endpoint_is_suppressed_then_released_after_decay() -> None:
    hb = damped_book()
    events = []
    # unknown -> healthy costs nothing; then down, up, down: penalty 1, ~1.9, ~2.8 > 2.5
    for i, ok in enumerate([True, False, True, False]):
        events += hb.apply(result("a", "a-1", ok, at=10.0 * i))
    damping = [e for e in events if e.vantage == DAMPING]
    assert [(e.at, e.after) for e in damping] == [(30.0, U)]
    assert "above suppress 2.5" in damping[0].reason
    assert health(hb) is U
    # the monitors say healthy again, but the endpoint stays out
    assert [e.vantage for e in hb.apply(result("a", "a-1", True, at=40.0))] == ["local"]
    assert health(hb) is U
    state = hb.damping("a", "a-1", 40.0)
    assert state is not None and state[1]
    # that flip back up counted too (penalty ~3.5 at 40 s); steady passes release the
    # endpoint once 3.5 * 2**(-t/60) < 1, about 108 s after that last flip
    released = []
    for t in range(50, 400, 10):
        released += [(t, e) for e in hb.apply(result("a", "a-1", True, at=float(t)))]
        if released:
            break
    at, _ = released[0]
    assert 140 <= at <= 160
    assert [(e.vantage, e.after) for _, e in released] == [(DAMPING, H), ("*", H)]
    assert "below reuse 1" in released[1][1].reason
    assert health(hb) is H


def test_reload_keeps_the_penalty_and_turning_damping_off_releases() -> None:
    hb = damped_book()
    for i, ok in enumerate([True, False, True, False, True]):
        hb.apply(result("a", "a-1", ok, at=float(i)))
    assert health(hb) is U
    cfg = hb.config
    same = dataclasses.replace(
        cfg, engine=dataclasses.replace(cfg.engine, dynamic_latency_alpha=0.5)
    )
    hb.reconfigure(same, now=5.0)
    assert health(hb) is U
    off = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, flap_damping=None))
    events = hb.reconfigure(off, now=6.0)
    assert [(e.vantage, e.after) for e in events] == [("*", H)]
    assert health(hb) is H


@settings(max_examples=200, deadline=None)
@given(
    flips=st.lists(st.floats(min_value=0.01, max_value=500), min_size=1, max_size=60),
    config=st.builds(
        FlapDamping,
        penalty=st.floats(min_value=0.1, max_value=10),
        half_life=st.floats(min_value=1, max_value=600),
        suppress=st.floats(min_value=1.1, max_value=20),
        reuse=st.floats(min_value=0.1, max_value=1.0),
        max_suppress=st.floats(min_value=1, max_value=3600),
    ),
    after=st.floats(min_value=0.0, max_value=1e5),
)
def test_never_suppresses_an_endpoint_stable_longer_than_the_decay_bound(
    flips: list[float], config: FlapDamping, after: float
) -> None:
    assume(config.max_suppress <= 64 * config.half_life)  # the configuration check's bound
    damper = Damper(config)
    now = 0.0
    for gap in flips:
        now += gap
        damper.flap(now)
        assert damper.penalty <= ceiling(config) * (1 + 1e-9)
    stable = now + decay_bound(config) * (1 + 1e-9) + 1e-6 + after
    damper.release(stable)
    assert not damper.suppressed


def test_explain_says_flap_damping_holds_the_endpoint_out() -> None:
    hb = damped_book()
    hb.apply(result("a", "a-0", True, at=0.0))
    for i, ok in enumerate([True, False, True, False, True]):
        hb.apply(result("a", "a-1", ok, at=10.0 * i))
    router = Router(hb.snapshot(), secret=b"s")
    decision = router.decide(
        Request(host="app.example.com", now=45.0), random.Random(1), trace=True
    )
    assert decision.endpoint is not None and decision.endpoint.name == "a-0"
    assert "endpoint a/a-1: flap damping holds it out until its penalty decays below 1" in (
        decision.trace or []
    )
