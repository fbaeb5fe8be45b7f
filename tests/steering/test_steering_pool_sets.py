"""R31: pool sets, the first enabled match by the request's data center supplies the pools."""

from __future__ import annotations

import random

from builders import config, load_balancer, pool, request, router

from lb.config.model import (
    FixedResponse,
    PoolSet,
    PoolSetMatch,
    PoolSetOverrides,
    Rule,
    RuleOverrides,
    Topology,
)
from steering import Decision, Router


def with_sets(*sets: PoolSet, **lb: object) -> Router:
    pools = [pool("a", 2), pool("b", 2), pool("c", 2), pool("d", 1)]
    return router(config(pools, load_balancer(["a", "d"], pool_sets=sets, **lb)))


def where(pools: str, **topology: tuple[str, ...]) -> PoolSet:
    return PoolSet(
        match=PoolSetMatch(topology=Topology(**topology)),
        overrides=PoolSetOverrides(pools=tuple(pools)),
    )


def everywhere(pools: str, **overrides: object) -> PoolSet:
    return PoolSet(
        match=PoolSetMatch(default=True),
        overrides=PoolSetOverrides(pools=tuple(pools), **overrides),
    )


def decide(r: Router, dc: str = "", seed: int = 1, *, trace: bool = False) -> Decision:
    return r.decide(request(datacenter=dc), random.Random(seed), trace=trace)


def test_r31_first_matching_set_wins_in_array_order() -> None:
    r = with_sets(where("b", regions=("WEU",)), where("c", pops=("FRA",)), everywhere("c"))
    assert decide(r, "FRA").pool.name == "b"  # the region set comes first, though FRA is narrower
    assert decide(r, "IAD").pool.name == "c"  # the default set
    d = decide(r, "FRA", trace=True)
    assert d.trace[0] == "pool set 0: matched; pools ['b']"


def test_r31_unmatched_requests_use_the_load_balancer_and_disabled_sets_are_skipped() -> None:
    off = PoolSet(disabled=True, overrides=PoolSetOverrides(pools=("c",)))
    r = with_sets(off, where("b", countries=("DE",)))
    assert decide(r, "FRA").pool.name == "b"
    assert decide(r, "LHR").pool.name == "a"
    assert decide(r, "").pool.name == "a"  # unknown location: only default sets match
    assert (
        "no pool set matched: the load balancer's own pools" in decide(r, "LHR", trace=True).trace
    )


def test_r31_topology_fields_must_all_match() -> None:
    r = with_sets(where("b", regions=("WEU",), countries=("GB",)))
    assert decide(r, "LHR").pool.name == "b"
    assert decide(r, "FRA").pool.name == "a"  # WEU but not GB


def test_r31_a_set_brings_its_steering_weights_and_fallback() -> None:
    weighted = everywhere(
        "bc", steering_policy="random", pool_weights={"b": 0.0}, pool_default_weight=1.0
    )
    r = with_sets(weighted)
    assert {decide(r, seed=s).pool.name for s in range(20)} == {"c"}
    assert decide(r).policy == "random/random"
    down = router(
        config(
            [pool("a", 1), pool("b", 1), pool("d", 1)],
            load_balancer(["a"], "a", pool_sets=(everywhere("b", fallback_pool="d"),)),
        ),
        down={"b/b-0"},
    )
    d = decide(down)
    assert (d.reason, d.pool.name) == ("fallback", "d")


def test_r31_a_set_replaces_geo_steering() -> None:
    r = with_sets(
        where("c", pops=("SIN",)),
        region_pools={"WEU": ("b",), "SEAS": ("b",)},
    )
    assert decide(r, "SIN").pool.name == "c"  # the set, not region_pools
    assert decide(r, "FRA").pool.name == "b"  # no set matched: geo as before


def test_r31_fixed_response_ends_processing_before_custom_rules() -> None:
    fixed = FixedResponse(status_code=451, message_body="not here")
    blocked = PoolSet(
        match=PoolSetMatch(topology=Topology(countries=("JP",))), fixed_response=fixed
    )
    rule = Rule(overrides=RuleOverrides(default_pools=("d",)))
    r = with_sets(blocked, everywhere("b"), rules=(rule,))
    d = decide(r, "NRT", trace=True)
    assert (d.reason, d.status, d.fixed) == ("fixed_response", 451, fixed)
    assert not any(line.startswith("rule") for line in d.trace)
    # Elsewhere the set's pools are the base the custom rules override (R32 after R31).
    assert decide(r, "FRA").pool.name == "d"
