"""Session affinity (R34-R40) and the signed ``__cflb`` cookie."""

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
    replace,
    request,
    router,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.model import SessionAffinityAttributes
from steering import Affinity, HeaderSessions, Router
from steering.affinity import HeaderSession, session_key, sign, verify
from steering.pick import KeyedDraws

WALL = 1_700_000_000.0


def cookie_lb(mode: str = "cookie", pools=("a", "b"), **kw):
    return load_balancer(list(pools), session_affinity=mode, **kw)


def two_pools(mode: str = "cookie", **kw):
    return config([pool("a", 3), pool("b", 2)], cookie_lb(mode, **kw))


def pinned(pool_name: str, name: str, *, lb: str = HOST, expires: float = WALL + 3600) -> str:
    return sign(SECRET, lb, pool_name, name, expires)


# --------------------------------------------------------------------------- R34


@pytest.mark.parametrize("mode", ["", "none"])
def test_r34_no_affinity_creates_and_honours_nothing(mode: str) -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"], session_affinity=mode)))
    cookie = pinned("a", "a-2")
    seen = set()
    for s in range(200):
        d = r.decide(request(cookie=cookie, wall=WALL), random.Random(s))
        assert d.set_cookie is None
        assert (d.affinity, d.reason) == (Affinity.NONE, "policy")
        seen.add(d.endpoint.name)
    assert seen == {"a-0", "a-1", "a-2"}


def test_r34_affinity_never_applies_on_dns_only_load_balancers() -> None:
    r = router(
        config([pool("a", 3)], load_balancer(["a"], session_affinity="cookie", proxied=False))
    )
    d = r.decide(request(cookie=pinned("a", "a-2"), wall=WALL), random.Random(1))
    assert (d.affinity, d.set_cookie, d.reason) == (Affinity.NONE, None, "policy")


# --------------------------------------------------------------------------- R35


def test_r35_new_session_gets_a_signed_cookie_with_the_default_ttl() -> None:
    r = router(two_pools())
    d = r.decide(request(wall=WALL), random.Random(1))
    assert d.affinity == Affinity.NEW
    value = verify(SECRET, d.set_cookie)
    assert value is not None
    assert (value.load_balancer, value.pool, value.endpoint) == (HOST, "a", d.endpoint.name)
    assert value.expires == WALL + 82800


def test_r35_cookie_lifetime_is_absolute_and_never_extended() -> None:
    r = router(two_pools(session_affinity_ttl=1800))
    first = r.decide(request(wall=WALL), random.Random(1))
    assert verify(SECRET, first.set_cookie).expires == WALL + 1800
    # a hit 20 minutes later sets no cookie: the lifetime counts from creation
    hit = r.decide(request(cookie=first.set_cookie, wall=WALL + 1200), random.Random(2))
    assert (hit.affinity, hit.set_cookie) == (Affinity.HIT, None)
    # at the expiry the session is over: steered normally, new cookie
    late = r.decide(request(cookie=first.set_cookie, wall=WALL + 1800), random.Random(2))
    assert late.affinity == Affinity.EXPIRED
    assert verify(SECRET, late.set_cookie).expires == WALL + 1800 + 1800


# --------------------------------------------------------------------------- R36


def test_r36_valid_cookie_wins_over_weights_policy_and_pool_order() -> None:
    b = pool("b", [endpoint("b-0"), endpoint("b-1", weight=0.01)])
    r = router(config([pool("a", 3), b], cookie_lb()))
    cookie = pinned("b", "b-1")
    for s in range(100):
        d = r.decide(request(cookie=cookie, wall=WALL), random.Random(s), trace=s == 0)
        assert (d.pool.name, d.endpoint.name, d.reason, d.affinity) == (
            "b",
            "b-1",
            "affinity",
            Affinity.HIT,
        )
        assert d.pinned == "b/b-1"
        if s == 0:
            assert "affinity: session pinned to b/b-1; weights and policy skipped" in d.trace


# --------------------------------------------------------------------------- R37


def test_r37_unhealthy_pinned_endpoint_is_remapped_with_a_new_cookie() -> None:
    r = router(two_pools(), down={"a/a-1"})
    d = r.decide(request(cookie=pinned("a", "a-1"), wall=WALL), random.Random(1), trace=True)
    assert d.affinity == Affinity.REMAPPED
    assert d.endpoint.name in {"a-0", "a-2"}
    assert verify(SECRET, d.set_cookie).endpoint == d.endpoint.name
    assert "affinity: __cflb remapped" in d.trace


