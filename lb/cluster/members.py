"""Membership from heartbeats, and probe sharding by rendezvous hashing.

Pure: the driver passes the heartbeats it read and the wall-clock ``now``.

* **Membership**: a member is alive while its latest heartbeat is fresh
  (``now - at <= ttl``); the store expires the key too, so a dead replica disappears even if
  nobody reads its last heartbeat.  This replica always counts itself.
* **Sharding** (rendezvous, or highest-random-weight, hashing): the owner of a probe identity
  among the live members of one vantage point is the member with the highest
  ``hash(member, key)``.  Every member computes the same owner from the same member list, with
  no coordination; when a member leaves only its keys move (each to the member with the next
  highest weight), and when one joins it takes about ``1/n`` of the keys from the others.
  The number of probes per vantage point stays the number of probe identities whatever the
  number of replicas there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from lb.cluster.votes import Heartbeat

__all__ = ["live_members", "owned", "owner", "probe_key"]


def live_members(
    heartbeats: Iterable[Heartbeat], *, now: float, me: Heartbeat
) -> dict[str, Heartbeat]:
    """Fresh heartbeats by member id, the latest per member, always including ``me``."""
    out: dict[str, Heartbeat] = {}
    for hb in heartbeats:
        if not hb.fresh(now):
            continue
        held = out.get(hb.member)
        if held is None or hb.at > held.at:
            out[hb.member] = hb
    out[me.member] = me
    return out


def _weight(member: str, key: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, members: Sequence[str]) -> str:
    """The member that probes ``key``: the highest rendezvous weight (ties: smallest id)."""
    if not members:
        raise ValueError("owner() needs at least one member")
    return max(members, key=lambda m: (_weight(m, key), _neg(m)))


def _neg(member: str) -> tuple[int, ...]:
    return tuple(-b for b in member.encode())


def owned(keys: Iterable[str], *, me: str, members: Sequence[str]) -> set[str]:
    """The keys among ``keys`` that ``me`` owns among ``members`` (``me`` is always one)."""
    peers = sorted({*members, me})
    return {k for k in keys if owner(k, peers) == me}


def probe_key(fanout: Iterable[tuple[str, str]]) -> str:
    """The shard key of a probe: its (pool, endpoint) targets, which every replica's
    configuration names the same way (unlike dial addresses, which ``connect_to`` may change
    per replica)."""
    return "\n".join(sorted(f"{pool}/{endpoint}" for pool, endpoint in fanout))
