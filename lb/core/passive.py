"""Passive health: eject an endpoint that keeps failing real traffic, for a while.

Theory of operation
===================

The model is Envoy's outlier detection (its ``consecutive_gateway_failure`` and
``consecutive_5xx`` detectors, ``base_ejection_time``, ``max_ejection_percent``); the code is
our own.  Cloudflare has nothing like it: health comes from monitors only, and R44 says a
failed request never changes health.  ``passive_health`` (off by default) is the exception an
operator opts into: the monitor of a health route can stay green while the application behind
it answers 502 to every user.

* Every attempt the proxy (or the simulator) makes at an endpoint ends in an :class:`Outcome`
  (:func:`outcome_of`): a failed connection (refused, timed out, unreachable, TLS), a status
  of 500 or more (an answer, or a broken exchange's 502 / 524), or a success (anything else).
* An :class:`Ejector` per endpoint counts two runs.  A failed connection adds to the
  connection run; a 5xx adds to the 5xx run and ends the connection run (the endpoint was
  reached); a success ends both.  When a run reaches its threshold
  (``consecutive_connect_failure``, ``consecutive_5xx``; 0 turns that detector off)
  :meth:`Ejector.observe` returns the reason, e.g. ``passive: 5 consecutive 502``.
* The health book decides whether the pool may lose it (:func:`cap`: at most
  ``max_ejection_percent`` of the pool's endpoints, rounded down, but always at least one, as
  Envoy does), then :meth:`Ejector.eject` takes it out for ``base_ejection_time`` times its
  number of recent ejections, at most ``max_ejection_time``.  The count of recent ejections
  drops by one for every ``base_ejection_time`` spent in rotation, so an endpoint that failed
  once a week ago starts from the base time again.
* The ejection ends at the endpoint's first passing monitor check at or after its end
  (:meth:`Ejector.due`): the ejection time is a minimum, and the active monitor has the last
  word, so an endpoint is never put back on a timer alone.  (Envoy puts hosts back when the
  time runs out; we have a monitor on every pool passive health covers.)

Everything here is pure: callers pass ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lb.config.model import PassiveHealth
from lb.core.attempts import CONNECT_FAILURES, Failure, status_of

__all__ = ["PASSIVE", "Ejector", "Outcome", "Saved", "cap", "outcome_of"]

PASSIVE = "passive"
"""The pseudo vantage point of passive-health events (ejected, returned)."""


@dataclass(frozen=True, slots=True)
class Saved:
    """What ``engine.state_file`` keeps of one :class:`Ejector` (times on the reader's clock)."""

    ejected: bool
    since: float
    until: float
    ejections: int
    returned_at: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at an endpoint came to, as passive health counts it."""

    status: int
    """The answer's status, or the status of the failure (521-526, a broken exchange's 502)."""
    connect_failed: bool = False
    """No connection stood: the request never reached the endpoint."""
    detail: str = ""
    """The failure's name (``connect_refused``...), empty for an answer."""

    @property
    def failed(self) -> bool:
        """Whether it counts against the endpoint."""
        return self.connect_failed or self.status >= 500


def outcome_of(failure: Failure | None, status: int, *, reused: bool = False) -> Outcome | None:
    """The outcome of an attempt that failed with ``failure`` or was answered ``status``.

    None when it says nothing about the endpoint: a pooled connection closed before any
    response byte (the idle-close race, retried on a fresh connection) or a request the
    configuration could not build.
    """
    if failure is None or failure is Failure.STATUS:  # an answer, whether retry_on retries it
        return Outcome(status)
    if failure in CONNECT_FAILURES:
        return Outcome(status_of(failure), connect_failed=True, detail=failure.value)
    if failure is Failure.BAD_CONFIG or (failure is Failure.CLOSED_BEFORE_RESPONSE and reused):
        return None
    return Outcome(status_of(failure), detail=failure.value)


def cap(total: int, percent: float) -> int:
    """How many of a pool's ``total`` endpoints may be ejected at once: ``percent`` of them
    rounded down, but at least one (Envoy's rule: a detector that can eject nobody in a small
    pool would be useless)."""
    return max(1, math.floor(total * percent / 100 + 1e-9))


