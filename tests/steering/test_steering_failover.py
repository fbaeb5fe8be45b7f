"""Zero-downtime failover: the single retry (R42-R45; open questions 1 and 20)."""

from __future__ import annotations

import random

import pytest
from builders import (
    HOST,
    SECRET,
    book,
    config,
    endpoint,
    load_balancer,
    pool,
    remembering,
    request,
    router,
    tunnel,
)

from lb.config.model import AdaptiveRouting, LocalPreference, SessionAffinityAttributes
from steering import Affinity, Router
from steering.affinity import sign, verify

WALL = 1_700_000_000.0


def first_and_retry(r: Router, status: int = 522, seed: int = 1, **req_kw):
    q = request(**req_kw)
    first = r.decide(q, random.Random(seed), trace=True)
    return first, r.retry(first, q, random.Random(seed + 1), status=status)


# --------------------------------------------------------------------------- R42


@pytest.mark.parametrize("status", [521, 522, 523])
def test_r42_retry_once_on_another_healthy_endpoint_of_the_same_pool(status: int) -> None:
    r = router(config([pool("a", 3), pool("b", 1)], load_balancer(["a", "b"])), down={"a/a-2"})
    for seed in range(30):
        first, again = first_and_retry(r, status, seed)
        assert again is not None
        assert again.pool.name == "a"  # same pool
        assert again.endpoint.name not in {first.endpoint.name, "a-2"}  # other and healthy
        assert (again.reason, again.tried) == ("retry", (first.endpoint.key,))
        assert any("(zero-downtime failover)" in line for line in again.trace)  # R42
        # exactly once: the retry itself is never retried
        assert r.retry(again, request(), random.Random(0), status=status) is None


@pytest.mark.parametrize("status", [200, 404, 500, 502, 503, 504, 520, 524, 525, 526, 530])
def test_r42_other_outcomes_are_returned_as_is(status: int) -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"])))
    assert first_and_retry(r, status)[1] is None


def test_r42_q1_failover_codes_are_configurable() -> None:
    cfg = config(
        [pool("a", 3)], load_balancer(["a"]), zero_downtime_failover_codes=(521, 522, 523, 525, 526)
    )
    r = router(cfg)
    assert first_and_retry(r, 525)[1] is not None
    assert first_and_retry(r, 526)[1] is not None
    assert first_and_retry(r, 500)[1] is None


def test_r42_no_healthy_alternate_no_retry() -> None:
    r = router(config([pool("a", 2), pool("b", 1)], load_balancer(["a", "b"])), down={"a/a-1"})
    first, again = first_and_retry(r)
    assert first.endpoint.name == "a-0" and again is None


def test_r42_retry_with_local_preference_may_leave_the_local_set() -> None:
    cfg = config(
        [pool("a", [endpoint("fra"), endpoint("iad")])],
        load_balancer(["a"]),
        tunnels=[tunnel("fra", "FRA"), tunnel("iad", "IAD")],
        local_preference=LocalPreference(enabled=True),
    )
    first, again = first_and_retry(router(cfg), datacenter="FRA")
    assert first.endpoint.name == "fra"
    assert again is not None and again.endpoint.name == "iad"


def test_r42_q20_zero_downtime_failover_applies_without_affinity() -> None:
    lb = load_balancer(["a"])
    assert lb.affinity == "none"
    assert first_and_retry(router(config([pool("a", 2)], lb)))[1] is not None


# --------------------------------------------------------------------------- R43


def test_r43_failover_across_pools_goes_to_the_next_eligible_pool() -> None:
    lb = load_balancer(
        ["a", "b", "c"], adaptive_routing=AdaptiveRouting(failover_across_pools=True)
    )
    r = router(config([pool("a", 1), pool("b", 1), pool("c", 1)], lb), down={"b/b-0"})
    first, again = first_and_retry(r)
    assert first.pool.name == "a"
    assert (again.pool.name, again.endpoint.name) == ("c", "c-0")
    assert "retry: failover_across_pools to pool c" in again.trace


def test_r43_without_failover_across_pools_the_retry_stays_in_the_pool() -> None:
    r = router(config([pool("a", 1), pool("b", 1)], load_balancer(["a", "b"])))
    first, again = first_and_retry(r)
    assert again is None
    assert "retry: no healthy alternate after 522" not in first.trace  # first trace untouched


def test_r43_geo_failover_stays_in_the_same_geo_list() -> None:
    lb = load_balancer(
        ["d"],
        "fb",
        steering_policy="geo",
        region_pools={"WEU": ("a", "b"), "ENAM": ("c",)},
        adaptive_routing=AdaptiveRouting(failover_across_pools=True),
    )
    cfg = config([pool(n, 1) for n in ("a", "b", "c", "d", "fb")], lb)
    first, again = first_and_retry(router(cfg), datacenter="FRA")
    assert (first.pool.name, again.pool.name) == ("a", "b")
    first, again = first_and_retry(router(cfg), datacenter="IAD")
    assert first.pool.name == "c" and again is None  # never d, never fb


