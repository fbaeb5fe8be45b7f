"""Endpoint steering (R19, R20, R21) as property tests, and local-data-center preference."""

from __future__ import annotations

import collections
import random

from builders import config, endpoint, load_balancer, pool, request, router, tunnel
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.model import LocalPreference, RandomSteering
from steering import Live

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)

# Endpoint weights are 0.01 .. 1.00 in steps of 0.01 (Cloudflare's grid).
weights_st = st.lists(st.integers(1, 100).map(lambda w: w / 100), min_size=1, max_size=10)


def draw(r, n: int, seed: int, live: Live | None = None, **req_kw) -> collections.Counter[str]:
    rng = random.Random(seed)
    q = request(**req_kw)
    return collections.Counter(r.decide(q, rng, live).endpoint.name for _ in range(n))


def assert_shares(got: collections.Counter[str], expected: dict[str, float], n: int) -> None:
    """Every count within 5 standard deviations (+2) of its binomial mean."""
    total = sum(expected.values())
    assert set(got) <= set(expected)
    for name, w in expected.items():
        p = w / total
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(got[name] - n * p) <= 5 * sigma + 2, (name, got[name], n * p)


def weighted_pool(weights: list[float], policy: str = "random", monitor: str | None = None):
    eps = [endpoint(f"e{i}", weight=w) for i, w in enumerate(weights)]
    return pool("a", eps, policy=policy, monitor=monitor)


# --------------------------------------------------------------------------- R19


@PROPERTY
@given(weights=weights_st, seed=st.integers(0, 2**32))
def test_r19_random_endpoint_share_is_weight_over_total(weights: list[float], seed: int) -> None:
    r = router(config([weighted_pool(weights)], load_balancer(["a"])))
    n = 4000
    assert_shares(draw(r, n, seed), {f"e{i}": w for i, w in enumerate(weights)}, n)


def test_r19_unhealthy_endpoint_share_is_redistributed_proportionally() -> None:
    eps = [endpoint("A", weight=0.25), endpoint("B", weight=0.25), endpoint("C", weight=0.5)]
    r = router(config([pool("a", eps)], load_balancer(["a"])), down={"a/C"})
    assert_shares(draw(r, 10_000, 1), {"A": 0.5, "B": 0.5}, 10_000)


# --------------------------------------------------------------------------- R20


ip_st = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@PROPERTY
@given(
    weights=st.lists(st.integers(1, 100).map(lambda w: w / 100), min_size=2, max_size=8),
    ips=st.lists(ip_st, min_size=1, max_size=60, unique=True),
    removed=st.integers(0, 7),
)
def test_r20_hash_is_stable_and_removal_moves_only_that_endpoints_clients(
    weights: list[float], ips: list[str], removed: int
) -> None:
    removed %= len(weights)
    cfg = config([weighted_pool(weights, "hash", monitor="m")], load_balancer(["a"]))
    full = router(cfg)
    before = {}
    for ip in ips:
        picks = {
            full.decide(request(client_ip=ip), random.Random(s)).endpoint.name for s in range(3)
        }
        assert len(picks) == 1  # same IP, same set: same endpoint, whatever the rng
        before[ip] = picks.pop()
    # the same set compiled again (a new router, e.g. after an unrelated change) agrees
    again = router(cfg)
    assert all(
        again.decide(request(client_ip=ip), random.Random(9)).endpoint.name == before[ip]
        for ip in ips
    )
    gone = f"e{removed}"
    smaller = router(cfg, down={f"a/{gone}"})
    for ip in ips:
        after = smaller.decide(request(client_ip=ip), random.Random(0)).endpoint.name
        assert after != gone
        if before[ip] != gone:
            assert after == before[ip]


