"""An in-memory stand-in for the store, for the simulator: the same records, no I/O.

It keeps what Redis keeps for a cluster (the latest vote per vantage point and endpoint,
the latest heartbeat per member) and lets the caller deliver published batches itself, in a
canonical order, so that a simulated run is a pure function of its seed.  Expiry is the pure
rule of the records (:meth:`~lb.cluster.votes.Vote.fresh`,
:meth:`~lb.cluster.votes.Heartbeat.fresh`), as the real driver also applies it.
"""

from __future__ import annotations

from lb.cluster.votes import Heartbeat, Vote

__all__ = ["MemoryStore"]


class MemoryStore:
    """Votes and heartbeats of one simulated cluster."""

    def __init__(self) -> None:
        self.votes: dict[tuple[str, str, str], Vote] = {}
        self.beats: dict[str, Heartbeat] = {}
        self.operations = 0

    def publish(self, batch: list[Vote]) -> None:
        """Store a batch (the ``HSET`` half; the caller delivers the ``PUBLISH`` half)."""
        for vote in batch:
            self.votes[vote.key] = vote
        self.operations += 2

    def beat(self, heartbeat: Heartbeat) -> None:
        """Store a heartbeat."""
        self.beats[heartbeat.member] = heartbeat
        self.operations += 1

    def leave(self, member: str) -> None:
        """Delete a member's heartbeat (a clean stop)."""
        self.beats.pop(member, None)
