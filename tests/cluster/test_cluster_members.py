"""Membership from heartbeats and rendezvous sharding of probe identities."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lb.cluster.members import live_members, owned, owner, probe_key
from lb.cluster.votes import Heartbeat

KEYS = [f"pool/ep-{i}" for i in range(600)]


def hb(member: str, at: float, ttl: float = 6.0, vantage: str = "fra") -> Heartbeat:
    return Heartbeat(member=member, vantage=vantage, at=at, ttl=ttl)


def test_stale_heartbeats_drop_out_and_me_always_counts() -> None:
    me = hb("me", 100)
    live = live_members([hb("a", 95), hb("b", 93.9), hb("a", 90)], now=100, me=me)
    assert sorted(live) == ["a", "me"]
    assert live["a"].at == 95


@given(st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=6))
def test_every_key_has_exactly_one_owner(members: set[str]) -> None:
    shares = [owned(KEYS[:60], me=m, members=sorted(members)) for m in members]
    assert sum(len(s) for s in shares) == 60
    assert set().union(*shares) == set(KEYS[:60])


def test_total_probes_stay_constant_and_shares_are_even() -> None:
    for n in (1, 2, 3, 5):
        members = [f"fra/host{i}" for i in range(n)]
        shares = [len(owned(KEYS, me=m, members=members)) for m in members]
        assert sum(shares) == len(KEYS)
        assert min(shares) > len(KEYS) / n * 0.7


def test_a_leaving_member_moves_only_its_keys() -> None:
    members = ["a", "b", "c"]
    before = {k: owner(k, members) for k in KEYS}
    after = {k: owner(k, ["a", "c"]) for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "b"}


def test_probe_key_ignores_fanout_order() -> None:
    assert probe_key([("b", "1"), ("a", "2")]) == probe_key([("a", "2"), ("b", "1")])