def test_r37_pinned_endpoint_in_ineligible_pool_is_remapped() -> None:
    cfg = config([pool("a", 3, minimum_origins=3), pool("b", 2)], cookie_lb())
    r = router(cfg, down={"a/a-0"})  # a-1 is healthy but pool a is critical
    d = r.decide(request(cookie=pinned("a", "a-1"), wall=WALL), random.Random(1))
    assert (d.affinity, d.pool.name) == (Affinity.REMAPPED, "b")
    assert verify(SECRET, d.set_cookie).pool == "b"


def test_r37_endpoint_removed_from_configuration_is_remapped() -> None:
    r = router(two_pools())
    d = r.decide(request(cookie=pinned("a", "gone"), wall=WALL), random.Random(1))
    assert d.affinity == Affinity.REMAPPED
    d = r.decide(request(cookie=pinned("nopool", "x"), wall=WALL), random.Random(1))
    assert d.affinity == Affinity.REMAPPED


# --------------------------------------------------------------------------- R38


def test_r38_ip_cookie_same_ip_same_first_endpoint() -> None:
    r = router(config([pool("a", 10)], cookie_lb("ip_cookie", pools=("a",))))
    firsts = {}
    for i in range(40):
        ip = f"203.0.113.{i}"
        picks = {
            r.decide(request(client_ip=ip, wall=WALL), random.Random(s)).endpoint.name
            for s in range(5)
        }
        assert len(picks) == 1
        firsts[ip] = picks.pop()
    assert len(set(firsts.values())) > 3  # different IPs still spread
    # a new router over the same set (e.g. another replica) agrees
    again = router(config([pool("a", 10)], cookie_lb("ip_cookie", pools=("a",))))
    assert all(
        again.decide(request(client_ip=ip), random.Random(99)).endpoint.name == e
        for ip, e in firsts.items()
    )


def test_r38_ip_cookie_forged_or_expired_cookie_is_steered_like_no_cookie() -> None:
    r = router(config([pool("a", 10)], cookie_lb("ip_cookie", pools=("a",))))
    ip = "203.0.113.7"
    first = r.decide(request(client_ip=ip, wall=WALL), random.Random(1)).endpoint.name
    expired = sign(SECRET, HOST, "a", "a-0", WALL - 1)
    for cookie in ("v1.forged.0.x", expired):
        for seed in range(5):
            d = r.decide(request(client_ip=ip, cookie=cookie, wall=WALL), random.Random(seed))
            assert d.affinity in (Affinity.INVALID, Affinity.EXPIRED)
            assert d.endpoint.name == first


def test_r38_ip_cookie_sets_a_cookie_too() -> None:
    r = router(config([pool("a", 3)], cookie_lb("ip_cookie", pools=("a",))))
    d = r.decide(request(client_ip="203.0.113.9", wall=WALL), random.Random(1))
    assert d.affinity == Affinity.NEW and verify(SECRET, d.set_cookie) is not None


# --------------------------------------------------------------------------- R39


def header_router(sessions: HeaderSessions, headers=("x-session",), require_all=False, ttl=None):
    attrs = SessionAffinityAttributes(headers=headers, require_all_headers=require_all)
    lb = cookie_lb(
        "header", pools=("a",), session_affinity_attributes=attrs, session_affinity_ttl=ttl
    )
    return remembering(config([pool("a", 10)], lb), sessions=sessions)


def test_r39_decide_only_reads_the_session_table() -> None:
    sessions = HeaderSessions()
    r = header_router(sessions, ttl=30).router
    h = {"x-session": "s1"}
    first = r.decide(request(headers=h, now=0), random.Random(1))
    assert len(sessions) == 0 and first.endpoint is not None
    assert first.remember == HeaderSession(HOST, ("s1",), first.endpoint.key, 0)
    sessions.store(first.remember)
    hit = r.decide(request(headers=h, now=20), random.Random(2))
    assert hit.affinity == Affinity.HIT and hit.endpoint == first.endpoint
    # the hit asks to restart the idle timer; until it is stored, the session expires at 30
    assert hit.remember == HeaderSession(HOST, ("s1",), first.endpoint.key, 20)
    assert sessions.saved()[0][1:] == (first.endpoint.key, 0)
    late = r.decide(request(headers=h, now=31), random.Random(3))
    assert late.affinity == Affinity.NEW and sessions.saved()[0][1:] == (first.endpoint.key, 0)


def test_r39_no_session_without_the_configured_header() -> None:
    sessions = HeaderSessions()
    r = header_router(sessions)
    d = r.decide(request(now=0), random.Random(1), trace=True)
    assert d.affinity == Affinity.NONE and len(sessions) == 0
    assert "affinity: header, configured headers absent: no session" in d.trace


