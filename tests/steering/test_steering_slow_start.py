"""slow_start (tunnel-lb extension, off by default): a recovered endpoint or pool ramps its
weight linearly from RAMP_FLOOR to full, for random and least-requests steering."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from builders import config, endpoint, load_balancer, mark, pool, request
from hypothesis import given
from hypothesis import strategies as st

from lb.config.model import Config
from lb.core.book import HealthBook
from lb.core.health import ProbeResult
from steering import Live, Router
from steering.pick import RAMP_FLOOR, ramp

SECRET = b"test-secret"


def probe(hb: HealthBook, key: str, ok: bool, at: float) -> None:
    p, e = key.split("/")
    hb.apply(ProbeResult(pool=p, endpoint=e, vantage="local", at=at, ok=ok))


def shares(hb: HealthBook, now: float, n: int = 4000, live: Live | None = None) -> Counter[str]:
    router = Router(hb.snapshot(), secret=SECRET)
    rng = random.Random(7)
    got: Counter[str] = Counter()
    for _ in range(n):
        d = router.decide(request(now=now), rng, live or Live())
        assert d.endpoint is not None
        got[d.endpoint.key] += 1
    return got


def recovered_book(cfg: Config) -> HealthBook:
    """``a/a-1`` healthy at 0, down at 10, healthy again at 20."""
    hb = mark(HealthBook(cfg))
    probe(hb, "a/a-1", False, 10.0)
    probe(hb, "a/a-1", True, 20.0)
    return hb


@pytest.mark.parametrize("policy", ["random", "least_outstanding_requests"])
def test_a_recovered_endpoint_ramps_linearly_to_its_full_share(policy: str) -> None:
    cfg = config([pool("a", 2, policy=policy, slow_start=100)], load_balancer(["a"]))
    hb = recovered_book(cfg)
    assert hb.snapshot().pools["a"].endpoint("a-1").ramp == (20.0, 100.0)  # type: ignore[union-attr]
    for elapsed in (0, 50, 100):
        factor = RAMP_FLOOR + (1 - RAMP_FLOOR) * min(elapsed, 100) / 100
        share = shares(hb, 20.0 + elapsed)["a/a-1"] / 4000
        assert share == pytest.approx(factor / (1 + factor), abs=0.03), elapsed
    # the first probe after the ramp drops it from the snapshot (the fast path is back)
    probe(hb, "a/a-0", True, 130.0)
    assert hb.snapshot().pools["a"].endpoint("a-1").ramp is None  # type: ignore[union-attr]
    assert not hb.snapshot().pools["a"].ramping


def test_off_by_default_and_start_up_is_not_a_recovery() -> None:
    cfg = config([pool("a", 2)], load_balancer(["a"]))
    hb = recovered_book(cfg)
    assert not hb.snapshot().pools["a"].ramping
    assert shares(hb, 21.0)["a/a-1"] / 4000 == pytest.approx(0.5, abs=0.03)
    cfg = config([pool("a", 2, slow_start=100)], load_balancer(["a"]))
    assert not mark(HealthBook(cfg)).snapshot().pools["a"].ramping


def test_an_endpoint_setting_overrides_the_pool() -> None:
    p = pool("a", [endpoint("a-0"), endpoint("a-1", slow_start=0)], slow_start=100)
    assert not recovered_book(config([p], load_balancer(["a"]))).snapshot().pools["a"].ramping
    p = pool("a", [endpoint("a-0"), endpoint("a-1", slow_start=50)])
    view = recovered_book(config([p], load_balancer(["a"]))).snapshot().pools["a"]
    assert view.ramping and view.endpoint("a-1").ramp == (20.0, 50.0)  # type: ignore[union-attr]


def test_failing_back_to_the_primary_pool_ramps() -> None:
    """Failover order [primary, backup]: the primary recovers and gets a growing share."""
    cfg = config(
        [pool("primary", 1, slow_start=100), pool("backup", 1)],
        load_balancer(["primary", "backup"]),
    )
    hb = mark(HealthBook(cfg))
    probe(hb, "primary/primary-0", False, 10.0)
    assert shares(hb, 15.0)["backup/backup-0"] == 4000
    probe(hb, "primary/primary-0", True, 20.0)
    for elapsed in (0, 50, 100):
        factor = RAMP_FLOOR + (1 - RAMP_FLOOR) * min(elapsed, 100) / 100
        share = shares(hb, 20.0 + elapsed)["primary/primary-0"] / 4000
        assert share == pytest.approx(factor, abs=0.03), elapsed


@given(
    now=st.floats(min_value=-1e6, max_value=1e6),
    since=st.floats(min_value=-1e6, max_value=1e6),
    duration=st.floats(min_value=0, max_value=1e5),
    later=st.floats(min_value=0, max_value=1e5),
)
def test_slow_start_never_gives_more_than_full_weight(
    now: float, since: float, duration: float, later: float
) -> None:
    factor = ramp(now, since, duration)
    assert RAMP_FLOOR <= factor <= 1.0
    assert ramp(now + later, since, duration) >= factor  # it only ever grows


def test_explain_shows_the_ramp() -> None:
    cfg = config([pool("a", 2, slow_start=100)], load_balancer(["a"]))
    router = Router(recovered_book(cfg).snapshot(), secret=SECRET)
    d = router.decide(request(now=70.0), random.Random(1), trace=True)
    assert "endpoint a/a-1: slow start, at 55% of its weight" in (d.trace or [])


def test_a_pool_outage_between_two_snapshots_still_ramps() -> None:
    cfg = config(
        [pool("primary", 1, slow_start=100), pool("backup", 1)],
        load_balancer(["primary", "backup"]),
    )
    hb = mark(HealthBook(cfg))
    hb.snapshot()
    probe(hb, "primary/primary-0", False, 10.0)
    probe(hb, "primary/primary-0", True, 20.0)  # no snapshot was taken while it was down
    assert hb.snapshot().pools["primary"].ramp == (20.0, 100.0)
    assert hb.snapshot().pools["backup"].ramp is None
