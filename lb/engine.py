"""The engine: the one writer of health state, shared by the LB process and the simulator.

It holds the :class:`~lb.core.book.HealthBook`, the live request counters, the header-affinity
sessions and the affinity secret, and hands out a :class:`~steering.Router` for the current
snapshot.  It is synchronous: the monitor driver calls :meth:`Engine.apply` for every probe
result, the proxy (or the simulator's traffic generator) calls :meth:`Engine.decide` for every
request, and no ``await`` ever separates a mutation from the read that follows it.

The router only reads: what a decision asks to remember (a header-affinity session,
``Decision.remember``) is stored here, by :meth:`Engine.remember`, the one place that writes
the session table for steering.

:meth:`Engine.save_state` and :meth:`Engine.load_state` turn what a restart should keep
(endpoint health, header-affinity sessions, flap-damping penalties, passive-health ejections)
into a plain document and
back, pure; ``lb.statefile`` writes and reads the file (``engine.state_file``).

Observers (metrics, logs, the simulator's recorder) subscribe to health events, probe results
and configuration changes; they are called synchronously, in subscription order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from lb.cluster.fingerprint import config_hash
from lb.config.model import Config
from lb.core.attempts import Failure
from lb.core.book import HealthBook, ProbeTarget, SavedEndpoint
from lb.core.health import Health, HealthEvent, ProbeResult
from lb.core.passive import Outcome, outcome_of
from lb.core.passive import Saved as PassiveSaved
from steering import Decision, HeaderSessions, Live, Request, Router

__all__ = [
    "STATE_FORMAT",
    "Engine",
    "LiveReport",
    "LiveTotals",
    "Observers",
    "OutcomeSink",
    "live_report",
]

STATE_FORMAT = "tunnel-lb state 1"
"""The ``format`` of a state-file document; any other is foreign."""

OutcomeSink = Callable[[str, str, Outcome], None]
"""Where a child worker's engine sends each classified attempt outcome ``(pool, endpoint,
outcome)`` instead of counting it: to the parent, which decides ejections (:mod:`lb.workers`)."""

LiveReport = dict[str, dict[str, int]]
"""Live counts of one process as plain data: ``{"in_flight": {"pool/endpoint": n},
"connections": {...}}``, non-zero counts only (what a worker sends its parent)."""


def live_report(live: Live) -> LiveReport:
    """The non-zero counts of ``live`` as a :data:`LiveReport`."""
    return {
        "in_flight": {k: n for k, n in live.in_flight.items() if n},
        "connections": {k: n for k, n in live.connections.items() if n},
    }


@dataclass(slots=True)
class LiveTotals:
    """Requests in flight and open upstream connections over every process of one load
    balancer, per ``pool/endpoint`` key and per pool (for metrics and ``/status``)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    pool_in_flight: dict[str, int] = field(default_factory=dict)
    pool_connections: dict[str, int] = field(default_factory=dict)

    def add(self, report: LiveReport) -> None:
        """Add one process's counts."""
        for kind, by_key, by_pool in (
            ("in_flight", self.in_flight, self.pool_in_flight),
            ("connections", self.connections, self.pool_connections),
        ):
            for key, n in report.get(kind, {}).items():
                by_key[key] = by_key.get(key, 0) + n
                pool = key.partition("/")[0]
                by_pool[pool] = by_pool.get(pool, 0) + n


@dataclass(slots=True)
class Observers:
    """Callbacks the engine calls synchronously; each list is called in order."""

    health: list[Callable[[HealthEvent], None]] = field(default_factory=list)
    probes: list[Callable[[ProbeResult], None]] = field(default_factory=list)
    config: list[Callable[[Config], None]] = field(default_factory=list)


