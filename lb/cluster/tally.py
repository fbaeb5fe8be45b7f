"""The tally: the latest fresh vote of every other vantage point, fed into the health book.

Pure and synchronous (the simulator runs it over an in-memory store in virtual time).  There
is no second aggregation here: each accepted vote becomes one ``assign`` of that vantage
point's state on the :class:`Sink` (the :class:`~lb.engine.Engine`, hence
:meth:`lb.core.book.HealthBook.assign`), and each vote that goes stale one ``withdraw``; the
book's R14 majority does the rest.

Rules (``docs/cluster.md``):

* A vote is accepted when it is fresh (``now - at <= ttl``), not this replica's own (its own
  verdicts are already in the book through the monitors), and newer than the held vote for the
  same (pool, endpoint, vantage).  Votes of this replica's own vantage point from other
  members (peers sharing the probes, or this replica's previous life) are accepted too: they
  are how a replica learns the state of probes it does not own.
* :meth:`Tally.expire` withdraws every held vote older than its ``ttl``: a vantage point that
  stopped voting (dead, partitioned from the store) leaves the majority instead of pinning its
  last verdict.  The configured (own) vantage point never leaves the book; only its state
  stops being refreshed by peers.
"""

from __future__ import annotations

from typing import Protocol

from lb.cluster.votes import Vote
from lb.core.health import Health, HealthEvent, ProbeResult

__all__ = ["Sink", "Tally", "verdict"]


def verdict(
    result: ProbeResult, state: Health, *, member: str, now: float, ttl: float
) -> Vote | None:
    """The vote a local probe result gives: the vantage point's state after it was applied
    (``state``), or None while that state is still ``UNKNOWN`` (no vote yet)."""
    if state is Health.UNKNOWN:
        return None
    return Vote(
        pool=result.pool,
        endpoint=result.endpoint,
        vantage=result.vantage,
        member=member,
        state=state,
        at=now,
        ttl=ttl,
        reason=result.reason,
    )


class Sink(Protocol):
    """Where verdicts go: :class:`lb.engine.Engine` implements it."""

    def assign(
        self, pool: str, endpoint: str, vantage: str, state: Health, *, at: float, reason: str = ""
    ) -> list[HealthEvent]: ...

    def withdraw(
        self, pool: str, endpoint: str, vantage: str, *, at: float
    ) -> list[HealthEvent]: ...


class Tally:
    """The held votes of one replica (``me`` is its member id)."""

    def __init__(self, sink: Sink, *, me: str) -> None:
        self.sink = sink
        self.me = me
        self.votes: dict[tuple[str, str, str], Vote] = {}
        self.accepted = 0
        self.ignored = 0
        """Votes not taken: stale, own, or older than the held one."""

    def offer(self, vote: Vote, *, now: float, at: float) -> bool:
        """Take ``vote`` if it counts (see the module docstring); ``now`` is wall-clock
        seconds, ``at`` the engine clock stamped on the resulting events."""
        held = self.votes.get(vote.key)
        if (
            vote.member == self.me
            or not vote.fresh(now)
            or (held is not None and held.at >= vote.at)
        ):
            self.ignored += 1
            return False
        self.votes[vote.key] = vote
        self.accepted += 1
        self.sink.assign(
            vote.pool, vote.endpoint, vote.vantage, vote.state, at=at, reason=vote.reason
        )
        return True

    def expire(self, *, now: float, at: float) -> list[Vote]:
        """Withdraw and forget every held vote that is no longer fresh; returns them."""
        stale = [v for v in self.votes.values() if not v.fresh(now)]
        for vote in stale:
            del self.votes[vote.key]
            self.sink.withdraw(vote.pool, vote.endpoint, vote.vantage, at=at)
        return stale

    def reapply(self, *, now: float, at: float) -> None:
        """Assign every held fresh vote again (after a reload reset some endpoints)."""
        self.expire(now=now, at=at)
        for vote in self.votes.values():
            self.sink.assign(
                vote.pool, vote.endpoint, vote.vantage, vote.state, at=at, reason=vote.reason
            )

    def ages(self, now: float) -> dict[str, float]:
        """The age of the newest held vote per vantage point (for metrics and status)."""
        newest: dict[str, float] = {}
        for vote in self.votes.values():
            newest[vote.vantage] = max(newest.get(vote.vantage, 0.0), vote.at)
        return {v: max(0.0, now - at) for v, at in newest.items()}
