"""Votes and heartbeats: what replicas of one cluster tell each other, as plain records.

Pure: no I/O, no clock; times are wall-clock seconds passed in by the driver (replicas on
different machines share no monotonic clock; ``docs/cluster.md`` states what clock skew does).

* A :class:`Vote` is one vantage point's verdict on one endpoint after a probe: its R12 state
  (``healthy``/``unhealthy``), the probe's reason, when, and how long it stays valid
  (``ttl``: the publisher's own interval times a small factor, see :func:`vote_ttl`).
* A :class:`Heartbeat` says that a replica (a *member*) is alive: its vantage point, the hash
  of its configuration, a fingerprint of its affinity secret and how many probes it owns.

Both are JSON objects with a format number ``v``.  :func:`decode_votes` and
:func:`decode_heartbeat` never raise: anything else (garbage, another format, a value larger
than :data:`MAX_BYTES`, out-of-range numbers) comes back as a :class:`Rejected` reason that the
driver counts and otherwise ignores, so bad data in the store cannot crash a replica.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lb.core.health import Health

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "MAX_TTL",
    "Heartbeat",
    "Rejected",
    "Vote",
    "decode_heartbeat",
    "decode_votes",
    "encode_heartbeat",
    "encode_vote",
    "encode_votes",
    "vote_field",
    "vote_ttl",
]

FORMAT = 1
"""The record format this code writes and reads; other formats are rejected."""

MAX_BYTES = 1 << 20
"""The largest value decoded (a batch of votes); larger values are rejected unread."""

MAX_TTL = 86400.0
"""The longest validity a record may claim."""

_MAX_NAME = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """One vantage point's verdict on one (pool, endpoint)."""

    pool: str
    endpoint: str
    vantage: str
    member: str
    """The replica that probed (vantage points may have several)."""
    state: Health
    """``HEALTHY`` or ``UNHEALTHY``: a vantage point still ``UNKNOWN`` does not vote."""
    at: float
    """Wall-clock seconds when the probe ended."""
    ttl: float
    """Seconds after ``at`` during which the vote counts."""
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """``(pool, endpoint, vantage)``: a newer vote with the same key replaces this one."""
        return (self.pool, self.endpoint, self.vantage)

    def fresh(self, now: float) -> bool:
        """True while the vote counts (see ``docs/cluster.md``, vote expiry)."""
        return now - self.at <= self.ttl


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """One member's announcement that it is alive, refreshed every heartbeat period."""

    member: str
    vantage: str
    datacenter: str = ""
    config: str = ""
    """Hash of the shared part of the applied configuration (:mod:`lb.cluster.fingerprint`)."""
    secret: str = ""
    """Fingerprint of the affinity secret (never the secret)."""
    owned: int = 0
    """Probe identities this member runs."""
    at: float = 0.0
    ttl: float = 0.0
    started: float = 0.0

    def fresh(self, now: float) -> bool:
        """True while the member counts as alive."""
        return now - self.at <= self.ttl


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a stored value was ignored (one word, for a metric label, and a detail)."""

    kind: str
    detail: str


def vote_ttl(interval: float, timeout: float, retries: int, *, factor: float) -> float:
    """How long a vote counts: ``factor`` intervals plus one check's worst duration.

    A vantage point refreshes its vote once per ``interval``; a check may take up to
    ``timeout * (retries + 1)`` seconds.  With ``factor`` 3 a vote survives two lost refreshes
    and expires at the third.
    """
    return factor * interval + timeout * (retries + 1)


def vote_field(vote: Vote) -> str:
    """The hash field under which ``vote`` is stored: one per (vantage, pool, endpoint)."""
    return json.dumps([vote.vantage, vote.pool, vote.endpoint], separators=(",", ":"))


def _vote_obj(vote: Vote) -> dict[str, Any]:
    return {
        "v": FORMAT,
        "pool": vote.pool,
        "endpoint": vote.endpoint,
        "vantage": vote.vantage,
        "member": vote.member,
        "state": vote.state.value,
        "at": vote.at,
        "ttl": vote.ttl,
        "reason": vote.reason,
    }


def encode_vote(vote: Vote) -> bytes:
    """One vote as stored in the vote hash."""
    return json.dumps(_vote_obj(vote), separators=(",", ":")).encode()


def encode_votes(votes: list[Vote]) -> bytes:
    """A batch of votes as published on the vote channel."""
    return json.dumps([_vote_obj(v) for v in votes], separators=(",", ":")).encode()


def encode_heartbeat(hb: Heartbeat) -> bytes:
    """A heartbeat as stored under its member key."""
    return json.dumps(
        {
            "v": FORMAT,
            "member": hb.member,
            "vantage": hb.vantage,
            "datacenter": hb.datacenter,
            "config": hb.config,
            "secret": hb.secret,
            "owned": hb.owned,
            "at": hb.at,
            "ttl": hb.ttl,
            "started": hb.started,
        },
        separators=(",", ":"),
    ).encode()


def _load(data: bytes | str) -> Any:
    if len(data) > MAX_BYTES:
        raise _BadError("too_large", f"{len(data)} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _BadError("garbage", str(exc)[:80]) from None


class _BadError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _name(obj: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > _MAX_NAME or (not empty and not value):
        raise _BadError("invalid", f"{key}: not a name")
    return value


def _number(obj: dict[str, Any], key: str, low: float, high: float) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadError("invalid", f"{key}: not a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise _BadError("invalid", f"{key}: out of range")
    return number


def _check_format(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _BadError("invalid", "not an object")
    if obj.get("v") != FORMAT:
        raise _BadError("format", f"format {obj.get('v')!r}, this replica reads {FORMAT}")
    return obj


def _vote(obj: Any) -> Vote:
    obj = _check_format(obj)
    state = obj.get("state")
    if state not in (Health.HEALTHY.value, Health.UNHEALTHY.value):
        raise _BadError("invalid", "state: not healthy or unhealthy")
    return Vote(
        pool=_name(obj, "pool"),
        endpoint=_name(obj, "endpoint"),
        vantage=_name(obj, "vantage"),
        member=_name(obj, "member"),
        state=Health(state),
        at=_number(obj, "at", 0.0, 1e11),
        ttl=_number(obj, "ttl", 0.0, MAX_TTL),
        reason=_name(obj, "reason", empty=True),
    )


def decode_votes(data: bytes | str) -> tuple[list[Vote], list[Rejected]]:
    """The votes in a stored vote or a published batch, and what was rejected.

    A batch with some bad entries keeps the good ones.
    """
    try:
        obj = _load(data)
    except _BadError as bad:
        return [], [Rejected(bad.kind, bad.detail)]
    items = obj if isinstance(obj, list) else [obj]
    votes: list[Vote] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            votes.append(_vote(item))
        except _BadError as bad:
            rejected.append(Rejected(bad.kind, bad.detail))
    return votes, rejected


def decode_heartbeat(data: bytes | str) -> Heartbeat | Rejected:
    """The heartbeat in a stored value, or why it was rejected."""
    try:
        obj = _check_format(_load(data))
        return Heartbeat(
            member=_name(obj, "member"),
            vantage=_name(obj, "vantage"),
            datacenter=_name(obj, "datacenter", empty=True),
            config=_name(obj, "config", empty=True),
            secret=_name(obj, "secret", empty=True),
            owned=int(_number(obj, "owned", 0, 1e9)),
            at=_number(obj, "at", 0.0, 1e11),
            ttl=_number(obj, "ttl", 0.0, MAX_TTL),
            started=_number(obj, "started", 0.0, 1e11),
        )
    except _BadError as bad:
        return Rejected(bad.kind, bad.detail)