def test_r39_header_session_is_created_then_honoured() -> None:
    sessions = HeaderSessions()
    r = header_router(sessions)
    first = r.decide(request(headers={"x-session": "s1"}, now=0), random.Random(1))
    assert first.affinity == Affinity.NEW and first.set_cookie is None
    for s in range(30):
        d = r.decide(request(headers={"x-session": "s1"}, now=10), random.Random(s))
        assert (d.affinity, d.endpoint) == (Affinity.HIT, first.endpoint)
    # a different key is a different session
    other = {
        r.decide(request(headers={"x-session": f"k{i}"}, now=0), random.Random(i)).affinity
        for i in range(5)
    }
    assert other == {Affinity.NEW}
    assert len(sessions) == 6


def test_r39_idle_expiry_is_sliding() -> None:
    sessions = HeaderSessions()
    r = header_router(sessions, ttl=30)
    h = {"x-session": "s"}
    first = r.decide(request(headers=h, now=0), random.Random(1))
    for t in (20, 40, 60, 80):  # each hit within 30 s of the previous one keeps it alive
        assert r.decide(request(headers=h, now=t), random.Random(t)).affinity == Affinity.HIT
    assert r.decide(request(headers=h, now=80 + 31), random.Random(5)).affinity == Affinity.NEW
    assert first.endpoint is not None


def test_r39_header_ttl_default_is_1800() -> None:
    lb = cookie_lb("header", session_affinity_attributes=SessionAffinityAttributes(headers=("x",)))
    assert lb.effective_affinity_ttl == 1800
    assert cookie_lb("cookie").effective_affinity_ttl == 82800


def test_r39_require_all_headers() -> None:
    sessions = HeaderSessions()
    r = header_router(sessions, headers=("x-a", "x-b"), require_all=True)
    assert r.decide(request(headers={"x-a": "1"}), random.Random(1)).affinity == Affinity.NONE
    assert (
        r.decide(request(headers={"x-a": "1", "x-b": "2"}), random.Random(1)).affinity
        == Affinity.NEW
    )
    r = header_router(HeaderSessions(), headers=("x-a", "x-b"), require_all=False)
    assert r.decide(request(headers={"x-b": "2"}), random.Random(1)).affinity == Affinity.NEW


def test_r39_session_key_is_the_tuple_of_values_and_cookies() -> None:
    cookies = {"sid": "7", "lang": "de", "__cflb": "ignored"}
    assert session_key(("X-A", "cookie"), {"x-a": "1"}, cookies, require_all=False) == (
        "1",
        "lang=de;sid=7",
    )
    assert session_key(("cookie:sid",), {}, cookies, require_all=False) == ("sid=7",)
    assert session_key(("cookie:sid,uid",), {}, cookies, require_all=True) is None
    assert session_key(("x-a", "x-b"), {"x-b": "2"}, {}, require_all=False) == ("", "2")


# --------------------------------------------------------------------------- R40


def drain_setup(drain: float) -> tuple[Router, str]:
    """Pool a with a-1 disabled by a reload at now=100; a cookie pinned to a-1."""
    attrs = SessionAffinityAttributes(drain_duration=drain)
    cfg = config([pool("a", 3)], cookie_lb(pools=("a",), session_affinity_attributes=attrs))
    hb = book(cfg)
    a = cfg.pools[0]
    origins = (a.origins[0], replace(a.origins[1], enabled=False), a.origins[2])
    hb.reconfigure(replace(cfg, pools=(replace(a, origins=origins),)), now=100.0)
    return Router(hb.snapshot(), secret=SECRET), pinned("a", "a-1")


def test_r40_drain_keeps_existing_sessions_for_drain_duration() -> None:
    r, cookie = drain_setup(60)
    d = r.decide(request(cookie=cookie, now=159.0, wall=WALL), random.Random(1), trace=True)
    assert (d.endpoint.name, d.affinity) == ("a-1", Affinity.HIT)
    assert "affinity: a/a-1 disabled, draining for 60s" in d.trace
    d = r.decide(request(cookie=cookie, now=160.0, wall=WALL), random.Random(1))
    assert d.affinity == Affinity.REMAPPED and d.endpoint.name != "a-1"
    # new sessions never select the draining endpoint
    assert all(
        r.decide(request(now=120.0, wall=WALL), random.Random(s)).endpoint.name != "a-1"
        for s in range(200)
    )


def test_r40_zero_drain_reassigns_immediately() -> None:
    r, cookie = drain_setup(0)
    d = r.decide(request(cookie=cookie, now=100.0, wall=WALL), random.Random(1))
    assert d.affinity == Affinity.REMAPPED and d.endpoint.name != "a-1"


