"""The untraced fast paths of the router decide exactly what the traced pipeline decides."""

from __future__ import annotations

import random

import pytest
from builders import HOST, SECRET, config, endpoint, load_balancer, pool, request, router, tunnel

from lb.config.model import LoadShedding, LocalPreference, RandomSteering
from steering import Affinity, Decision, Live
from steering.affinity import sign


def configs():
    eps = [endpoint(n, weight=w) for n, w in (("fra", 0.3), ("iad", 1.0), ("sin", 0.6))]
    tunnels = [tunnel("fra", "FRA"), tunnel("iad", "IAD"), tunnel("sin", "SIN")]
    for policy in ("random", "hash", "least_outstanding_requests", "least_connections"):
        yield (
            f"off/{policy}",
            config([pool("a", eps, policy=policy), pool("b", 2)], load_balancer(["a", "b"])),
        )
        yield (
            f"local/{policy}",
            config(
                [pool("a", eps, policy=policy)],
                load_balancer(["a"]),
                tunnels=tunnels,
                local_preference=LocalPreference(enabled=True, spill=0.3),
            ),
        )
    yield (
        "geo",
        config(
            [pool("eu", 3), pool("us", 3), pool("def", 1)],
            load_balancer(["def"], region_pools={"WEU": ("eu", "us"), "ENAM": ("us",)}),
        ),
    )
    yield (
        "random-pools",
        config([pool("a", 2), pool("b", 3)], load_balancer(["a", "b"], steering_policy="random")),
    )
    weights = RandomSteering(pool_weights={"a": 0.3, "b": 0.7, "c": 0.0})
    for policy in ("random", "hash", "least_outstanding_requests", "least_connections"):
        yield (
            f"random-pools/{policy}",
            config(
                [pool("a", eps, policy=policy), pool("b", 2), pool("c", 2)],
                load_balancer(["c", "a", "b"], steering_policy="random", random_steering=weights),
            ),
        )
        yield (
            f"random-pools-local/{policy}",
            config(
                [pool("a", eps, policy=policy), pool("b", [endpoint("iad")], policy=policy)],
                load_balancer(["a", "b"], steering_policy="random"),
                tunnels=tunnels,
                local_preference=LocalPreference(enabled=True, spill=0.3),
            ),
        )
    yield (
        "shed",
        config(
            [pool("a", 2, load_shedding=LoadShedding(default_percent=50)), pool("b", 2)],
            load_balancer(["a", "b"]),
        ),
    )


@pytest.mark.parametrize(("name", "cfg"), list(configs()))
def test_fast_path_decides_like_the_traced_pipeline(name: str, cfg) -> None:
    r = router(cfg, down={"a/sin"} if name.startswith("off") else ())
    live = Live(
        in_flight={"a/fra": 0, "a/iad": 5, "a/sin": 1}, connections={"a/fra": 2, "a/iad": 0}
    )
    for dc in ("", "FRA", "IAD", "LHR", "SIN"):
        for seed in range(60):
            q = request(datacenter=dc, client_ip=f"198.51.100.{seed}")
            fast_rng, slow_rng = random.Random(seed), random.Random(seed)
            fast = r.decide(q, fast_rng, live)
            slow = r.decide(q, slow_rng, live, trace=True)
            assert (fast.pool, fast.endpoint, fast.reason, fast.policy) == (
                slow.pool,
                slow.endpoint,
                slow.reason,
                slow.policy,
            ), (name, dc, seed)
            # the same draws too: the simulator's runs repeat exactly whichever path decided
            assert fast_rng.random() == slow_rng.random(), (name, dc, seed)
    if name.startswith("random-pools"):
        # the random pool policy's fast path was taken, not the general path for both
        plan = r._plans[HOST]
        assert plan is not None and plan.fast_pools, name


def test_cached_cookie_hit_equals_the_first_hit_and_still_expires() -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"], session_affinity="cookie")))
    cookie = sign(SECRET, HOST, "a", "a-1", 1000)
    first = r.decide(request(cookie=cookie, wall=10), random.Random(1))
    again = r.decide(request(cookie=cookie, wall=20), random.Random(2))
    assert first.affinity == again.affinity == Affinity.HIT
    assert (first.endpoint, first.pinned) == (again.endpoint, again.pinned)
    assert r.decide(request(cookie=cookie, wall=1000), random.Random(3)).affinity == "expired"
    other = load_balancer(["a"], name="other.example.com", session_affinity="cookie")
    r = router(config([pool("a", 3)], [load_balancer(["a"], session_affinity="cookie"), other]))
    assert r.decide(request(cookie=cookie, wall=10), random.Random(1)).affinity == Affinity.HIT
    d = r.decide(request(host="other.example.com", cookie=cookie, wall=10), random.Random(1))
    assert d.affinity == Affinity.INVALID


def test_untraced_decisions_are_shared_frozen_values() -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"])))
    seen = {}
    for seed in range(30):
        d = r.decide(request(), random.Random(seed))
        assert seen.setdefault(d.endpoint.name, d) is d
    assert len(seen) == 3
    with pytest.raises(AttributeError):
        d.reason = "changed"  # type: ignore[misc]
    unknown = r.decide(request(host="nowhere.example.com"), random.Random(1))
    assert unknown == Decision(
        load_balancer=None, pool=None, endpoint=None, reason="unknown_host", status=404
    )


def test_request_specific_decisions_leave_the_shared_ones_alone() -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"], session_affinity="cookie")))
    new = r.decide(request(wall=10), random.Random(4))
    assert new.affinity == Affinity.NEW and new.set_cookie is not None
    hit = r.decide(request(cookie=new.set_cookie, wall=20), random.Random(5))
    assert (hit.affinity, hit.set_cookie, hit.pinned) == (Affinity.HIT, None, new.endpoint.key)
    assert hit.endpoint == new.endpoint
    again = r.decide(request(wall=30), random.Random(4))
    assert again.affinity == Affinity.NEW and again.set_cookie not in (None, new.set_cookie)
    assert r.decide(request(cookie=new.set_cookie, wall=40), random.Random(6)) is hit


def test_with_affinity_changes_only_affinity_and_cookie() -> None:
    # Every field distinct, so that a field-order slip in with_affinity shows.
    d = Decision(
        load_balancer=None,
        pool=None,
        endpoint=None,
        reason="retry",
        policy="off/random",
        affinity=Affinity.HIT,
        set_cookie="old",
        status=7,
        trace=["t"],
        pinned="a/a-1",
        tried=("a/a-0",),
    )
    assert d.with_affinity(Affinity.REMAPPED, "new") == d._replace(
        affinity=Affinity.REMAPPED, set_cookie="new"
    )
    assert d.with_affinity(Affinity.NEW) == d._replace(affinity=Affinity.NEW, set_cookie=None)
