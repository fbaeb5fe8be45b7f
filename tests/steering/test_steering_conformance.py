"""Issue 15, Cloudflare conformance: pool-set weights and rule pool overrides in steering."""

from __future__ import annotations

import random
from collections import Counter

from builders import config, load_balancer, pool, request, router

from lb.config.model import (
    PoolSet,
    PoolSetMatch,
    PoolSetOverrides,
    RandomSteering,
    Rule,
    RuleOverrides,
    Topology,
)
from steering import Router


def shares(r: Router, n: int = 400, **req: object) -> Counter[str]:
    rng = random.Random(7)
    out: Counter[str] = Counter()
    for _ in range(n):
        d = r.decide(request(**req), rng)
        assert d.pool is not None
        out[d.pool.name] += 1
    return out


def test_item_01_pool_set_weights_do_not_borrow_the_load_balancers() -> None:
    """With the load balancer's default_weight 0, a random set over two healthy pools with no
    weights of its own spreads over both (its default weight is 1), never to the fallback."""
    random_set = PoolSet(
        match=PoolSetMatch(default=True),
        overrides=PoolSetOverrides(pools=("a", "b"), steering_policy="random"),
    )
    lb = load_balancer(
        ["a", "b"],
        "fb",
        steering_policy="random",
        random_steering=RandomSteering(default_weight=0.0),
        pool_sets=(random_set,),
    )
    r = router(config([pool("a"), pool("b"), pool("fb")], lb))
    got = shares(r)
    assert set(got) == {"a", "b"} and min(got.values()) > 100, got


def test_item_01_pool_set_weights_are_its_own() -> None:
    weighted = PoolSet(
        overrides=PoolSetOverrides(
            pools=("a", "b"), steering_policy="random", pool_weights={"a": 0.0}
        ),
    )
    lb = load_balancer(
        ["a", "b"], "fb", random_steering=RandomSteering(pool_weights={"b": 0.0}),
        pool_sets=(weighted,),
    )  # fmt: skip
    assert set(shares(router(config([pool("a"), pool("b"), pool("fb")], lb)))) == {"b"}


def test_item_07_rule_pools_replace_the_candidates_whatever_the_geo_mappings() -> None:
    rule = Rule(condition='http.request.uri.path eq "/beta"', overrides=RuleOverrides(pools=("c",)))
    lb = load_balancer(["a"], "a", region_pools={"WEU": ("b",)}, rules=(rule,))
    r = router(config([pool("a"), pool("b"), pool("c")], lb))
    assert set(shares(r, 50, datacenter="FRA")) == {"b"}
    assert set(shares(r, 50, datacenter="FRA", uri="/beta")) == {"c"}
    d = r.decide(request(datacenter="FRA", uri="/beta"), random.Random(1), trace=True)
    assert "rule 0: matched; overrides pools" in d.trace


def test_item_07_rule_pool_weights_replace_random_steering_halves() -> None:
    only_b = Rule(
        condition='http.request.uri.path eq "/b"',
        overrides=RuleOverrides(pool_weights={"a": 0.0}),
    )
    listed_only = Rule(
        condition='http.request.uri.path eq "/listed"',
        overrides=RuleOverrides(pool_default_weight=0.0),
    )
    lb = load_balancer(
        ["a", "b", "c"], "c", steering_policy="random",
        random_steering=RandomSteering(pool_weights={"b": 0.0, "c": 1.0}),
        rules=(only_b, listed_only),
    )  # fmt: skip
    r = router(config([pool("a"), pool("b"), pool("c")], lb))
    assert set(shares(r, 80)) == {"a", "c"}
    # pool_weights replaces the load balancer's weights; its default weight (1) stays.
    assert set(shares(r, 80, uri="/b")) == {"b", "c"}
    # pool_default_weight replaces the default; the load balancer's pool_weights stay.
    assert set(shares(r, 80, uri="/listed")) == {"c"}


def country_router() -> Router:
    sets = (
        PoolSet(
            match=PoolSetMatch(topology=Topology(countries=("JP",))),
            overrides=PoolSetOverrides(pools=("c",)),
        ),
    )
    geo = load_balancer(["a"], "a", steering_policy="geo", country_pools={"DE": ("b",)})
    by_set = load_balancer(["a"], "a", name="sets.example.com", pool_sets=sets)
    return router(config([pool("a"), pool("b"), pool("c")], [geo, by_set]))


def test_item_03_country_pools_use_the_clients_country_then_the_data_centers() -> None:
    r = country_router()
    assert set(shares(r, 30, datacenter="FRA")) == {"b"}  # FRA is in DE
    assert set(shares(r, 30, datacenter="AMS")) == {"a"}  # NL: no mapping
    assert set(shares(r, 30, datacenter="AMS", country="DE")) == {"b"}  # a German client
    assert set(shares(r, 30, datacenter="FRA", country="NL")) == {"a"}  # a Dutch one in FRA
    assert set(shares(r, 30, country="DE")) == {"b"}  # no data center known at all
    d = r.decide(request(datacenter="AMS", country="DE"), random.Random(1), trace=True)
    assert d.trace[0] == "client country DE (before the data center's)"
    assert "candidates from country_pools[DE]: ['b']" in d.trace


def test_item_03_pool_set_countries_use_the_clients_country() -> None:
    r = country_router()
    host = "sets.example.com"
    assert set(shares(r, 30, host=host, datacenter="NRT")) == {"c"}  # NRT is in JP
    assert set(shares(r, 30, host=host, datacenter="NRT", country="KR")) == {"a"}
    assert set(shares(r, 30, host=host, datacenter="FRA", country="JP")) == {"c"}
