"""Flap damping: keep an endpoint that keeps changing its mind out of rotation for a while.

Theory of operation
===================

The model is BGP route-flap damping (RFC 2439, section 4), applied to endpoint health instead
of routes; the code is our own.  Each endpoint carries a *figure of merit*, its ``penalty``:

* Every transition of the monitors' aggregate verdict between healthy and unhealthy adds
  ``penalty`` (leaving ``unknown`` at start-up costs nothing: it is not a flap).
* The penalty decays exponentially with ``half_life``: after ``half_life`` seconds without a
  transition it is worth half as much.
* When a transition takes it above ``suppress``, the endpoint is *suppressed*: steering treats
  it as unhealthy whatever the monitors say, until the penalty has decayed below ``reuse``.
* The penalty never exceeds the ceiling ``reuse * 2 ** (max_suppress / half_life)``, so
  suppression never outlasts ``max_suppress`` seconds after the last transition
  (:func:`decay_bound`): an endpoint that has been stable that long is never suppressed.

Everything here is pure: the caller passes ``now`` (the book uses the probe result's time), and
the release is noticed at the next call, i.e. at the endpoint's next probe.
"""

from __future__ import annotations

import math

from lb.config.model import FlapDamping

__all__ = ["Damper", "ceiling", "decay_bound"]


def ceiling(config: FlapDamping) -> float:
    """The highest penalty an endpoint can carry (RFC 2439's ``ceiling``)."""
    return config.ceiling


def decay_bound(config: FlapDamping) -> float:
    """Seconds after its last transition by which an endpoint is surely no longer suppressed."""
    return config.max_suppress


class Damper:
    """The penalty and the suppression of one endpoint."""

    __slots__ = ("_config", "at", "penalty", "suppressed")

    def __init__(self, config: FlapDamping) -> None:
        self._config = config
        self.penalty = 0.0
        """The penalty as of :attr:`at`."""
        self.at = 0.0
        self.suppressed = False

    def retune(self, config: FlapDamping) -> None:
        """New parameters from a reload; the penalty stays (capped at the new ceiling)."""
        self._config = config
        self.penalty = min(self.penalty, ceiling(config))

    @property
    def limits(self) -> tuple[float, float]:
        """``(suppress, reuse)``, for reasons."""
        return (self._config.suppress, self._config.reuse)

    def current(self, now: float) -> float:
        """The penalty decayed to ``now``."""
        elapsed = max(0.0, now - self.at)
        return self.penalty * math.pow(0.5, elapsed / self._config.half_life)

    def flap(self, now: float) -> bool:
        """Count one transition at ``now``; True when it starts a suppression."""
        c = self._config
        self.penalty = min(self.current(now) + c.penalty, ceiling(c))
        self.at = now
        if not self.suppressed and self.penalty > c.suppress:
            self.suppressed = True
            return True
        return False

    def release(self, now: float) -> bool:
        """True when a suppression ends at ``now`` (the penalty decayed below ``reuse``)."""
        if self.suppressed and self.current(now) < self._config.reuse:
            self.suppressed = False
            return True
        return False

    def state(self) -> tuple[float, float, bool]:
        """``(penalty, at, suppressed)``, for the state file."""
        return (self.penalty, self.at, self.suppressed)

    def load(self, penalty: float, at: float, suppressed: bool) -> None:
        """Set the state saved by :meth:`state` (times already on this process's clock)."""
        self.penalty = min(max(0.0, penalty), ceiling(self._config))
        self.at = at
        self.suppressed = suppressed

    def __repr__(self) -> str:
        return f"<Damper penalty={self.penalty:.2f}@{self.at:.1f} suppressed={self.suppressed}>"