class Engine:
    """Health, counters and steering for one configuration at a time.

    Args:
        config: the validated configuration.
        now: the engine clock at start (trio's clock, real or virtual).
        secret: the ``__cflb`` HMAC key; defaults to ``engine.affinity_secret`` from the
            configuration, else to random bytes (then cookies survive only in this process).
        outcomes: given in a child worker process only: passive health is then decided
            elsewhere (the parent).  :meth:`outcome` hands every classified outcome to it
            instead of counting it, and the book never ejects nor returns an endpoint on its
            own: it takes the parent's decisions through :meth:`follow`.
    """

    def __init__(
        self,
        config: Config,
        *,
        now: float = 0.0,
        secret: bytes | None = None,
        outcomes: OutcomeSink | None = None,
    ) -> None:
        self.book = HealthBook(config, now=now, decides_passive=outcomes is None)
        self._outcomes = outcomes
        self.live = Live()
        self.sessions = HeaderSessions()
        self.observers = Observers()
        self.secret = secret if secret is not None else _secret(config)
        self.generation = 0
        """Bumped on every configuration swap; the monitor driver restarts on a change."""
        self.reported: dict[int, LiveReport] = {}
        """The latest live counts of each child worker (:mod:`lb.workers`), by worker index;
        empty with one process.  Only for :meth:`live_totals`: steering reads this process's
        own :attr:`live`."""
        self.listening: dict[str, list[str]] = {}
        """Where this process listens, ``{"proxy": ["127.0.0.1:8080"], "admin": [...]}``
        as bound (port 0 resolved); set by :func:`lb.service.serve_lb` for ``/status``."""
        self._router: Router | None = None
        self._passive = _passive(config)
        self._seen: set[tuple[str, str, str]] = set()
        self.status_sections: dict[str, Callable[[], object]] = {}
        """Extra top-level sections of ``/status`` by name (``cluster``: :mod:`lb.cluster`)."""

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self.book.config

    @property
    def router(self) -> Router:
        """A router for the current snapshot; rebuilt only when the snapshot changed."""
        snapshot = self.book.snapshot()
        router = self._router
        if router is None or router.snapshot is not snapshot:
            router = self._router = Router(snapshot, secret=self.secret, sessions=self.sessions)
        return router

    def decide(self, req: Request, rng: Random, *, trace: bool = False) -> Decision:
        """Steer one request with the current router and this process's live counts, and
        remember what the decision asks to (:meth:`remember`)."""
        decision = self.router.decide(req, rng, self.live, trace=trace)
        self.remember(decision)
        return decision

    def retry(
        self, first: Decision, req: Request, rng: Random, *, status: int, retry_on: bool = False
    ) -> Decision | None:
        """The retry of ``first`` (:meth:`steering.Router.retry`: zero-downtime failover, or a
        ``retry_on`` retry), remembered as :meth:`decide` remembers a decision."""
        decision = self.router.retry(first, req, rng, self.live, status=status, retry_on=retry_on)
        if decision is not None:
            self.remember(decision)
        return decision

    def remember(self, decision: Decision) -> None:
        """Store what ``decision`` asks to remember.  :meth:`decide` and :meth:`retry` call it;
        so does the simulator's request loop, which holds the router between ticks."""
        if decision.remember is not None:
            self.sessions.store(decision.remember)

    def live_totals(self) -> LiveTotals:
        """This process's live counts plus the latest each child worker reported."""
        totals = LiveTotals()
        totals.add(live_report(self.live))
        for report in self.reported.values():
            totals.add(report)
        return totals

    def targets(self) -> list[ProbeTarget]:
        """What the monitors must probe under the current configuration."""
        return self.book.targets()

    @property
    def ready(self) -> bool:
        """True once every monitored endpoint has a result from every vantage point."""
        vantages = self.config.engine.vantage_points
        return all((t.pool, t.endpoint, v) in self._seen for t in self.targets() for v in vantages)

    def apply(self, result: ProbeResult) -> list[HealthEvent]:
        """Count one probe result and tell the observers; returns the transitions."""
        self._seen.add((result.pool, result.endpoint, result.vantage))
        events = self.book.apply(result)
        for probe_observer in self.observers.probes:
            probe_observer(result)
        for event in events:
            for health_observer in self.observers.health:
                health_observer(event)
        return events

    def assign(
        self, pool: str, endpoint: str, vantage: str, state: Health, *, at: float, reason: str = ""
    ) -> list[HealthEvent]:
        """Take the verdict of a vantage point probing elsewhere (:meth:`HealthBook.assign`)
        and tell the health observers.  A verdict for a configured vantage point (a peer of
        the same vantage, or this replica's previous life) counts towards :attr:`ready`."""
        if vantage in self.config.engine.vantage_points:
            self._seen.add((pool, endpoint, vantage))
        events = self.book.assign(pool, endpoint, vantage, state, at=at, reason=reason)
        self._tell(events)
        return events

    def withdraw(self, pool: str, endpoint: str, vantage: str, *, at: float) -> list[HealthEvent]:
        """Drop a remote vantage point from an endpoint (:meth:`HealthBook.withdraw`)."""
        events = self.book.withdraw(pool, endpoint, vantage, at=at)
        self._tell(events)
        return events

    @property
    def passive(self) -> bool:
        """Whether ``passive_health`` covers any pool: attempt outcomes then count."""
        return self._passive

    def outcome(
        self,
        pool: str,
        endpoint: str,
        *,
        status: int,
        failure: Failure | None = None,
        reused: bool = False,
        now: float,
    ) -> list[HealthEvent]:
        """Count how one attempt at an endpoint ended, answered ``status`` or failed with
        ``failure`` (``passive_health``: :func:`lb.core.passive.outcome_of`), and tell the
        health observers of an ejection.  The proxy and the simulator both call this after
        every attempt; with passive health off everywhere it returns at once.  In a child
        worker (``outcomes`` given) the outcome goes to the parent and nothing is counted
        here."""
        if not self._passive or self.book.passive(pool, endpoint) is None:
            return []  # off here (a pool without it): nothing to count, nothing to send
        outcome = outcome_of(failure, status, reused=reused)
        if outcome is None:
            return []
        if self._outcomes is not None:
            self._outcomes(pool, endpoint, outcome)
            return []
        return self.count(pool, endpoint, outcome, now=now)

    def count(self, pool: str, endpoint: str, outcome: Outcome, *, now: float) -> list[HealthEvent]:
        """Count one classified outcome (:meth:`outcome`'s second half), and tell the health
        observers of an ejection; the parent counts its children's outcomes here."""
        events = self.book.outcome(pool, endpoint, outcome, now=now)
        self._tell(events)
        return events

    def follow(self, pool: str, endpoint: str, state: PassiveSaved) -> list[HealthEvent]:
        """Take an ejection or a return decided by the parent (:meth:`HealthBook.follow`),
        and tell the health observers."""
        events = self.book.follow(pool, endpoint, state)
        self._tell(events)
        return events

    def _tell(self, events: list[HealthEvent]) -> None:
        for event in events:
            for health_observer in self.observers.health:
                health_observer(event)

    def save_state(self, *, now: float, wall: float) -> dict[str, Any]:
        """What a restart should keep, as a JSON-able document (``engine.state_file``).

        Times are kept as ages (seconds before ``wall``), so a process with another engine
        clock can put them back on its own.
        """

        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        endpoints = []
        for s in self.book.saved():
            damping = None
            if s.damping is not None:
                damping = [s.damping[0], age(s.damping[1]), s.damping[2]]
            passive = None
            if s.passive is not None:
                p = s.passive
                passive = {
                    "ejected": p.ejected,
                    "since_age": age(p.since),
                    "until_age": age(p.until),
                    "ejections": p.ejections,
                    "returned_age": age(p.returned_at),
                    "reason": p.reason,
                }
            endpoints.append(
                {
                    "pool": s.pool,
                    "endpoint": s.endpoint,
                    "vantages": {v: h.value for v, h in s.vantages.items()},
                    "changed_age": age(s.changed_at),
                    "recovered_age": age(s.recovered_at),
                    "damping": damping,
                    "passive": passive,
                }
            )
        sessions = [[d.hex(), ep, age(last)] for d, ep, last in self.sessions.saved()]
        return {
            "format": STATE_FORMAT,
            "config_hash": config_hash(self.config),
            "written_at": wall,
            "endpoints": endpoints,
            "sessions": sessions,
        }

    def load_state(self, doc: object, *, now: float, wall: float, max_age: float) -> str:
        """Take a document of :meth:`save_state`; returns "" when taken, else why not.

        A document of another format or configuration (hash), older than ``max_age`` seconds,
        or malformed is not taken at all: nothing is half-loaded.  Restored vantage points
        count as seen for :attr:`ready`.
        """
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            return "not a tunnel-lb state file"
        if doc.get("config_hash") != config_hash(self.config):
            return "written for another configuration"
        written = doc.get("written_at")
        if not isinstance(written, int | float) or isinstance(written, bool):
            return "malformed: written_at"
        elapsed = wall - written
        if elapsed > max_age:
            return f"stale: written {elapsed:.0f}s ago, more than state_max_age {max_age:g}s"
        if elapsed < -60:
            return "written in the future (clock changed?)"
        elapsed = max(0.0, elapsed)
        try:
            saved, sessions = _parse_state(doc, now - elapsed)
        except KeyError as exc:
            return f"malformed: no {exc}"
        except (TypeError, ValueError) as exc:
            return f"malformed: {exc}"
        self._seen.update(self.book.load(saved))
        self.sessions.load(sessions)
        return ""

    def reconfigure(self, config: Config, *, now: float) -> list[HealthEvent]:
        """Swap the configuration, keeping health of unchanged endpoints and the secret.

        Returns (and tells the health observers) the transitions the swap caused, e.g. an
        endpoint whose probe changed starting over as unknown.
        """
        events = self.book.reconfigure(config, now=now)
        self._passive = _passive(config)
        self.generation += 1
        reset = {(e.pool, e.endpoint) for e in events if e.after is Health.UNKNOWN}
        self._seen = {s for s in self._seen if (s[0], s[1]) not in reset}
        for observer in self.observers.config:
            observer(config)
        for event in events:
            for health_observer in self.observers.health:
                health_observer(event)
        return events