# --------------------------------------------------------------------------- R44


def test_r44_a_retry_never_changes_health() -> None:
    cfg = config([pool("a", 3)], load_balancer(["a"]))
    hb = book(cfg)
    snapshot = hb.snapshot()
    r = Router(snapshot, secret=SECRET)
    for seed in range(20):
        _, again = first_and_retry(r, 522, seed)
        assert again is not None
    assert hb.snapshot() is snapshot
    assert all(e.health.value == "healthy" for e in hb.snapshot().pools["a"].endpoints)


# --------------------------------------------------------------------------- R45


def zdf_router(mode: str, zdf: str) -> Router:
    attrs = SessionAffinityAttributes(zero_downtime_failover=zdf, headers=("x-s",))
    return router(
        config(
            [pool("a", 3)],
            load_balancer(["a"], session_affinity=mode, session_affinity_attributes=attrs),
        )
    )


def pinned_request():
    return request(cookie=sign(SECRET, HOST, "a", "a-1", WALL + 3600), wall=WALL)


def test_r45_none_pinned_request_gets_the_error() -> None:
    r = zdf_router("cookie", "none")
    first = r.decide(pinned_request(), random.Random(1), trace=True)
    assert first.affinity == Affinity.HIT
    assert r.retry(first, pinned_request(), random.Random(2), status=522) is None
    # a request that was not pinned (new session) is still retried
    fresh = r.decide(request(wall=WALL), random.Random(1))
    assert r.retry(fresh, request(wall=WALL), random.Random(2), status=522) is not None


def test_r45_temporary_served_elsewhere_cookie_unchanged_then_pinned_again() -> None:
    r = zdf_router("cookie", "temporary")
    first = r.decide(pinned_request(), random.Random(1))
    again = r.retry(first, pinned_request(), random.Random(2), status=522)
    assert again is not None and again.endpoint.name != "a-1"
    assert again.set_cookie is None  # the client keeps its cookie
    assert r.decide(pinned_request(), random.Random(3)).endpoint.name == "a-1"


def test_r45_sticky_rewrites_the_cookie_to_the_retry_endpoint() -> None:
    r = zdf_router("cookie", "sticky")
    first = r.decide(pinned_request(), random.Random(1))
    again = r.retry(first, pinned_request(), random.Random(2), status=522)
    assert again is not None and again.endpoint.name != "a-1"
    value = verify(SECRET, again.set_cookie)
    assert (value.pool, value.endpoint) == ("a", again.endpoint.name)
    assert value.expires == WALL + 3600  # R35: rewritten, never extended


def test_r43_cross_pool_retry_never_goes_to_a_pool_ranked_before_the_failed_one() -> None:
    lb = load_balancer(
        ["a", "b", "c"],
        session_affinity="cookie",
        session_affinity_attributes=SessionAffinityAttributes(zero_downtime_failover="sticky"),
        adaptive_routing=AdaptiveRouting(failover_across_pools=True),
    )
    r = router(config([pool("a", 1), pool("b", 1), pool("c", 1)], lb))
    pinned = request(cookie=sign(SECRET, HOST, "b", "b-0", WALL + 3600), wall=WALL)
    first = r.decide(pinned, random.Random(1))
    assert (first.pool.name, first.affinity) == ("b", Affinity.HIT)
    again = r.retry(first, pinned, random.Random(2), status=521)
    assert again is not None and again.pool.name == "c"  # the next pool, not a


def test_r45_new_session_cookie_follows_the_retry_endpoint() -> None:
    r = zdf_router("cookie", "temporary")
    first = r.decide(request(wall=WALL), random.Random(1))
    again = r.retry(first, request(wall=WALL), random.Random(2), status=522)
    assert verify(SECRET, again.set_cookie).endpoint == again.endpoint.name


def test_r45_header_temporary_keeps_the_session() -> None:
    attrs = SessionAffinityAttributes(zero_downtime_failover="temporary", headers=("x-s",))
    lb = load_balancer(["a"], session_affinity="header", session_affinity_attributes=attrs)
    r = remembering(config([pool("a", 3)], lb))
    q = request(headers={"x-s": "1"})
    first = r.decide(q, random.Random(1))
    pinned_to = first.endpoint.name
    again_first = r.decide(q, random.Random(2))
    assert again_first.affinity == Affinity.HIT
    again = r.retry(again_first, q, random.Random(3), status=522)
    assert again is not None and again.endpoint.name != pinned_to
    assert r.decide(q, random.Random(4)).endpoint.name == pinned_to
