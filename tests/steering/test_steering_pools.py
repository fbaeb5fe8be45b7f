"""Pool steering (R10, R18, R24-R30) and explanation traces."""

from __future__ import annotations

import collections
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
    replace,
    request,
    router,
)

from lb.config.model import LoadShedding, RandomSteering
from lb.core.snapshot import PoolState
from steering import Affinity
from steering.affinity import sign


def counts(r, n: int = 2000, seed: int = 7, **req_kw) -> collections.Counter[str]:
    """How often each ``pool/endpoint`` is chosen over ``n`` decisions."""
    rng = random.Random(seed)
    q = request(**req_kw)
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        d = r.decide(q, rng)
        out[d.endpoint.key if d.endpoint else f"status {d.status}"] += 1
    return out


# --------------------------------------------------------------------------- R10, R18


def test_r10_disabled_endpoint_and_disabled_pool_never_selected() -> None:
    a = pool("a", [endpoint("a-0"), endpoint("a-1", enabled=False)])
    cfg = config([pool("x", 1, enabled=False), a], load_balancer(["x", "a"]))
    r = router(cfg)
    assert counts(r) == {"a/a-0": 2000}
    d = r.decide(request(), random.Random(1), trace=True)
    assert "pool x excluded: disabled" in d.trace


def test_r18_only_enabled_healthy_positive_weight_endpoints_are_selected() -> None:
    a = pool("a", [endpoint("a-0"), endpoint("a-1", weight=0.0), endpoint("a-2")])
    cfg = config([a], load_balancer(["a"]))
    hb = book(cfg, down={"a/a-2"})
    # the weight-0 endpoint is still probed
    assert {t.endpoint for t in hb.targets()} == {"a-0", "a-1", "a-2"}
    r = router(hb)
    assert counts(r) == {"a/a-0": 2000}


def test_r18_unknown_endpoint_is_not_selected() -> None:
    cfg = config([pool("a", 2)], load_balancer(["a"]))
    assert counts(router(cfg, unknown={"a/a-1"})) == {"a/a-0": 2000}


# --------------------------------------------------------------------------- R19 (pools)


def test_r19_random_pool_steering_follows_pool_weights_and_default_weight() -> None:
    lb = load_balancer(
        ["a", "b", "c"],
        steering_policy="random",
        random_steering=RandomSteering(pool_weights={"a": 0.2, "b": 0.6}, default_weight=0.2),
    )
    cfg = config([pool("a", 1), pool("b", 1), pool("c", 1)], lb)
    got = counts(router(cfg), n=10_000)
    for key, p in (("a/a-0", 0.2), ("b/b-0", 0.6), ("c/c-0", 0.2)):
        assert abs(got[key] - 10_000 * p) < 5 * (10_000 * p * (1 - p)) ** 0.5


def test_r19_random_pool_weight_zero_gets_no_traffic() -> None:
    lb = load_balancer(
        ["a", "b"], steering_policy="random", random_steering=RandomSteering(pool_weights={"a": 0})
    )
    assert counts(router(config([pool("a", 1), pool("b", 1)], lb))) == {"b/b-0": 2000}


# --------------------------------------------------------------------------- R24


def test_r24_default_percent_random_sheds_that_share_to_the_next_pool() -> None:
    a = pool("a", 1, load_shedding=LoadShedding(default_percent=30))
    cfg = config([a, pool("b", 1)], load_balancer(["a", "b"]))
    got = counts(router(cfg), n=10_000)
    assert abs(got["b/b-0"] - 3000) < 5 * (10_000 * 0.3 * 0.7) ** 0.5
    assert got["a/a-0"] + got["b/b-0"] == 10_000


def test_r24_shedding_everything_moves_all_requests_and_is_traced() -> None:
    a = pool("a", 1, load_shedding=LoadShedding(default_percent=100))
    r = router(config([a, pool("b", 1)], load_balancer(["a", "b"])))
    assert counts(r) == {"b/b-0": 2000}
    d = r.decide(request(), random.Random(1), trace=True)
    assert "pool a: request shed (100%)" in d.trace