def test_r20_hash_share_roughly_follows_weights() -> None:
    eps = [endpoint("A", weight=0.2), endpoint("B", weight=0.8)]
    r = router(config([pool("a", eps, policy="hash", monitor=None)], load_balancer(["a"])))
    got = collections.Counter(
        r.decide(
            request(client_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"), random.Random(0)
        ).endpoint.name
        for i in range(5000)
    )
    assert_shares(got, {"A": 0.2, "B": 0.8}, 5000)


# --------------------------------------------------------------------------- R21


@PROPERTY
@given(
    data=st.lists(
        st.tuples(st.integers(1, 100).map(lambda w: w / 100), st.integers(0, 20)),
        min_size=1,
        max_size=8,
    ),
    seed=st.integers(0, 2**32),
)
def test_r21_least_outstanding_requests_share_is_w_over_n_plus_1(
    data: list[tuple[float, int]], seed: int
) -> None:
    r = router(
        config(
            [weighted_pool([w for w, _ in data], "least_outstanding_requests")],
            load_balancer(["a"]),
        )
    )
    live = Live(in_flight={f"a/e{i}": n for i, (_, n) in enumerate(data)})
    n = 4000
    expected = {f"e{i}": w / (k + 1) for i, (w, k) in enumerate(data)}
    assert_shares(draw(r, n, seed, live), expected, n)


def test_r21_least_connections_uses_open_connections() -> None:
    r = router(config([weighted_pool([1.0, 1.0], "least_connections")], load_balancer(["a"])))
    live = Live(connections={"a/e0": 3, "a/e1": 0}, in_flight={"a/e0": 0, "a/e1": 50})
    assert_shares(draw(r, 8000, 3, live), {"e0": 1 / 4, "e1": 1.0}, 8000)


def test_r21_without_live_counts_lor_is_plain_weighted_random() -> None:
    r = router(
        config([weighted_pool([0.2, 0.8], "least_outstanding_requests")], load_balancer(["a"]))
    )
    assert_shares(draw(r, 8000, 4), {"e0": 0.2, "e1": 0.8}, 8000)


def test_r21_pool_level_least_outstanding_requests() -> None:
    lb = load_balancer(
        ["a", "b"],
        steering_policy="least_outstanding_requests",
        random_steering=RandomSteering(pool_weights={"a": 1.0, "b": 0.5}),
    )
    r = router(config([pool("a", 1), pool("b", 1)], lb))
    live = Live(pool_in_flight={"a": 3, "b": 0})
    assert_shares(draw(r, 8000, 5, live), {"a-0": 1.0 / 4, "b-0": 0.5}, 8000)
    live.started(r.snapshot.pools["b"].endpoints[0])
    assert live.pool_in_flight["b"] == 1 and live.in_flight["b/b-0"] == 1


# --------------------------------------------------------------------------- local data center


def local_config(spill: float = 0.0, enabled: bool = True, policy: str = "random"):
    eps = [endpoint("fra"), endpoint("iad"), endpoint("ams_sin")]
    return config(
        [pool("a", eps, policy=policy)],
        load_balancer(["a"]),
        tunnels=[
            tunnel("fra", "FRA"),
            tunnel("iad", "IAD"),
            tunnel("ams_sin", "AMS", "SIN", replicas=2),
        ],
        local_preference=LocalPreference(enabled=enabled, spill=spill),
    )


def test_local_preference_prefers_endpoints_connected_in_the_request_dc() -> None:
    r = router(local_config())
    assert draw(r, 1000, 1, datacenter="FRA") == {"fra": 1000}
    assert draw(r, 1000, 1, datacenter="SIN") == {"ams_sin": 1000}
    d = r.decide(request(datacenter="FRA"), random.Random(1), trace=True)
    assert "local preference: 1 endpoint(s) in FRA" in d.trace


def test_local_preference_then_nearest_connected_dc() -> None:
    r = router(local_config())
    # nobody is connected in LHR: AMS (about 370 km) is nearer than FRA (about 650 km)
    assert draw(r, 1000, 1, datacenter="LHR") == {"ams_sin": 1000}
    # SJC: IAD is the nearest connected data center
    assert draw(r, 1000, 1, datacenter="SJC") == {"iad": 1000}
    d = r.decide(request(datacenter="LHR"), random.Random(1), trace=True)
    assert "local preference: none in LHR; nearest used" in d.trace


def test_local_preference_skips_unhealthy_local_endpoint() -> None:
    r = router(local_config(), down={"a/fra"})
    # FRA: no healthy local endpoint; nearest connected is AMS
    assert draw(r, 1000, 1, datacenter="FRA") == {"ams_sin": 1000}


def test_local_preference_spill_share_follows_weights() -> None:
    n = 10_000
    r = router(local_config(spill=0.25))
    got = draw(r, n, 2, datacenter="FRA")
    # 75% local, 25% spread over the three endpoints by weight
    assert_shares(got, {"fra": 0.75 + 0.25 / 3, "iad": 0.25 / 3, "ams_sin": 0.25 / 3}, n)


def test_local_preference_off_or_unknown_dc_uses_all_endpoints() -> None:
    n = 6000
    third = {"fra": 1, "iad": 1, "ams_sin": 1}
    assert_shares(draw(router(local_config(enabled=False)), n, 3, datacenter="FRA"), third, n)
    assert_shares(draw(router(local_config()), n, 3, datacenter=""), third, n)
    assert_shares(draw(router(local_config()), n, 3, datacenter="XXX"), third, n)


def test_local_preference_applies_before_hash() -> None:
    r = router(local_config(policy="hash"))
    for i in range(50):
        assert (
            r.decide(
                request(datacenter="IAD", client_ip=f"192.0.2.{i}"), random.Random(i)
            ).endpoint.name
            == "iad"
        )