def _parse_state(
    doc: dict[str, Any], base: float
) -> tuple[list[SavedEndpoint], list[tuple[bytes, str, float]]]:
    """The endpoints and sessions of a state document, ages turned into times on this clock
    (``base`` is the clock's reading when the document was written).  Raises on anything
    malformed."""

    def at(age: object) -> float | None:
        if age is None:
            return None
        if not isinstance(age, int | float) or isinstance(age, bool):
            raise TypeError(f"an age of {age!r}")
        return base - float(age)

    def text(value: object) -> str:
        if not isinstance(value, str):
            raise TypeError(f"a name of {value!r}")
        return value

    saved = []
    for e in doc["endpoints"]:
        damping = None
        if e["damping"] is not None:
            penalty, age, suppressed = e["damping"]
            when = at(age)
            if when is None or not isinstance(suppressed, bool):
                raise ValueError("damping")
            damping = (float(penalty), when, suppressed)
        saved.append(
            SavedEndpoint(
                pool=text(e["pool"]),
                endpoint=text(e["endpoint"]),
                vantages={text(v): Health(h) for v, h in dict(e["vantages"]).items()},
                changed_at=at(e["changed_age"]),
                recovered_at=at(e["recovered_age"]),
                damping=damping,
                passive=_parse_passive(e.get("passive"), at),
            )
        )
    sessions = []
    for digest, endpoint, age in doc["sessions"]:
        last = at(age)
        if last is None:
            raise ValueError("a session without its age")
        sessions.append((bytes.fromhex(text(digest)), text(endpoint), last))
    return saved, sessions


