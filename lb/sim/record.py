"""The recorder: folds per-tick tallies into windows, totals and activity, and keeps events.

Everything it stores is keyed and later emitted in sorted order, and it is fed by the run
loop in one canonical order (ticks in time order, data centers sorted, probe results sorted by
time then name), so the report never depends on trio's task order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lb.core.health import Health, HealthEvent, ProbeResult
from lb.sim.scenario import Expectation, Scenario
from lb.sim.sessions import SessionTotals
from lb.sim.traffic import TrafficCounts

__all__ = ["Recorder", "Transition", "Window"]


def _add(into: dict[str, int], src: dict[str, int], sign: int = 1) -> None:
    for k, v in src.items():
        into[k] = into.get(k, 0) + sign * v


@dataclass(slots=True)
class Window:
    """Tallies of one report window."""

    start: float
    end: float
    requests: int = 0
    errors: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    errors_by_endpoint: dict[str, int] = field(default_factory=dict)
    by_replica: dict[str, int] = field(default_factory=dict)
    by_datacenter: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A health event with times relative to the start of the run."""

    at: float
    pool: str
    endpoint: str
    vantage: str
    before: str
    after: str
    reason: str


@dataclass(slots=True)
class _Tally:
    """Running numerator and denominator of one expectation over its time range."""

    num: int = 0
    den: int = 0