def test_r24_every_pool_shed_lands_in_the_fallback_pool() -> None:
    shed = LoadShedding(default_percent=100)
    cfg = config([pool("a", 1, load_shedding=shed), pool("fb", 1)], load_balancer(["a"], "fb"))
    d = router(cfg).decide(request(), random.Random(1))
    assert (d.pool.name, d.reason) == ("fb", "fallback")


def test_r24_hash_shedding_is_per_client_ip() -> None:
    a = pool("a", 1, load_shedding=LoadShedding(default_percent=40, default_policy="hash"))
    r = router(config([a, pool("b", 1)], load_balancer(["a", "b"])))
    shed = 0
    for i in range(2000):
        ip = f"198.51.{i // 250}.{i % 250}"
        first = {r.decide(request(client_ip=ip), random.Random(s)).pool.name for s in range(5)}
        assert len(first) == 1  # the same IP is always shed, or never
        shed += first == {"b"}
    assert abs(shed - 800) < 5 * (2000 * 0.4 * 0.6) ** 0.5


def test_r24_session_percent_sheds_pinned_sessions_by_ip_hash() -> None:
    a = pool("a", 1, load_shedding=LoadShedding(session_percent=100))
    cfg = config([a, pool("b", 1)], load_balancer(["a", "b"], session_affinity="cookie"))
    r = router(cfg)
    cookie = sign(SECRET, HOST, "a", "a-0", 10_000)
    d = r.decide(request(cookie=cookie, client_ip="192.0.2.1"), random.Random(1), trace=True)
    assert d.affinity == Affinity.REMAPPED
    assert d.pool.name == "b"
    assert "affinity: session shed from pool a" in d.trace
    # without session shedding the session stays
    r = router(
        config([pool("a", 1), pool("b", 1)], load_balancer(["a", "b"], session_affinity="cookie"))
    )
    assert r.decide(request(cookie=cookie), random.Random(1)).affinity == Affinity.HIT


# --------------------------------------------------------------------------- R25, R26


@pytest.mark.parametrize(
    ("geo", "expected"),
    [
        ({}, "off"),
        ({"region_pools": {"WEU": ("b",)}}, "geo"),
        ({"country_pools": {"DE": ("b",)}}, "geo"),
        ({"pop_pools": {"FRA": ("b",)}}, "geo"),
    ],
)
def test_r25_empty_steering_policy_is_geo_with_a_mapping_else_off(geo, expected) -> None:
    lb = load_balancer(["a", "b"], steering_policy="", **geo)
    assert lb.effective_policy == expected
    d = router(config([pool("a", 1), pool("b", 1)], lb)).decide(
        request(datacenter="FRA"), random.Random(1)
    )
    assert d.policy == f"{expected}/random"
    assert d.pool.name == ("a" if expected == "off" else "b")


def test_r26_off_picks_the_first_eligible_pool_in_order() -> None:
    cfg = config([pool("a", 1), pool("b", 1), pool("c", 1)], load_balancer(["a", "b", "c"]))
    assert counts(router(cfg)) == {"a/a-0": 2000}
    assert counts(router(cfg, down={"a/a-0"})) == {"b/b-0": 2000}
    assert counts(router(cfg, down={"a/a-0", "b/b-0"})) == {"c/c-0": 2000}


# --------------------------------------------------------------------------- R27


GEO = load_balancer(
    ["p_def"],
    "p_fb",
    steering_policy="geo",
    pop_pools={"FRA": ("p_fra", "p_weu")},
    country_pools={"NL": ("p_nl",)},
    region_pools={"WEU": ("p_weu",), "ENAM": ("p_us",)},
)
GEO_POOLS = [pool(n, 1) for n in ("p_fra", "p_nl", "p_weu", "p_us", "p_def", "p_fb")]


