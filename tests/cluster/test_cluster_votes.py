"""Vote and heartbeat records: round trips, and bad data rejected with a reason, never raised."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lb.cluster.votes import (
    MAX_BYTES,
    Heartbeat,
    Rejected,
    Vote,
    decode_heartbeat,
    decode_votes,
    encode_heartbeat,
    encode_vote,
    encode_votes,
    vote_field,
    vote_ttl,
)
from lb.core.health import Health

names = st.text(min_size=1, max_size=40)
votes = st.builds(
    Vote,
    pool=names,
    endpoint=names,
    vantage=names,
    member=names,
    state=st.sampled_from([Health.HEALTHY, Health.UNHEALTHY]),
    at=st.floats(0, 1e10),
    ttl=st.floats(0, 86400),
    reason=st.text(max_size=40),
)


@given(votes)
def test_a_vote_round_trips(vote: Vote) -> None:
    assert decode_votes(encode_vote(vote)) == ([vote], [])


@given(st.lists(votes, max_size=20))
def test_a_batch_round_trips(batch: list[Vote]) -> None:
    assert decode_votes(encode_votes(batch)) == (batch, [])


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_are_rejected(data: bytes) -> None:
    got, rejected = decode_votes(data)
    assert all(isinstance(v, Vote) for v in got)
    assert all(isinstance(r, Rejected) for r in rejected)
    assert isinstance(decode_heartbeat(data), Heartbeat | Rejected)


def vote_obj(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "pool": "p",
        "endpoint": "e",
        "vantage": "fra",
        "member": "m1",
        "state": "healthy",
        "at": 100.0,
        "ttl": 30.0,
        "reason": "",
    }
    return {**base, **over}


def test_another_format_is_rejected_as_format() -> None:
    got, rejected = decode_votes(json.dumps(vote_obj(v=2)))
    assert got == []
    assert [r.kind for r in rejected] == ["format"]


def test_a_batch_keeps_its_good_votes() -> None:
    batch = [vote_obj(), vote_obj(state="unknown"), vote_obj(at=float("nan")), 7, vote_obj(ttl=-1)]
    got, rejected = decode_votes(json.dumps(batch))
    assert [v.member for v in got] == ["m1"]
    assert [r.kind for r in rejected] == ["invalid"] * 4


def test_huge_values_are_rejected_unread() -> None:
    got, rejected = decode_votes(b"[" + b" " * MAX_BYTES + b"]")
    assert got == [] and [r.kind for r in rejected] == ["too_large"]


def test_garbage_and_deep_nesting_are_rejected() -> None:
    assert [r.kind for r in decode_votes(b"\xff\xfe")[1]] == ["garbage"]
    assert decode_votes(b"[" * 100_000)[1][0].kind in ("garbage", "too_large")
    assert isinstance(decode_heartbeat(b"{}"), Rejected)


def test_heartbeat_round_trips() -> None:
    hb = Heartbeat(member="m", vantage="fra", config="abc", secret="f", owned=3, at=5, ttl=6)
    assert decode_heartbeat(encode_heartbeat(hb)) == hb


def test_freshness_and_ttl_rule() -> None:
    assert vote_ttl(10, 2, 1, factor=3) == 34
    vote = Vote(
        pool="p", endpoint="e", vantage="v", member="m", state=Health.HEALTHY, at=100, ttl=34
    )
    assert vote.fresh(134) and not vote.fresh(134.001)
    assert vote_field(vote) == '["v","p","e"]'