class Recorder:
    """See the module docstring."""

    def __init__(self, scenario: Scenario, start: float) -> None:
        self.scenario = scenario
        self.start = start
        self.windows: list[Window] = []
        self.statuses: dict[int, int] = {}
        self.affinity: dict[str, int] = {}
        self.unrouted = 0
        self.retries = 0
        self.stale_retries = 0
        self.retry_on = 0
        self.budget_refused = 0
        self.transitions: list[Transition] = []
        self.checks = 0
        self.activity: dict[str, list[list[int]]] = {}
        """Endpoint key -> [first tick, last tick + 1] runs of ticks with first attempts (an
        empty list for an endpoint the traffic looked up but never sent to: :meth:`runs`)."""
        self.answered: dict[str, list[list[int]]] = {}
        """The same for ticks in which the endpoint answered (its connection did not fail)."""
        self.tallies = [_Tally() for _ in scenario.expectations]
        tallied = [x for x in scenario.expectations if x.kind in ("share", "requests", "errors")]
        self._tallied = bool(tallied)
        self._ranges = sorted({x.between for x in tallied if x.between is not None})
        self.changes: list[tuple[float, str]] = []
        self.long_sessions = SessionTotals()

    # ------------------------------------------------------------------ engine observers

    def sessions(self, totals: SessionTotals) -> None:
        """The long-lived sessions of the run (:mod:`lb.sim.sessions`), summed at its end."""
        self.long_sessions.add(totals)

    def health(self, e: HealthEvent) -> None:
        """Engine health observer: keep every transition (R15)."""
        self.transitions.append(
            Transition(
                at=e.at - self.start,
                pool=e.pool,
                endpoint=e.endpoint,
                vantage=e.vantage,
                before=e.before.value,
                after=e.after.value,
                reason=e.reason,
            )
        )

    def probe(self, _result: ProbeResult) -> None:
        """Engine probe observer: count checks applied."""
        self.checks += 1

    # ------------------------------------------------------------------ ticks

    def span(self, t: float) -> tuple[int, tuple[bool, ...]]:
        """What tallies of a tick at ``t`` are added to: its window and expectation ranges.

        Counts are only harvested when this changes (or caches are dropped), so a harvested
        span never straddles a window or an expectation's ``between``.
        """
        w = int(t / self.scenario.report_interval + 1e-9)
        return w, tuple(a <= t < b for a, b in self._ranges)

    def mark(self, key: str, k: int, answered: bool = True) -> None:
        """Tick ``k`` had a first attempt to endpoint ``key`` (which ``answered`` it).

        The one statement of how a tick extends a run list; the simulator's traffic loop
        (:mod:`lb.sim.traffic`) applies the same rule inline to the lists of :meth:`runs`."""
        for runs in self.runs(key, answered):
            if runs and runs[-1][1] >= k:
                runs[-1][1] = k + 1
            else:
                runs.append([k, k + 1])

    def runs(self, key: str, answered: bool) -> tuple[list[list[int]], ...]:
        """The run lists :meth:`mark` extends for endpoint ``key``: its activity, and its
        answered ticks too when it ``answered``.  The simulator's traffic extends them itself
        (:mod:`lb.sim.traffic`), once per endpoint and tick, without a call per mark."""
        active = self.activity.setdefault(key, [])
        return (active, self.answered.setdefault(key, [])) if answered else (active,)

    def fold(self, t: float, per_dc: Iterable[tuple[str, TrafficCounts]]) -> None:
        """Add the tallies of a span of ticks starting at ``t`` (data centers sorted)."""
        interval = self.scenario.report_interval
        w_index = int(t / interval + 1e-9)
        while len(self.windows) <= w_index:
            n = len(self.windows)
            self.windows.append(
                Window(n * interval, min((n + 1) * interval, self.scenario.duration))
            )
        w = self.windows[w_index]
        for dc, c in per_dc:
            served = c.first
            if c.moved_from:
                served = dict(c.first)
                _add(served, c.moved_from, -1)
                _add(served, c.moved_to)
            self.retries += c.retries
            self.stale_retries += c.stale_retries
            self.retry_on += c.retry_on
            self.budget_refused += c.budget_refused
            w.requests += c.requests
            w.by_datacenter[dc] = w.by_datacenter.get(dc, 0) + c.requests
            _add(w.by_endpoint, served)
            _add(w.by_replica, c.replicas)
            if c.errors:
                w.errors += sum(c.errors.values())
                _add(w.errors_by_endpoint, c.errors)
                for status, n in c.statuses.items():
                    self.statuses[status] = self.statuses.get(status, 0) + n
            elif c.statuses:
                for status, n in c.statuses.items():
                    self.statuses[status] = self.statuses.get(status, 0) + n
            if c.affinity:
                _add(self.affinity, c.affinity)
            self.unrouted += c.unrouted
            if self._tallied:
                self._expect(t, dc, c, served)

    def totals(self) -> Window:
        """The whole run: every window added up."""
        out = Window(0.0, self.scenario.duration)
        for w in self.windows:
            out.requests += w.requests
            out.errors += w.errors
            _add(out.by_endpoint, w.by_endpoint)
            _add(out.errors_by_endpoint, w.errors_by_endpoint)
            _add(out.by_replica, w.by_replica)
            _add(out.by_datacenter, w.by_datacenter)
        return out

    def _expect(self, t: float, dc: str, c: TrafficCounts, served: dict[str, int]) -> None:
        for i, x in enumerate(self.scenario.expectations):
            if x.kind not in ("share", "requests", "errors"):
                continue
            if x.between is not None and not x.between[0] <= t < x.between[1]:
                continue
            if x.datacenter and x.datacenter != dc:
                continue
            tally = self.tallies[i]
            tally.den += c.requests
            source = c.errors if x.kind == "errors" else served
            if x.replica:
                source = c.replicas
            tally.num += _subject_count(x, source)

    # ------------------------------------------------------------------ queries

    def active_ticks(self, key: str) -> list[list[int]]:
        """Runs of ticks in which ``key`` got first attempts."""
        return self.activity.get(key, [])

    def answered_ticks(self, key: str) -> list[list[int]]:
        """Runs of ticks in which ``key`` answered a first attempt."""
        return self.answered.get(key, [])

    def aggregate(self, pool: str, endpoint: str) -> list[Transition]:
        """The aggregate (``*``) transitions of one endpoint, in time order."""
        return [
            tr
            for tr in self.transitions
            if tr.vantage == "*" and tr.pool == pool and tr.endpoint == endpoint
        ]

    def went_unhealthy(self, pool: str, endpoint: str, after: float) -> float | None:
        """The first aggregate transition to unhealthy at or after ``after``."""
        for tr in self.aggregate(pool, endpoint):
            if tr.at >= after - 1e-9 and tr.after == Health.UNHEALTHY.value:
                return tr.at
        return None


def _subject_count(x: Expectation, counts: dict[str, int]) -> int:
    if x.endpoint:
        return counts.get(x.endpoint, 0)
    if x.replica:
        return counts.get(x.replica, 0)
    if x.pool:
        prefix = f"{x.pool}/"
        return sum(n for k, n in counts.items() if k.startswith(prefix))
    return sum(counts.values())