# --------------------------------------------------------------------------- cookie integrity


def test_cookie_forged_altered_or_foreign_is_invalid() -> None:
    r = router(two_pools())
    good = pinned("b", "b-1")
    head, body, expiry, mac = good.split(".")
    forged = [
        f"{head}.{body}.{expiry}.{'A' * len(mac)}",  # wrong MAC
        f"{head}.{body}.{int(expiry) + 10**6}.{mac}",  # extended expiry
        sign(b"another-secret", HOST, "b", "b-1", WALL + 3600),  # other secret
        sign(SECRET, "other.example.com", "b", "b-1", WALL + 3600),  # other load balancer
        "v2." + good[3:],
        "garbage",
        "",
        "v1.é.1.é",  # non-ASCII must not crash the MAC comparison
        "v1." + "A" * 5000 + ".1.x",
    ]
    for value in forged:
        d = r.decide(request(cookie=value, wall=WALL), random.Random(1))
        assert d.reason == "policy", value
        assert d.affinity == (Affinity.INVALID if value else Affinity.NEW)
        assert verify(SECRET, d.set_cookie) is not None


def test_cookie_for_another_load_balancer_is_not_honoured_even_if_pool_exists() -> None:
    other = load_balancer(["a", "b"], name="other.example.com", session_affinity="cookie")
    cfg = config([pool("a", 3), pool("b", 2)], [cookie_lb(), other])
    r = router(cfg)
    d = r.decide(
        request(cookie=pinned("b", "b-1", lb="other.example.com"), wall=WALL), random.Random(1)
    )
    assert d.affinity == Affinity.INVALID
    # but it works on its own load balancer
    d = r.decide(
        request(
            host="other.example.com", cookie=pinned("b", "b-1", lb="other.example.com"), wall=WALL
        ),
        random.Random(1),
    )
    assert (d.affinity, d.endpoint.name) == (Affinity.HIT, "b-1")


def test_cookie_expired_is_reported_expired() -> None:
    r = router(two_pools())
    d = r.decide(
        request(cookie=pinned("b", "b-1", expires=WALL), wall=WALL), random.Random(1), trace=True
    )
    assert d.affinity == Affinity.EXPIRED
    assert "affinity: __cflb expired" in d.trace


def test_cookie_pool_of_another_lb_is_not_reachable_through_this_lb() -> None:
    cfg = config([pool("a", 1), pool("b", 1), pool("secret", 1)], cookie_lb())
    d = router(cfg).decide(
        request(cookie=pinned("secret", "secret-0"), wall=WALL), random.Random(1)
    )
    assert d.affinity == Affinity.REMAPPED and d.pool.name != "secret"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=80))
def test_cookie_verify_never_raises_and_accepts_only_genuine_values(value: str) -> None:
    assert verify(SECRET, value) is None
    genuine = sign(SECRET, HOST, "p", value or "x", 5)
    assert verify(SECRET, genuine) is not None or "\x1f" in value


def test_r39_header_sessions_are_bounded_least_recently_used_first() -> None:
    sessions = HeaderSessions(max_sessions=3)
    for i in range(3):
        sessions.put("lb", (f"k{i}",), f"a/a-{i}", now=float(i))
    assert sessions.peek("lb", ("k0",), now=3.0, ttl=60) == "a/a-0"
    sessions.put("lb", ("k0",), "a/a-0", now=3.0)  # a hit is stored again: k0 is the newest
    sessions.put("lb", ("k3",), "a/a-3", now=4.0)  # evicts k1, the least recently used
    assert len(sessions) == 3
    assert sessions.peek("lb", ("k1",), now=4.0, ttl=60) is None
    assert sessions.peek("lb", ("k0",), now=4.0, ttl=60) == "a/a-0"
    assert sessions.peek("lb", ("k2",), now=4.0, ttl=60) == "a/a-2"


def test_r38_keyed_draws_are_fixed_by_the_key_and_uniform() -> None:
    def stream(key: str, n: int) -> list[float]:
        draws = KeyedDraws(key)
        return [draws.random() for _ in range(n)]

    assert stream("203.0.113.7", 5) == stream("203.0.113.7", 5)
    assert stream("203.0.113.7", 5) != stream("203.0.113.8", 5)
    values = stream("198.51.100.1", 20_000)
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    deciles = [0] * 10
    for v in values:
        deciles[int(v * 10)] += 1
    assert max(deciles) - min(deciles) < 300  # ~2,000 each
    with pytest.raises(NotImplementedError):
        KeyedDraws("x").getrandbits(8)