def _passive(config: Config) -> bool:
    """Whether ``passive_health`` covers any pool (else outcomes are not even classified)."""
    return any(config.passive(p) is not None for p in config.pools)


def _parse_passive(doc: object, at: Callable[[object], float | None]) -> PassiveSaved | None:
    """Passive health's part of one endpoint of a state document (absent in files written
    before it existed).  Raises on anything malformed."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise TypeError(f"passive health of {doc!r}")
    since, until = at(doc["since_age"]), at(doc["until_age"])
    ejected, ejections, reason = doc["ejected"], doc["ejections"], doc["reason"]
    if since is None or until is None or not isinstance(ejected, bool):
        raise ValueError("passive")
    if not isinstance(ejections, int) or isinstance(ejections, bool) or not isinstance(reason, str):
        raise ValueError("passive")
    return PassiveSaved(ejected, since, until, ejections, at(doc["returned_age"]), reason)


SECRET_ENV = "TUNNEL_LB_AFFINITY_SECRET"
"""The environment variable read for the ``__cflb`` key when the configuration names none."""


def _secret(config: Config) -> bytes:
    """The ``__cflb`` HMAC key: ``engine.affinity_secret``, else the contents of
    ``engine.affinity_secret_file`` (surrounding whitespace stripped), else
    ``$TUNNEL_LB_AFFINITY_SECRET``, else random bytes.  Replicas that share one of the first
    three honour each other's cookies.  The key is never logged."""
    configured = config.engine.affinity_secret
    if not configured and config.engine.affinity_secret_file:
        with open(config.engine.affinity_secret_file, encoding="utf-8") as f:
            configured = f.read().strip()
    if not configured:
        configured = os.environ.get(SECRET_ENV, "")
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    return os.urandom(32)