class Ejector:
    """The runs and the ejection of one endpoint."""

    __slots__ = (
        "_config",
        "connect_run",
        "ejected",
        "ejections",
        "error_run",
        "last",
        "reason",
        "returned_at",
        "since",
        "until",
    )

    def __init__(self, config: PassiveHealth) -> None:
        self._config = config
        self.connect_run = 0
        self.error_run = 0
        self.last: list[Outcome] = []
        """The failed outcomes of the current run (for the reason), at most its threshold."""
        self.ejected = False
        self.ejections = 0
        """Recent ejections, as of :attr:`returned_at` (see :meth:`eject`)."""
        self.since = 0.0
        """When the current (or last) ejection started."""
        self.until = 0.0
        """When the current ejection may end (at the next passing check from then)."""
        self.returned_at: float | None = None
        self.reason = ""
        """Why the current (or last) ejection happened."""

    @property
    def config(self) -> PassiveHealth:
        """The settings in force."""
        return self._config

    def retune(self, config: PassiveHealth) -> None:
        """New settings from a reload; the runs and any ejection stay."""
        self._config = config

    def observe(self, outcome: Outcome) -> str:
        """Count one outcome; the reason when a run reached its threshold, else ""."""
        c = self._config
        if outcome.connect_failed:
            self.connect_run += 1
            if self.connect_run == 1:
                self.last.clear()
            self._keep(outcome, c.consecutive_connect_failure)
            if c.consecutive_connect_failure and self.connect_run >= c.consecutive_connect_failure:
                return _reason(self.connect_run, "connect failures", self.last)
            return ""
        self.connect_run = 0
        if outcome.status < 500:
            self.error_run = 0
            self.last.clear()
            return ""
        self.error_run += 1
        if self.error_run == 1:
            self.last.clear()
        self._keep(outcome, c.consecutive_5xx)
        if c.consecutive_5xx and self.error_run >= c.consecutive_5xx:
            return _reason(self.error_run, "5xx", self.last)
        return ""

    def _keep(self, outcome: Outcome, threshold: int) -> None:
        self.last.append(outcome)
        del self.last[: max(0, len(self.last) - max(1, threshold))]

    def eject(self, now: float, reason: str = "") -> float:
        """Take the endpoint out at ``now`` because of ``reason`` (from :meth:`observe`);
        returns the ejection time in seconds."""
        c = self._config
        recent = self.ejections
        if self.returned_at is not None:
            recent -= math.floor(max(0.0, now - self.returned_at) / c.base_ejection_time)
        self.ejections = max(0, recent) + 1
        duration = min(c.base_ejection_time * self.ejections, c.max_ejection_time)
        self.ejected = True
        self.reason = reason
        self.since = now
        self.until = now + duration
        self.connect_run = self.error_run = 0
        self.last.clear()
        return duration

    def due(self, now: float) -> bool:
        """Whether a passing check at ``now`` ends the ejection (its time is over)."""
        return self.ejected and now >= self.until

    def release(self, now: float) -> None:
        """Put the endpoint back at ``now``."""
        self.ejected = False
        self.returned_at = now

    def state(self) -> Saved:
        """The ejection and its history, for the state file (the runs are not kept)."""
        return Saved(
            self.ejected, self.since, self.until, self.ejections, self.returned_at, self.reason
        )

    def load(self, saved: Saved) -> None:
        """Set the state saved by :meth:`state` (times already on this process's clock)."""
        self.ejected = saved.ejected
        self.since, self.until = saved.since, saved.until
        self.ejections = max(0, saved.ejections)
        self.returned_at = saved.returned_at
        self.reason = saved.reason

    def __repr__(self) -> str:
        state = f"ejected until {self.until:.1f}" if self.ejected else "in"
        return (
            f"<Ejector {state} ejections={self.ejections} "
            f"connect_run={self.connect_run} error_run={self.error_run}>"
        )


def _reason(n: int, what: str, last: list[Outcome]) -> str:
    """``passive: 5 consecutive 502`` when they agree, else the kind and the last one."""
    if what == "5xx":
        statuses = {o.status for o in last}
        if len(statuses) == 1:
            return f"passive: {n} consecutive {last[-1].status}"
        return f"passive: {n} consecutive 5xx (last {last[-1].status})"
    details = {o.detail for o in last}
    if len(details) == 1:
        return f"passive: {n} consecutive connect failures ({last[-1].detail})"
    return f"passive: {n} consecutive connect failures (last {last[-1].detail})"