@pytest.mark.parametrize(
    ("dc", "pool_name", "label"),
    [
        ("FRA", "p_fra", "pop_pools[FRA]"),
        ("AMS", "p_nl", "country_pools[NL]"),
        ("LHR", "p_weu", "region_pools[WEU]"),
        ("IAD", "p_us", "region_pools[ENAM]"),
        ("SIN", "p_def", "default_pools"),
        ("", "p_def", "default_pools"),
    ],
)
def test_r27_geo_pop_then_country_then_region_then_default(dc, pool_name, label) -> None:
    d = router(config(GEO_POOLS, GEO)).decide(request(datacenter=dc), random.Random(1), trace=True)
    assert d.pool.name == pool_name
    assert any(line.startswith(f"candidates from {label}:") for line in d.trace)


def test_r27_geo_failover_stays_inside_the_list_then_fallback_pool() -> None:
    cfg = config(GEO_POOLS, GEO)
    d = router(cfg, down={"p_fra/p_fra-0"}).decide(request(datacenter="FRA"), random.Random(1))
    assert d.pool.name == "p_weu"
    d = router(cfg, down={"p_nl/p_nl-0"}).decide(request(datacenter="AMS"), random.Random(1))
    # no fall-through to region_pools[WEU] or default_pools
    assert (d.pool.name, d.reason) == ("p_fb", "fallback")


# --------------------------------------------------------------------------- R28


def test_r28_dynamic_latency_lowest_rtt_for_the_requesting_region() -> None:
    lb = load_balancer(["a", "b", "fb"], "fb", steering_policy="dynamic_latency")
    cfg = config([pool("a", 1), pool("b", 1), pool("fb", 1)], lb, vantage_points=("WEU", "ENAM"))
    rtt = {("a", "WEU"): 0.100, ("a", "ENAM"): 0.010, ("b", "WEU"): 0.020, ("b", "ENAM"): 0.200}
    r = router(cfg, rtt=rtt)
    assert r.decide(request(datacenter="FRA"), random.Random(1)).pool.name == "b"
    assert r.decide(request(datacenter="IAD"), random.Random(1)).pool.name == "a"
    # the lowest-latency pool down: the next lowest
    r = router(cfg, rtt=rtt, down={"b/b-0"})
    assert r.decide(request(datacenter="FRA"), random.Random(1)).pool.name == "a"


def test_r28_dynamic_latency_without_rtt_data_is_failover_order() -> None:
    lb = load_balancer(["a", "b"], steering_policy="dynamic_latency")
    cfg = config([pool("a", 1, monitor=None), pool("b", 1, monitor=None)], lb)
    assert counts(router(cfg), datacenter="FRA") == {"a/a-0": 2000}


# --------------------------------------------------------------------------- R29


def test_r29_proximity_picks_the_nearest_eligible_pool() -> None:
    pools = [
        pool("nocoords", 1),
        pool("us", 1, latitude=39.0, longitude=-77.5),
        pool("eu", 1, latitude=50.1, longitude=8.7),
        pool("asia", 1, latitude=1.3, longitude=103.8),
    ]
    lb = load_balancer(["nocoords", "us", "eu", "asia"], steering_policy="proximity")
    cfg = config(pools, lb)
    r = router(cfg)
    for dc, expected in (("FRA", "eu"), ("IAD", "us"), ("SIN", "asia"), ("NRT", "asia")):
        assert r.decide(request(datacenter=dc), random.Random(1)).pool.name == expected
    r = router(cfg, down={"eu/eu-0"})
    assert r.decide(request(datacenter="FRA"), random.Random(1)).pool.name == "us"
    # open question 13: pools without coordinates sort last
    r = router(cfg, down={"eu/eu-0", "us/us-0", "asia/asia-0"})
    assert r.decide(request(datacenter="FRA"), random.Random(1)).pool.name == "nocoords"


# --------------------------------------------------------------------------- R30


