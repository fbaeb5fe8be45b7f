"""Endpoint health: one hysteresis machine per vantage point, and their majority.

Theory of operation
===================

Inputs are :class:`ProbeResult` facts stamped by the monitor driver.  For every
(pool, endpoint, vantage point) a :class:`Check` counts results in a row:

Rule 1 (R11)
    A monitored endpoint starts ``UNKNOWN``; ``UNKNOWN`` is not eligible.
Rule 2 (R12)
    From ``HEALTHY`` it becomes ``UNHEALTHY`` after ``max(1, consecutive_down)`` failed checks
    in a row; from ``UNHEALTHY`` it becomes ``HEALTHY`` after ``max(1, consecutive_up)`` passes
    in a row.  A result that agrees with the current state resets the opposite run.
Rule 3 (R12, from unknown)
    From ``UNKNOWN`` the first state is whichever run completes first: ``max(1, consecutive_up)``
    passes or ``max(1, consecutive_down)`` failures.
Rule 4 (R14, majority)
    The endpoint's aggregate health over ``n`` vantage points is ``HEALTHY`` when strictly more
    than half of all ``n`` are healthy.  It stays ``UNKNOWN`` until more than half have
    reached a state (so that one early answer does not decide at start-up), and is
    ``UNHEALTHY`` otherwise: a tie is not a majority for healthy.  With one vantage point it is
    simply that vantage point's state.
Rule 4a (R16, monitor groups)
    A pool with a monitor group has one counter per (endpoint, vantage point, member), each
    with its member monitor's thresholds; a member's state stands until its next result.  The
    vantage point's state combines them with :func:`combine`, before the majority of Rule 4:
    unhealthy when an enabled ``must_be_healthy`` member is unhealthy, else when strictly more
    than half of the enabled, non-``monitoring_only`` members are; ``UNKNOWN`` while members
    that have not answered yet could still tip it either way.
Rule 5 (R15)
    Every change of a vantage point's state and every change of the aggregate produce exactly
    one :class:`HealthEvent`; a result that changes nothing produces none.

:func:`Check.observe` returns a :class:`Change` (``UNCHANGED``, ``PENDING`` or ``CHANGED``), the
three-way answer Envoy's health checker gives, so that a driver can probe sooner while a change
is pending if it wants to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Change",
    "Check",
    "Health",
    "HealthEvent",
    "MemberVote",
    "ProbeResult",
    "combine",
    "majority",
]


class Health(enum.Enum):
    """Health of an endpoint at one vantage point, or aggregated."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Change(enum.Enum):
    """What one result did to a :class:`Check`."""

    UNCHANGED = "unchanged"
    PENDING = "pending"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """The outcome of one check (all its attempts) of one endpoint from one vantage point.

    ``at`` is seconds on the driver's trio clock; ``reason`` is a failure reason from
    :class:`monitors.reasons.Reason` (its value), empty on success.
    """

    pool: str
    endpoint: str
    vantage: str
    at: float
    ok: bool
    reason: str = ""
    status: int | None = None
    rtt: float | None = None
    """Seconds from sending the request to the response head, when one arrived."""
    member: str = ""
    """The member monitor's id when the pool uses a monitor group (R16), else empty."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthEvent:
    """One health transition (R15).

    ``vantage`` names the vantage point whose state changed, or is ``"*"`` for the aggregate
    health that steering uses.
    """

    at: float
    pool: str
    endpoint: str
    vantage: str
    before: Health
    after: Health
    reason: str
    status: int | None = None
    rtt: float | None = None


class Check:
    """The R12 hysteresis counters of one endpoint at one vantage point."""

    __slots__ = ("_down_needed", "_fails", "_passes", "_up_needed", "state")

    def __init__(self, *, consecutive_up: int, consecutive_down: int) -> None:
        self._up_needed = max(1, consecutive_up)
        self._down_needed = max(1, consecutive_down)
        self._passes = 0
        self._fails = 0
        self.state = Health.UNKNOWN

    def retune(self, *, consecutive_up: int, consecutive_down: int) -> None:
        """New thresholds from a reload; the state and the current runs are kept."""
        self._up_needed = max(1, consecutive_up)
        self._down_needed = max(1, consecutive_down)

    def observe(self, ok: bool) -> Change:
        """Count one check result and return what it did to the state."""
        if ok:
            self._passes += 1
            self._fails = 0
            if self.state is Health.HEALTHY:
                return Change.UNCHANGED
            if self._passes >= self._up_needed:
                self.state = Health.HEALTHY
                self._passes = 0
                return Change.CHANGED
            return Change.PENDING
        self._fails += 1
        self._passes = 0
        if self.state is Health.UNHEALTHY:
            return Change.UNCHANGED
        if self._fails >= self._down_needed:
            self.state = Health.UNHEALTHY
            self._fails = 0
            return Change.CHANGED
        return Change.PENDING

    def __repr__(self) -> str:
        return (
            f"<Check {self.state.value} passes={self._passes}/{self._up_needed} "
            f"fails={self._fails}/{self._down_needed}>"
        )


def majority(states: list[Health]) -> Health:
    """Rule 4: the aggregate of per-vantage states (R14)."""
    n = len(states)
    healthy = sum(1 for s in states if s is Health.HEALTHY)
    if 2 * healthy > n:
        return Health.HEALTHY
    decided = n - sum(1 for s in states if s is Health.UNKNOWN)
    if 2 * decided <= n:
        return Health.UNKNOWN
    return Health.UNHEALTHY


@dataclass(frozen=True, slots=True)
class MemberVote:
    """The state of one enabled monitor group member at one vantage point, and its role."""

    state: Health
    must_be_healthy: bool = False
    monitoring_only: bool = False


def combine(votes: list[MemberVote]) -> Health:
    """Rule 4a: one vantage point's state from its monitor group members (R16).

    Only enabled members are passed.  A ``monitoring_only`` member never counts, even when
    it is also marked ``must_be_healthy``.  Unknown members count as whatever would change
    the answer, so the result is ``UNKNOWN`` exactly when their answers could still decide it.
    """
    counted = [v for v in votes if not v.monitoring_only]
    critical = [v.state for v in counted if v.must_be_healthy]
    if Health.UNHEALTHY in critical:
        return Health.UNHEALTHY
    n = len(counted)
    down = sum(1 for v in counted if v.state is Health.UNHEALTHY)
    unknown = sum(1 for v in counted if v.state is Health.UNKNOWN)
    if 2 * down > n:
        return Health.UNHEALTHY
    if Health.UNKNOWN in critical or 2 * (down + unknown) > n:
        return Health.UNKNOWN
    return Health.HEALTHY
