"""Live counts: the per-pool Counts steering reads, their mapping views, and R21 exactly.

R21's pick must be the same, seed for seed, as the plain formula over the ``pool/endpoint``
counts (running sums of ``w / (n + 1)``, one ``bisect``), whichever way the counts got there:
given to the constructor, written by the proxy, written with endpoint views of an older
snapshot whose pool was reordered since, or several Live objects steered by one router.
"""

from __future__ import annotations

import random
from bisect import bisect

import pytest
from builders import config, endpoint, load_balancer, pool, request, router
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.core.snapshot import EndpointView
from steering import Live, Router
from steering.types import MOVED_LIMIT

WEIGHTS = {"e0": 0.3, "e1": 1.0, "e2": 0.6, "e3": 0.8}
POLICIES = ("least_outstanding_requests", "least_connections")


def lor_router(policy: str = "least_outstanding_requests", order: tuple[str, ...] = ()) -> Router:
    names = order or tuple(WEIGHTS)
    eps = [endpoint(n, weight=WEIGHTS[n]) for n in names]
    return router(config([pool("a", eps, policy=policy, monitor=None)], load_balancer(["a"])))


def view(r: Router, name: str) -> EndpointView:
    ep = r.snapshot.pools["a"].endpoint(name)
    assert ep is not None
    return ep


def reference(r: Router, counts: dict[str, int], seed: int) -> str:
    """R21 by the book, over the selectable endpoints in configuration order."""
    cumulative, total = [], 0.0
    items = r.snapshot.pools["a"].selectable
    for e in items:
        total += e.weight / (counts.get(e.key, 0) + 1)
        cumulative.append(total)
    return items[bisect(cumulative, random.Random(seed).random() * total)].name


def assert_exact(r: Router, live: Live, policy: str, seeds: range = range(40)) -> None:
    counts = dict(live.in_flight if policy == POLICIES[0] else live.connections)
    for seed in seeds:
        for trace in (False, True):
            d = r.decide(request(), random.Random(seed), live, trace=trace)
            assert d.endpoint is not None
            assert d.endpoint.name == reference(r, counts, seed), (seed, trace, counts)


def move(live: Live, policy: str, ep: EndpointView, delta: int) -> None:
    if policy == POLICIES[0]:
        (live.started if delta > 0 else live.finished)(ep)
    else:
        (live.connection_opened if delta > 0 else live.connection_closed)(ep)


def test_writes_show_in_the_mappings_like_dictionaries() -> None:
    r = lor_router()
    live = Live()
    e0, e2 = view(r, "e0"), view(r, "e2")
    live.started(e2)
    live.started(e2)
    live.started(e0)
    live.finished(e0)
    live.connection_opened(e2)
    assert dict(live.in_flight) == {"a/e2": 2, "a/e0": 0}
    assert live.in_flight["a/e0"] == 0 and live.in_flight.get("a/e1", 7) == 7
    assert "a/e1" not in live.in_flight and "b/e0" not in live.in_flight
    assert dict(live.connections) == {"a/e2": 1}
    assert (live.pool_in_flight, live.pool_connections) == ({"a": 2}, {"a": 1})
    assert sum(live.in_flight.values()) == 2 and len(live.in_flight) == 2
    with pytest.raises(KeyError):
        live.in_flight["a/e1"]


def test_reading_does_not_add_endpoints_to_the_mappings() -> None:
    r = lor_router()
    live = Live(in_flight={"a/e3": 2})
    r.decide(request(), random.Random(1), live, trace=True)
    assert dict(live.in_flight) == {"a/e3": 2}