def test_r30_fallback_pool_is_used_with_its_health_ignored() -> None:
    cfg = config([pool("a", 1), pool("fb", 2)], load_balancer(["a"], "fb"))
    r = router(cfg, down={"a/a-0", "fb/fb-0", "fb/fb-1"})
    got = counts(r)
    assert set(got) == {"fb/fb-0", "fb/fb-1"}
    d = r.decide(request(), random.Random(1), trace=True)
    assert (d.reason, d.policy, d.status) == ("fallback", "fallback/random", 0)
    assert "no eligible pool: fallback pool fb, health ignored" in d.trace


def test_r30_q12_fallback_pool_prefers_its_healthy_endpoints() -> None:
    cfg = config([pool("a", 1), pool("fb", 2, minimum_origins=2)], load_balancer(["a"], "fb"))
    # fb is critical (1 < 2 healthy) but its healthy endpoint is preferred
    assert counts(router(cfg, down={"a/a-0", "fb/fb-0"})) == {"fb/fb-1": 2000}


def test_r30_disabled_fallback_pool_answers_530() -> None:
    cfg = config([pool("a", 1), pool("fb", 1, enabled=False)], load_balancer(["a"], "fb"))
    d = router(cfg, down={"a/a-0"}).decide(request(), random.Random(1), trace=True)
    assert (d.status, d.reason, d.pool, d.endpoint) == (530, "no_pool", None, None)
    assert any("530 / 1016" in line for line in d.trace)
    assert d.as_json()["status"] == 530


def test_r30_fallback_pool_without_enabled_endpoint_answers_530() -> None:
    fb = pool("fb", [endpoint("fb-0", enabled=False)])
    d = router(config([pool("a", 1), fb], load_balancer(["a"], "fb")), down={"a/a-0"}).decide(
        request(), random.Random(1)
    )
    assert (d.status, d.endpoint) == (530, None)


def test_unknown_host_answers_404() -> None:
    r = router(config([pool("a", 1)], load_balancer(["a"])))
    d = r.decide(request(host="other.example.com"), random.Random(1), trace=True)
    assert (d.status, d.reason) == (404, "unknown_host")
    assert r.decide(request(host="APP.example.com:443"), random.Random(1)).status == 0
    disabled = config([pool("a", 1)], load_balancer(["a"], enabled=False))
    assert router(disabled).decide(request(), random.Random(1)).status == 404


# --------------------------------------------------------------------------- traces


def test_trace_names_every_excluded_pool_and_why() -> None:
    pools = [
        pool("off", 1, enabled=False),
        pool("crit", 2, minimum_origins=2),
        pool("empty", 1, minimum_origins=0),
        pool("ok", 1),
    ]
    r = router(
        config(pools, load_balancer(["off", "crit", "empty", "ok"])),
        down={"crit/crit-0", "empty/empty-0"},
    )
    d = r.decide(request(), random.Random(1), trace=True)
    assert d.pool.name == "ok"
    assert d.trace == [
        f"load balancer {HOST}: steering_policy=off",
        "candidates from default_pools: ['off', 'crit', 'empty', 'ok']",
        "pool off excluded: disabled",
        "pool crit excluded: critical: 1 healthy < minimum_origins 2",
        "pool empty excluded: no enabled healthy endpoint with weight > 0",
        "pool ok chosen by off",
        "endpoint ok/ok-0 chosen by random among 1",
    ]
    assert d.as_json()["trace"] == d.trace
    assert r.snapshot.pools["crit"].state == PoolState.CRITICAL


def test_trace_off_costs_nothing_and_gives_the_same_decision() -> None:
    cfg = config([pool("a", 5)], load_balancer(["a"]))
    r = router(cfg)
    with_trace = r.decide(request(), random.Random(3), trace=True)
    without = r.decide(request(), random.Random(3))
    assert without.trace is None
    assert with_trace.endpoint == without.endpoint


def test_replace_helper_keeps_builders_honest() -> None:
    p = pool("a", 1)
    assert replace(p, enabled=False).enabled is False