@pytest.mark.parametrize("policy", POLICIES)
def test_r21_is_exact_with_counts_given_by_name_in_any_order(policy: str) -> None:
    r = lor_router(policy)
    given = {"a/e3": 4, "a/e0": 1, "a/gone": 9}  # "gone" is not in the pool
    live = Live(in_flight=given) if policy == POLICIES[0] else Live(connections=given)
    assert_exact(r, live, policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_r21_sees_every_write_between_decisions(policy: str) -> None:
    r = lor_router(policy)
    live = Live()
    assert_exact(r, live, policy, range(5))  # nothing counted: plain weighted random (R19)
    for step in range(30):
        d = r.decide(request(), random.Random(step), live)
        assert d.endpoint is not None
        move(live, policy, d.endpoint, 1)
        if step % 3 == 2 and d.endpoint.name != "e1":
            move(live, policy, d.endpoint, -1)
        assert_exact(r, live, policy, range(step, step + 3))


@pytest.mark.parametrize("policy", POLICIES)
def test_steering_only_reads_the_counts(policy: str) -> None:
    r = lor_router(policy, order=("e3", "e1", "e0", "e2"))
    live = Live()
    for name in ("e2", "e0", "e0", "e3"):  # first counted in another order than the pool's
        move(live, policy, view(r, name), 1)
    counts = (live.in_flight_by_pool if policy == POLICIES[0] else live.connections_by_pool)["a"]
    before = (list(counts.names), list(counts.counts), counts.version, list(counts.moved))
    assert_exact(r, live, policy)
    assert (list(counts.names), list(counts.counts), counts.version, list(counts.moved)) == before


@pytest.mark.parametrize("policy", POLICIES)
def test_r21_after_a_reload_that_reorders_the_pool(policy: str) -> None:
    before = lor_router(policy)
    after = lor_router(policy, order=("e3", "e1", "e0", "e2"))
    live = Live()
    for name, n in (("e0", 5), ("e1", 1), ("e3", 2)):
        for _ in range(n):
            move(live, policy, view(before, name), 1)
    assert_exact(before, live, policy)
    assert_exact(after, live, policy)  # read by name: the slots are in first-counted order
    # Requests that started under the old snapshot finish with its views (old positions).
    move(live, policy, view(before, "e0"), -1)
    move(live, policy, view(before, "e3"), -1)
    move(live, policy, view(after, "e2"), 1)
    counts = dict(live.in_flight if policy == POLICIES[0] else live.connections)
    assert counts == {"a/e0": 4, "a/e1": 1, "a/e3": 1, "a/e2": 1}
    assert_exact(after, live, policy)
    assert_exact(before, live, policy)  # and back: both routers may still be in use


def test_one_router_several_live_objects() -> None:
    r = lor_router()
    lives = [Live(in_flight={"a/e1": n}) for n in (0, 3, 50)]
    for _ in range(3):
        for live in lives:
            assert_exact(r, live, POLICIES[0], range(10))
        lives[1].started(view(r, "e2"))


def test_an_endpoint_missing_from_the_snapshot_keeps_its_count() -> None:
    old = lor_router()
    new = lor_router(order=("e1", "e2", "e3"))  # e0 was removed from the pool
    live = Live()
    live.started(view(old, "e0"))
    live.started(view(new, "e3"))
    assert_exact(new, live, POLICIES[0])
    live.finished(view(old, "e0"))
    assert dict(live.in_flight) == {"a/e0": 0, "a/e3": 1}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(sorted(WEIGHTS)), st.sampled_from((1, -1)), st.booleans()),
        max_size=40,
    ),
    reorder=st.permutations(sorted(WEIGHTS)),
)
def test_counts_match_a_plain_dictionary(
    ops: list[tuple[str, int, bool]], reorder: list[str]
) -> None:
    routers = (lor_router(), lor_router(order=tuple(reorder)))
    live, expected = Live(), {}
    for k, (name, delta, second) in enumerate(ops):
        r = routers[second]
        move(live, POLICIES[0], view(r, name), delta)
        expected[f"a/{name}"] = expected.get(f"a/{name}", 0) + delta
        if k % 4 == 0 and all(n >= 0 for n in expected.values()):
            assert_exact(routers[k % 8 == 0], live, POLICIES[0], range(k, k + 2))
    assert dict(live.in_flight) == expected
    assert live.pool_in_flight.get("a", 0) == sum(expected.values())


def test_r21_table_catches_up_after_any_number_of_writes() -> None:
    """Each router's table follows the writes it missed (Counts.moved), or starts over when
    it missed more than Counts remembers; two routers read one Counts at different versions."""
    one, two = lor_router(), lor_router()
    live = Live()
    rng = random.Random(7)
    names = sorted(WEIGHTS)
    for writes in (1, 2, 5, MOVED_LIMIT - 1, MOVED_LIMIT, MOVED_LIMIT + 1, 3 * MOVED_LIMIT):
        for _ in range(writes):
            counts = dict(live.in_flight)
            name = rng.choice(names)
            delta = -1 if counts.get(f"a/{name}", 0) > 0 and rng.random() < 0.4 else 1
            move(live, POLICIES[0], view(one, name), delta)
        assert_exact(one, live, POLICIES[0], range(writes, writes + 3))
        if writes % 2:
            assert_exact(two, live, POLICIES[0], range(writes, writes + 3))
