"""The health book: the single writer of endpoint health, which publishes snapshots.

Theory of operation
===================

The book holds one :class:`~lb.core.health.Check` per (pool, endpoint, vantage point) of every
monitored, enabled endpoint of every enabled pool (R10: the others are never probed).

* :meth:`HealthBook.apply` takes a :class:`ProbeResult`, updates that check, re-aggregates the
  endpoint over its vantage points (R14) and returns the transitions as events (R15).  The
  snapshot is marked stale only when a state changed, so probes that confirm the current
  state cost no rebuild.
* :meth:`HealthBook.reconfigure` swaps the configuration: an endpoint whose identity (pool,
  name, address, port, Host, monitor) did not change keeps its checks; others start unknown.
  Endpoints the new configuration disables are stamped with ``now`` for drain (R40).
* :meth:`HealthBook.snapshot` returns the current immutable :class:`Snapshot`, rebuilding it
  when stale.

* :meth:`HealthBook.assign` and :meth:`HealthBook.withdraw` take the verdict of a vantage point
  that probes elsewhere (another replica of a cluster, :mod:`lb.cluster`): its state is set as
  it is and the endpoint is re-aggregated by the same majority (R14) as local vantage points.
  A vantage point that is not configured here joins an endpoint with its first verdict and
  leaves it when withdrawn (its votes went stale), so the majority counts only vantage points
  that have a say.

* A pool with a monitor group (R16) is probed by each enabled member monitor; each result
  names its member, which has its own counters per vantage point.  The vantage point's state
  is :func:`~lb.core.health.combine` of its members, and the endpoint's health the same
  majority over vantage points (R14) as with a single monitor.

* With ``engine.flap_damping`` (a tunnel-lb extension, off by default) every endpoint has a
  :class:`~lb.core.damping.Damper`: each flip of the monitors' verdict (the *raw* aggregate)
  adds a penalty, and while it is suppressed the endpoint's health is ``UNHEALTHY`` whatever
  the monitors say.  Suppression and release are events of their own, on the pseudo vantage
  point ``"damping"``; the aggregate ``"*"`` stays what steering uses.

* With ``slow_start`` on a pool or an endpoint (a tunnel-lb extension, off by default) the book
  stamps the time an endpoint recovers (unhealthy to healthy, not leaving ``unknown``) and the
  time a pool becomes eligible again after being critical; the snapshot carries them as
  ``ramp`` while the ramp lasts, and steering scales weights by
  :func:`steering.pick.ramp` of the request's ``now``.  The first probe after every ramp
  ended rebuilds the snapshot without them, so steering's fast path comes back.

* With ``passive_health`` (a tunnel-lb extension, off by default, on ``engine`` or per pool)
  every endpoint of a covered pool has an :class:`~lb.core.passive.Ejector`, and
  :meth:`HealthBook.outcome` takes the outcome of each attempt the proxy or the simulator
  made at it.  A run of failures ejects it (``UNHEALTHY`` whatever the monitors say), unless
  the pool's ``max_ejection_percent`` is already out; the first passing probe after the
  ejection time puts it back.  Both are events on the pseudo vantage point ``"passive"``.
  A book made with ``decides_passive=False`` (a child worker process, :mod:`lb.workers`)
  never ejects nor returns on its own: it takes the deciding book's ejections through
  :meth:`HealthBook.follow`.

Otherwise passive signals (request outcomes, zero-downtime-failover retries) never change
health here (R44); they feed the live counters that steering reads instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lb.config.model import (
    Config,
    FlapDamping,
    Monitor,
    MonitorGroupMember,
    Origin,
    PassiveHealth,
    Pool,
)
from lb.core.damping import Damper
from lb.core.health import (
    Check,
    Health,
    HealthEvent,
    MemberVote,
    ProbeResult,
    combine,
    majority,
)
from lb.core.passive import PASSIVE, Ejector, Outcome, Saved, cap
from lb.core.snapshot import EndpointView, PoolState, PoolView, Snapshot

__all__ = ["DAMPING", "HealthBook", "ProbeTarget", "SavedEndpoint", "identity"]

DAMPING = "damping"
"""The pseudo vantage point of flap-damping events (suppressed, released)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeTarget:
    """One monitored endpoint of one pool, as the monitor driver needs it."""

    pool: str
    endpoint: str
    origin: Origin
    monitor: Monitor
    pool_id: str
    member: str = ""
    """The member monitor's id when the pool uses a monitor group (R16), else empty."""


Members = tuple[tuple[MonitorGroupMember, Monitor], ...]
"""The enabled members of a pool's monitor group with their monitors, or empty."""


def _probe_identity(monitor: Monitor) -> tuple[object, ...]:
    return (
        monitor.type,
        monitor.effective_method,
        monitor.path,
        monitor.port,
        tuple(sorted(monitor.header.items())),
        monitor.expected_codes,
        monitor.expected_body,
        monitor.follow_redirects,
        monitor.allow_insecure,
    )


def identity(
    pool: Pool, origin: Origin, monitor: Monitor | None, members: Members = ()
) -> tuple[object, ...]:
    """What must stay the same for an endpoint to keep its health across a reload.

    Only what changes the probe's answer counts: where it goes and what passes.  A new
    ``interval``, ``timeout``, ``retries``, ``description`` or hysteresis threshold keeps the
    health (an outage on every such edit would be worse than the edit).  With a monitor group
    every enabled member counts, with its role.
    """
    probe: object = None
    if members:
        probe = tuple(
            (m.monitor_id, m.must_be_healthy, m.monitoring_only, _probe_identity(mon))
            for m, mon in members
        )
    elif monitor is not None:
        probe = _probe_identity(monitor)
    return (pool.name, origin.name, origin.address.lower(), origin.port, origin.host_header, probe)


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedEndpoint:
    """What ``engine.state_file`` keeps of one endpoint's health across a restart.

    Times are on the engine clock of the process that reads or writes it (the state file
    converts them through wall-clock time).
    """

    pool: str
    endpoint: str
    vantages: Mapping[str, Health]
    changed_at: float | None = None
    """When the aggregate health last changed."""
    recovered_at: float | None = None
    damping: tuple[float, float, bool] | None = None
    """``(penalty, at, suppressed)`` of flap damping."""
    passive: Saved | None = None
    """Passive health's ejection and its history."""


class _Endpoint:
    """Mutable health of one endpoint of one pool."""

    __slots__ = (
        "changed_at",
        "checks",
        "damper",
        "ejector",
        "health",
        "identity",
        "last",
        "member_last",
        "members",
        "raw",
        "recovered_at",
        "remote",
        "roles",
    )

    def __init__(
        self,
        ident: tuple[object, ...],
        monitor: Monitor,
        vantages: Iterable[str],
        members: Members = (),
        damping: FlapDamping | None = None,
        passive: PassiveHealth | None = None,
    ):
        self.identity = ident
        self.damper = Damper(damping) if damping is not None else None
        self.ejector = Ejector(passive) if passive is not None else None
        self.changed_at: float | None = None
        """When :attr:`health` last changed."""
        self.recovered_at: float | None = None
        """When :attr:`health` last went from unhealthy to healthy (for ``slow_start``)."""
        self.raw = Health.UNKNOWN
        """The monitors' verdict (R14) before flap damping; :attr:`health` is after."""
        self.remote: set[str] = set()
        """Vantage points fed by :meth:`HealthBook.assign` that are not configured here."""
        self.checks = {
            v: Check(
                consecutive_up=monitor.consecutive_up, consecutive_down=monitor.consecutive_down
            )
            for v in vantages
        }
        self.health = Health.UNKNOWN
        self.last: dict[str, ProbeResult] = {}
        self.roles = {m.monitor_id: (m, mon) for m, mon in members}
        """R16: the enabled group members by monitor id; empty for a single monitor."""
        self.members: dict[str, dict[str, Check]] = {}
        """R16: per vantage point, one counter per member; the vantage check holds their
        :func:`combine`."""
        self.member_last: dict[tuple[str, str], ProbeResult] = {}
        """R16: the latest result per (vantage point, member)."""
        if self.roles:
            self.members = {v: self._member_checks() for v in self.checks}

    def _member_checks(self) -> dict[str, Check]:
        return {
            mid: Check(consecutive_up=mon.consecutive_up, consecutive_down=mon.consecutive_down)
            for mid, (_m, mon) in self.roles.items()
        }

    def combined(self, vantage: str) -> Health:
        """R16: the vantage point's state from its members' states."""
        checks = self.members.get(vantage, {})
        return combine(
            [
                MemberVote(checks[mid].state, m.must_be_healthy, m.monitoring_only)
                for mid, (m, _mon) in self.roles.items()
                if mid in checks
            ]
        )

    def damp(self, damping: FlapDamping | None) -> None:
        """Follow a reload's ``flap_damping``: keep the penalty, or drop damping."""
        if damping is None:
            self.damper = None
        elif self.damper is None:
            self.damper = Damper(damping)
        else:
            self.damper.retune(damping)

    def passive(self, passive: PassiveHealth | None) -> None:
        """Follow a reload's ``passive_health``: keep the runs and any ejection, or drop it."""
        if passive is None:
            self.ejector = None
        elif self.ejector is None:
            self.ejector = Ejector(passive)
        else:
            self.ejector.retune(passive)

    def effective(self) -> Health:
        """:attr:`raw`, or ``UNHEALTHY`` while flap damping suppresses the endpoint or
        passive health has ejected it."""
        if self.raw is Health.UNKNOWN:
            return self.raw
        if self.damper is not None and self.damper.suppressed:
            return Health.UNHEALTHY
        if self.ejector is not None and self.ejector.ejected:
            return Health.UNHEALTHY
        return self.raw

    def retune(self, monitor: Monitor, vantages: Iterable[str], members: Members = ()) -> None:
        """Keep the states of surviving vantage points; new thresholds, new points unknown.

        Remote vantage points (fed by :meth:`HealthBook.assign`) stay: their verdicts do not
        depend on this process's configuration.  One that is now configured here becomes local.
        """
        checks = {}
        for v in vantages:
            check = self.checks.get(v)
            if check is None:
                check = Check(
                    consecutive_up=monitor.consecutive_up,
                    consecutive_down=monitor.consecutive_down,
                )
            else:
                check.retune(
                    consecutive_up=monitor.consecutive_up,
                    consecutive_down=monitor.consecutive_down,
                )
            checks[v] = check
        self.remote = {v for v in self.remote if v not in checks}
        for v in sorted(self.remote):
            checks[v] = self.checks[v]
        self.checks = checks
        self.last = {v: r for v, r in self.last.items() if v in checks}
        if self.roles:
            self.members = {v: self.members.get(v) or self._member_checks() for v in checks}
            self.roles = {m.monitor_id: (m, mon) for m, mon in members}
            for member_checks in self.members.values():
                for mid, check in member_checks.items():
                    _m, mon = self.roles[mid]
                    check.retune(
                        consecutive_up=mon.consecutive_up, consecutive_down=mon.consecutive_down
                    )
            self.member_last = {k: r for k, r in self.member_last.items() if k[0] in checks}


class HealthBook:
    """Owns endpoint health for one configuration at a time; see the module docstring."""

    def __init__(self, config: Config, *, now: float = 0.0, decides_passive: bool = True) -> None:
        self._config = config
        self.decides_passive = decides_passive
        """False in a child worker: passive health is decided by the parent's book, and this
        one only follows it (:meth:`follow`); :meth:`outcome` counts nothing and a passing
        probe returns no endpoint."""
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._disabled_at: dict[tuple[str, str], float] = {}
        self._rtt: dict[tuple[str, str], float] = {}
        self._rtt_shown: dict[tuple[str, str], float] = {}
        """The averages the current snapshot shows."""
        self._version = 0
        self._snapshot: Snapshot | None = None
        self._now = now
        """The latest time an input carried: ramps still running are shown as of then."""
        self._ramp_until = 0.0
        """When the last ramp of the current snapshot ends (0: none)."""
        self._pools_down: set[str] = set()
        """Monitored pools that were critical (decided and not eligible) since last eligible."""
        self._pool_recovered: dict[str, float] = {}
        """When each pool in :attr:`_pools_down` became eligible again (for ``slow_start``)."""
        self._build(config, previous={}, now=now)

    # ------------------------------------------------------------------ inputs

    def apply(self, result: ProbeResult) -> list[HealthEvent]:
        """Count one probe result; return the transitions it caused (R12, R14, R15)."""
        self._tick(result.at)
        ep = self._endpoints.get((result.pool, result.endpoint))
        if ep is None:
            return []  # a result for an endpoint a reload removed: stale, ignored
        check = ep.checks.get(result.vantage)
        if check is None:
            return []
        if ep.roles and result.member not in ep.members.get(result.vantage, {}):
            return []  # R16: a result for no probing member of the group (stale)
        ep.last[result.vantage] = result
        if result.ok and result.rtt is not None:
            self._observe_rtt(result.pool, result.vantage, result.rtt)
        before = check.state
        if ep.roles:
            self._apply_member(ep, result)
            check.state = ep.combined(result.vantage)
        else:
            check.observe(result.ok)
        returned = self._return(ep, result)
        if returned:
            events = returned
            if check.state is not before:
                events = [self._event(result, result.vantage, before, check.state), *events]
            return events + self._aggregate_reason(
                self._reaggregate(ep, result, changed=True), returned[0].reason
            )
        if check.state is before:
            if ep.damper is not None and ep.damper.suppressed:
                # Perhaps the penalty decayed below reuse; the snapshot stays if not.
                shown = self._snapshot
                events = self._reaggregate(ep, result, changed=True)
                if not events:
                    self._snapshot = shown
                return events
            return []
        events = [self._event(result, result.vantage, before, check.state)]
        # Any transition (not only the aggregate's) makes the snapshot stale: it also shows
        # the per-vantage states (EndpointView.vantage_health).  Transitions are rare.
        return events + self._reaggregate(ep, result, changed=True)

    def outcome(
        self, pool: str, endpoint: str, outcome: Outcome, *, now: float
    ) -> list[HealthEvent]:
        """Count the outcome of one attempt at an endpoint (``passive_health``).

        Returns the ejection's events when this outcome completed a run of failures and the
        pool may lose one more endpoint (:func:`~lb.core.passive.cap`); an endpoint steering
        does not use (not healthy, or already ejected) is not counted.
        """
        ep = self._endpoints.get((pool, endpoint))
        if not self.decides_passive or ep is None or ep.health is not Health.HEALTHY:
            return []  # not counted: a run built while unhealthy would eject on recovery
        ejector = ep.ejector
        if ejector is None or ejector.ejected:
            return []
        reason = ejector.observe(outcome)
        if not reason:
            return []
        peers = [e for (p, _), e in self._endpoints.items() if p == pool]
        out = sum(1 for e in peers if e.ejector is not None and e.ejector.ejected)
        if out >= cap(len(peers), ejector.config.max_ejection_percent):
            return []  # the run stands: the next failure tries again
        self._tick(now)
        ejector.eject(now, reason)
        return self._ejected(ep, pool, endpoint, None if outcome.connect_failed else outcome.status)

    def follow(self, pool: str, endpoint: str, state: Saved) -> list[HealthEvent]:
        """Take the deciding book's passive-health state of one endpoint (``state``, times
        already on this clock); returns the ejection's or the return's events when it changes.

        For a book with ``decides_passive=False``: a child worker steers around exactly the
        endpoints its parent ejected.  A return re-aggregates as of ``state.returned_at``.
        Nothing happens for an endpoint this book does not know or does not cover with
        passive health.  The events are the ones the deciding book reported, with this
        book's health before (an endpoint its monitors already marked unhealthy makes no
        aggregate event), and a return's reason says ``followed``.
        """
        ep = self._endpoints.get((pool, endpoint))
        if ep is None or ep.ejector is None:
            return []
        ejector = ep.ejector
        was = ejector.ejected
        ejector.load(state)
        if state.ejected and not was:
            self._tick(state.since)
            return self._ejected(ep, pool, endpoint, None)
        if was and not state.ejected and state.returned_at is not None:
            at = state.returned_at
            self._tick(at)
            probe = ProbeResult(pool=pool, endpoint=endpoint, vantage=PASSIVE, at=at, ok=True)
            returned = self._returned(probe, ejector, "followed")
            return returned + self._aggregate_reason(
                self._reaggregate(ep, probe, changed=True), returned[0].reason
            )
        return []

    def _ejected(
        self, ep: _Endpoint, pool: str, endpoint: str, status: int | None
    ) -> list[HealthEvent]:
        """The events of an ejection just made (or followed), with the health it gives."""
        ejector = ep.ejector
        assert ejector is not None
        now = ejector.since
        self._snapshot = None
        events = [
            HealthEvent(
                at=now,
                pool=pool,
                endpoint=endpoint,
                vantage=PASSIVE,
                before=Health.HEALTHY,
                after=Health.UNHEALTHY,
                reason=f"{ejector.reason}, ejected for {ejector.until - ejector.since:g}s",
                status=status,
            )
        ]
        before = ep.health
        ep.health = ep.effective()
        if ep.health is before:
            return events  # followed while its monitors hold it out already
        ep.changed_at = now
        events.append(
            HealthEvent(
                at=now,
                pool=pool,
                endpoint=endpoint,
                vantage="*",
                before=before,
                after=ep.health,
                reason=ejector.reason,
                status=status,
            )
        )
        self._note_pool(pool, now)
        return events

    def _return(self, ep: _Endpoint, result: ProbeResult) -> list[HealthEvent]:
        """Passive health: a passing probe after the ejection time puts the endpoint back
        (only in the deciding book: a follower is put back by :meth:`follow`)."""
        ejector = ep.ejector
        if not self.decides_passive or ejector is None or not result.ok:
            return []
        if not ejector.due(result.at):
            return []
        ejector.release(result.at)
        return self._returned(result, ejector)

    @staticmethod
    def _returned(result: ProbeResult, ejector: Ejector, why: str = "") -> list[HealthEvent]:
        """The event of a return at ``result.at``: a passing check of ``result.vantage``, or
        ``why`` (a followed return)."""
        why = why or f"{result.vantage} check passed"
        reason = f"passive: ejection of {result.at - ejector.since:.1f}s over, {why}"
        return [
            HealthEvent(
                at=result.at,
                pool=result.pool,
                endpoint=result.endpoint,
                vantage=PASSIVE,
                before=Health.UNHEALTHY,
                after=Health.HEALTHY,
                reason=reason,
            )
        ]

    @staticmethod
    def _aggregate_reason(events: list[HealthEvent], reason: str) -> list[HealthEvent]:
        """``events`` with ``reason`` on the aggregate transitions that have none."""
        return [
            dataclasses.replace(e, reason=reason) if e.vantage == "*" and not e.reason else e
            for e in events
        ]

    def passive(self, pool: str, endpoint: str) -> Ejector | None:
        """The passive-health state of one endpoint; None when ``passive_health`` is off."""
        ep = self._endpoints.get((pool, endpoint))
        return ep.ejector if ep is not None else None

    def _apply_member(self, ep: _Endpoint, result: ProbeResult) -> None:
        """R16: count a group member's result with that member's counters."""
        member_check = ep.members[result.vantage][result.member]
        ep.member_last[(result.vantage, result.member)] = result
        before = member_check.state
        member_check.observe(result.ok)
        if member_check.state is not before:
            self._snapshot = None

    def settle(
        self,
        pool: str,
        endpoint: str,
        *,
        ok: bool,
        at: float,
        reason: str = "",
        member: str | None = None,
    ) -> None:
        """Feed results until every vantage point of the endpoint passes (or fails).

        For what-if tools (``tunnel-lb explain``, tests): the endpoint reaches the state
        through the same R12 counters a real monitor drives, whatever its thresholds.  With
        ``member``, only that monitor group member's counters are fed (R16): the endpoint
        then has whatever health the group makes of it.
        """
        ep = self._endpoints.get((pool, endpoint))
        target = Health.HEALTHY if ok else Health.UNHEALTHY
        for vantage in list(ep.checks) if ep else ():
            assert ep is not None
            members = ep.members.get(vantage, {}) if ep.roles else {"": ep.checks[vantage]}
            for name, check in members.items():
                if member is not None and name != member:
                    continue
                while check.state is not target:
                    self.apply(
                        ProbeResult(
                            pool=pool,
                            endpoint=endpoint,
                            vantage=vantage,
                            at=at,
                            ok=ok,
                            reason=reason,
                            member=name,
                        )
                    )

    def assign(
        self, pool: str, endpoint: str, vantage: str, state: Health, *, at: float, reason: str = ""
    ) -> list[HealthEvent]:
        """Set the state of one vantage point of an endpoint as another prober decided it.

        The verdict of a vantage point probing elsewhere (``lb.cluster``): no counting here,
        the sender's R12 counters already ran.  A vantage point not configured here joins the
        endpoint.  Returns the transitions (R15), the aggregate by the same :func:`majority`.
        """
        self._tick(at)
        ep = self._endpoints.get((pool, endpoint))
        if ep is None:
            return []
        check = ep.checks.get(vantage)
        joined = check is None
        if check is None:
            monitor = self._monitor_of(pool)
            if monitor is None:
                return []
            check = Check(
                consecutive_up=monitor.consecutive_up, consecutive_down=monitor.consecutive_down
            )
            ep.checks[vantage] = check
            ep.remote.add(vantage)
        before = check.state
        check.state = state
        probe = ProbeResult(
            pool=pool,
            endpoint=endpoint,
            vantage=vantage,
            at=at,
            ok=state is Health.HEALTHY,
            reason=reason,
        )
        events = [] if before is state else [self._event(probe, vantage, before, state)]
        return events + self._reaggregate(ep, probe, changed=bool(events) or joined)

    def withdraw(self, pool: str, endpoint: str, vantage: str, *, at: float) -> list[HealthEvent]:
        """Remove a remote vantage point from an endpoint's majority (its votes went stale).

        Configured vantage points never leave; for them this does nothing.
        """
        ep = self._endpoints.get((pool, endpoint))
        if ep is None or vantage not in ep.remote:
            return []
        ep.remote.discard(vantage)
        check = ep.checks.pop(vantage)
        ep.last.pop(vantage, None)
        probe = ProbeResult(
            pool=pool, endpoint=endpoint, vantage=vantage, at=at, ok=False, reason="vote_expired"
        )
        events = []
        if check.state is not Health.UNKNOWN:
            events.append(self._event(probe, vantage, check.state, Health.UNKNOWN))
        return events + self._reaggregate(ep, probe, changed=True)

    def remote_vantages(self) -> set[tuple[str, str, str]]:
        """Every ``(pool, endpoint, vantage)`` fed by :meth:`assign` and not configured here."""
        return {(p, e, v) for (p, e), ep in self._endpoints.items() for v in ep.remote}

    def reconfigure(self, config: Config, *, now: float) -> list[HealthEvent]:
        """Swap in a new configuration, keeping the health of unchanged endpoints."""
        previous = self._endpoints
        self._endpoints = {}
        old_enabled = {
            (p.name, o.name)
            for p in self._config.pools
            for o in p.origins
            if p.enabled and o.enabled
        }
        before = {key: ep.health for key, ep in previous.items()}
        damping = config.engine.flap_damping
        self._config = config
        self._build(config, previous=previous, now=now, old_enabled=old_enabled)
        self._snapshot = None
        # R15: a reload that resets or re-aggregates an endpoint reports it like a probe would.
        events = []
        for key, ep in self._endpoints.items():
            ep.damp(damping)
            ep.passive(config.passive(config.pool(key[0])))
            ep.raw = majority([c.state for c in ep.checks.values()])
            aggregate = ep.effective()
            old = before.get(key, Health.UNKNOWN)
            ep.health = aggregate
            if aggregate is not old:
                events.append(
                    HealthEvent(
                        at=now,
                        pool=key[0],
                        endpoint=key[1],
                        vantage="*",
                        before=old,
                        after=aggregate,
                        reason="reconfigured",
                    )
                )
        return events

    def restore(
        self,
        states: Mapping[tuple[str, str, str], Health],
        rtt: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        """Set vantage states (and pool RTT averages) copied from another book's snapshot.

        For a fresh book in a new proxy worker process (``lb.workers``): it must steer like
        the book of the process that probes, without waiting for ``consecutive_up`` results.
        Keys are ``(pool, endpoint, vantage)``; unknown keys are ignored.  The run counters
        of a restored check start at zero: the caller replays the pending run of results
        after this (see docs/workers.md).  No events are returned: nothing was observed.
        """
        for (pool, endpoint, vantage), health in states.items():
            ep = self._endpoints.get((pool, endpoint))
            check = ep.checks.get(vantage) if ep is not None else None
            if ep is None or check is None:
                continue
            check.state = health
            for member_check in ep.members.get(vantage, {}).values():
                member_check.state = health  # R16: members agreeing with the restored state
            ep.raw = majority([c.state for c in ep.checks.values()])
            ep.health = ep.effective()
        self._rtt.update(rtt or {})
        self._snapshot = None

    def saved(self) -> list[SavedEndpoint]:
        """The health of every endpoint with a decided local vantage point, for the state file.

        Remote vantage points (a cluster's other replicas) are not kept: their votes come
        back from the store.
        """
        out = []
        for (pool, endpoint), ep in self._endpoints.items():
            local = {v: c.state for v, c in ep.checks.items() if v not in ep.remote}
            if all(state is Health.UNKNOWN for state in local.values()):
                continue
            out.append(
                SavedEndpoint(
                    pool=pool,
                    endpoint=endpoint,
                    vantages=local,
                    changed_at=ep.changed_at,
                    recovered_at=ep.recovered_at,
                    damping=ep.damper.state() if ep.damper is not None else None,
                    passive=ep.ejector.state() if ep.ejector is not None else None,
                )
            )
        return out

    def load(self, saved: Iterable[SavedEndpoint]) -> list[tuple[str, str, str]]:
        """Take health saved by :meth:`saved` (times already on this clock), for a restart.

        Only endpoints and vantage points the configuration still has are taken; an endpoint
        whose probe changed is not there (the caller checks the configuration hash).  No
        events: nothing was observed.  Returns the ``(pool, endpoint, vantage)`` restored.
        """
        restored = []
        for s in saved:
            ep = self._endpoints.get((s.pool, s.endpoint))
            if ep is None:
                continue
            for vantage, health in s.vantages.items():
                check = ep.checks.get(vantage)
                if check is not None and vantage not in ep.remote:
                    check.state = health
                    restored.append((s.pool, s.endpoint, vantage))
            ep.changed_at, ep.recovered_at = s.changed_at, s.recovered_at
            if ep.damper is not None and s.damping is not None:
                ep.damper.load(*s.damping)
            if ep.ejector is not None and s.passive is not None:
                ep.ejector.load(s.passive)
            ep.raw = majority([c.state for c in ep.checks.values()])
            ep.health = ep.effective()
        self._snapshot = None
        return restored

    # ------------------------------------------------------------------ outputs

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    def targets(self) -> list[ProbeTarget]:
        """Every (pool, endpoint) that must be probed, in configuration order (R10)."""
        out: list[ProbeTarget] = []
        for pool in self._config.pools:
            if not pool.enabled or not pool.monitored:
                continue
            if pool.monitor_group is not None:
                out.extend(
                    ProbeTarget(
                        pool=pool.name,
                        endpoint=o.name,
                        origin=o,
                        monitor=monitor,
                        pool_id=pool.id or pool.name,
                        member=member.monitor_id,
                    )
                    for o in pool.origins
                    if o.enabled
                    for member, monitor in _members(self._config, pool)
                )
                continue
            assert pool.monitor is not None
            monitor = self._config.monitor(pool.monitor)
            out.extend(
                ProbeTarget(
                    pool=pool.name,
                    endpoint=o.name,
                    origin=o,
                    monitor=monitor,
                    pool_id=pool.id or pool.name,
                )
                for o in pool.origins
                if o.enabled
            )
        return out

    def last_results(self, pool: str, endpoint: str) -> dict[str, ProbeResult]:
        """The latest probe result per vantage point of one endpoint."""
        ep = self._endpoints.get((pool, endpoint))
        return dict(ep.last) if ep else {}

    def member_results(self, pool: str, endpoint: str) -> dict[tuple[str, str], ProbeResult]:
        """R16: the latest result per (vantage point, member) of an endpoint of a group pool."""
        ep = self._endpoints.get((pool, endpoint))
        return dict(ep.member_last) if ep else {}

    def member_states(self, pool: str, endpoint: str) -> dict[str, dict[str, Health]]:
        """R16: per vantage point, the state of every group member (empty without a group)."""
        ep = self._endpoints.get((pool, endpoint))
        if ep is None:
            return {}
        return {v: {m: c.state for m, c in checks.items()} for v, checks in ep.members.items()}

    def state(self, pool: str, endpoint: str, vantage: str) -> Health:
        """The state of one vantage point of one endpoint (``UNKNOWN`` when not tracked)."""
        ep = self._endpoints.get((pool, endpoint))
        check = ep.checks.get(vantage) if ep is not None else None
        return check.state if check is not None else Health.UNKNOWN

    def snapshot(self) -> Snapshot:
        """The current immutable view; rebuilt only after a change."""
        if self._snapshot is None:
            self._version += 1
            self._rtt_shown = dict(self._rtt)
            self._snapshot = self._make_snapshot()
        return self._snapshot

    # ------------------------------------------------------------------ internals

    def _build(
        self,
        config: Config,
        *,
        previous: dict[tuple[str, str], _Endpoint],
        now: float,
        old_enabled: set[tuple[str, str]] | None = None,
    ) -> None:
        vantages = config.engine.vantage_points
        for pool in config.pools:
            members = _members(config, pool)
            monitor = config.monitor(pool.monitor) if pool.monitor else None
            if members:
                monitor = members[0][1]
            for origin in pool.origins:
                key = (pool.name, origin.name)
                enabled = pool.enabled and origin.enabled
                if not enabled:
                    if old_enabled is not None and key in old_enabled:
                        self._disabled_at[key] = now
                    continue
                self._disabled_at.pop(key, None)
                if monitor is None:
                    continue
                ident = identity(pool, origin, monitor, members)
                old = previous.get(key)
                if old is not None and old.identity == ident:
                    old.retune(monitor, vantages, members)
                    self._endpoints[key] = old
                else:
                    self._endpoints[key] = _Endpoint(
                        ident,
                        monitor,
                        vantages,
                        members,
                        config.engine.flap_damping,
                        config.passive(pool),
                    )

    def _monitor_of(self, pool: str) -> Monitor | None:
        for p in self._config.pools:
            if p.name == pool:
                monitors = self._config.pool_monitors(p)
                return monitors[0] if monitors else None
        return None

    def _reaggregate(
        self, ep: _Endpoint, probe: ProbeResult, *, changed: bool
    ) -> list[HealthEvent]:
        """After a vantage point's state or membership changed: new snapshot, new aggregate.

        The monitors' verdict (R14) goes through flap damping when it is on: a flip between
        healthy and unhealthy adds a penalty, and a suppression holds the endpoint out.
        """
        if not changed:
            return []
        self._snapshot = None
        raw = majority([c.state for c in ep.checks.values()])
        events: list[HealthEvent] = []
        damper = ep.damper
        reason = ""
        if damper is not None:
            flipped = raw is not ep.raw and Health.UNKNOWN not in (raw, ep.raw)
            if flipped and damper.flap(probe.at):
                reason = (
                    f"flap_damping: penalty {damper.penalty:.2f}"
                    f" above suppress {damper.limits[0]:g}"
                )
                events.append(self._damping_event(probe, Health.UNHEALTHY, reason))
            elif not flipped and damper.release(probe.at):
                reason = (
                    f"flap_damping: penalty {damper.current(probe.at):.2f}"
                    f" below reuse {damper.limits[1]:g}"
                )
                events.append(self._damping_event(probe, Health.HEALTHY, reason))
        ep.raw = raw
        aggregate = ep.effective()
        if aggregate is not ep.health:
            if ep.health is Health.UNHEALTHY and aggregate is Health.HEALTHY:
                ep.recovered_at = probe.at
            ep.changed_at = probe.at
            event = self._event(probe, "*", ep.health, aggregate)
            if reason and not event.reason:
                event = dataclasses.replace(event, reason=reason)
            events.append(event)
            ep.health = aggregate
            self._note_pool(probe.pool, probe.at)
        return events

    def _note_pool(self, name: str, at: float) -> None:
        """After an endpoint's health changed: has its pool become critical, or eligible
        again after being critical (R17)?  Kept at each change, not per snapshot, so that a
        short outage between two snapshots is not missed."""
        pool = next((p for p in self._config.pools if p.name == name), None)
        if pool is None or not pool.enabled or pool.slow_start <= 0:
            return
        healths = [
            ep.health
            for o in pool.origins
            if o.enabled and (ep := self._endpoints.get((name, o.name))) is not None
        ]
        healthy = sum(1 for h in healths if h is Health.HEALTHY)
        if healthy >= pool.minimum_origins:
            if name in self._pools_down:
                self._pools_down.discard(name)
                self._pool_recovered[name] = at
        elif any(h is not Health.UNKNOWN for h in healths):
            self._pools_down.add(name)
            self._pool_recovered.pop(name, None)

    def _pool_ramp(self, pool: Pool, *, eligible: bool) -> tuple[float, float] | None:
        """``(since, slow_start)`` while a pool that was critical ramps up again."""
        since = self._pool_recovered.get(pool.name)
        if since is None or not eligible or pool.slow_start <= 0:
            return None
        if self._now >= since + pool.slow_start:
            del self._pool_recovered[pool.name]
            return None
        return (since, pool.slow_start)

    def _tick(self, now: float) -> None:
        """Advance the book's clock; the first input after every ramp ended drops them."""
        self._now = max(self._now, now)
        if self._ramp_until and now >= self._ramp_until:
            self._ramp_until = 0.0
            self._snapshot = None

    def _damping_event(self, probe: ProbeResult, after: Health, reason: str) -> HealthEvent:
        before = Health.HEALTHY if after is Health.UNHEALTHY else Health.UNHEALTHY
        return HealthEvent(
            at=probe.at,
            pool=probe.pool,
            endpoint=probe.endpoint,
            vantage=DAMPING,
            before=before,
            after=after,
            reason=reason,
        )

    def damping(self, pool: str, endpoint: str, now: float) -> tuple[float, bool] | None:
        """``(penalty at now, suppressed)`` of one endpoint; None without flap damping."""
        ep = self._endpoints.get((pool, endpoint))
        if ep is None or ep.damper is None:
            return None
        return (ep.damper.current(now), ep.damper.suppressed)

    def _observe_rtt(self, pool: str, vantage: str, rtt: float) -> None:
        alpha = self._config.engine.dynamic_latency_alpha
        key = (pool, vantage)
        old = self._rtt.get(key)
        new = rtt if old is None else old + alpha * (rtt - old)
        self._rtt[key] = new
        # dynamic_latency reads RTT from the snapshot; rebuild only when the average moved 10%
        # away from the value the snapshot shows, so that steady probes cost no rebuild and a
        # slow drift still gets published.
        shown = self._rtt_shown.get(key)
        if shown is None or abs(new - shown) > 0.1 * shown:
            self._snapshot = None

    def _event(self, r: ProbeResult, vantage: str, before: Health, after: Health) -> HealthEvent:
        return HealthEvent(
            at=r.at,
            pool=r.pool,
            endpoint=r.endpoint,
            vantage=vantage,
            before=before,
            after=after,
            reason=r.reason if not r.ok else "",
            status=r.status,
            rtt=r.rtt,
        )

    def _make_snapshot(self) -> Snapshot:
        config = self._config
        tunnels = {t.id: t.datacenters for t in config.tunnels}
        pools: dict[str, PoolView] = {}
        now = self._now
        ramp_until = 0.0
        for pool in config.pools:
            monitored = pool.monitored
            views = []
            for i, o in enumerate(pool.origins):
                key = (pool.name, o.name)
                enabled = pool.enabled and o.enabled
                ep = self._endpoints.get(key)
                if not enabled:
                    health = Health.UNKNOWN
                elif not monitored:
                    health = Health.HEALTHY
                else:
                    health = ep.health if ep else Health.UNKNOWN
                tid = o.tunnel_id
                slow = pool.slow_start if o.slow_start is None else o.slow_start
                ramp = None
                since = ep.recovered_at if ep is not None else None
                if since is not None and slow > 0 and now < since + slow:
                    ramp = (since, slow)
                    ramp_until = max(ramp_until, since + slow)
                views.append(
                    EndpointView(
                        pool=pool.name,
                        name=o.name,
                        index=i,
                        address=o.address,
                        port=o.port,
                        host=o.host_header,
                        tunnel_id=tid,
                        weight=o.weight,
                        enabled=enabled,
                        health=health,
                        vantage_health={v: c.state for v, c in ep.checks.items()} if ep else {},
                        disabled_at=self._disabled_at.get(key),
                        datacenters=tunnels.get(tid, frozenset()) if tid else frozenset(),
                        ramp=ramp if health is Health.HEALTHY else None,
                        damped=_damped(ep),
                        ejected=_ejected(ep),
                    )
                )
            endpoints = tuple(views)
            selectable = tuple(e for e in endpoints if e.selectable)
            healthy = sum(1 for e in endpoints if e.enabled and e.health is Health.HEALTHY)
            # R13: without a monitor health is not considered, so minimum_origins is not either.
            eligible = pool.enabled and (not monitored or healthy >= pool.minimum_origins)
            state = _pool_state(pool, endpoints, monitored=monitored, eligible=eligible)
            pool_ramp = self._pool_ramp(pool, eligible=eligible)
            if pool_ramp is not None:
                ramp_until = max(ramp_until, pool_ramp[0] + pool_ramp[1])
            pools[pool.name] = PoolView(
                name=pool.name,
                config=pool,
                monitored=monitored,
                state=state,
                eligible=eligible,
                healthy_count=healthy,
                endpoints=endpoints,
                selectable=selectable,
                cumulative=PoolView.tables(selectable),
                rtt={v: rtt for (p, v), rtt in self._rtt.items() if p == pool.name},
                ramp=pool_ramp,
                ramping=any(e.ramp is not None for e in selectable),
            )
        self._ramp_until = ramp_until
        return Snapshot(
            version=self._version,
            config=config,
            pools=pools,
            load_balancers={lb.name.lower(): lb for lb in config.load_balancers if lb.enabled},
        )


def _members(config: Config, pool: Pool) -> Members:
    """The enabled members of ``pool``'s monitor group with their monitors (R16)."""
    if pool.monitor_group is None:
        return ()
    group = config.monitor_group(pool.monitor_group)
    return tuple((m, config.monitor(m.monitor_id)) for m in group.active)


def _damped(ep: _Endpoint | None) -> str:
    """The trace's reason for an endpoint flap damping holds out, or ""."""
    if ep is None or ep.damper is None or not ep.damper.suppressed:
        return ""
    reuse = ep.damper.limits[1]
    return f"flap damping holds it out until its penalty decays below {reuse:g}"


def _ejected(ep: _Endpoint | None) -> str:
    """The trace's reason for an endpoint passive health has ejected, or ""."""
    if ep is None or ep.ejector is None or not ep.ejector.ejected:
        return ""
    return (
        f"passive health ejected it at {ep.ejector.since:g} (ejection {ep.ejector.ejections}); "
        f"its first passing check from {ep.ejector.until:g} brings it back"
    )


def _pool_state(
    pool: Pool, endpoints: tuple[EndpointView, ...], *, monitored: bool, eligible: bool
) -> PoolState:
    """R13, R17 and §2.3: the displayed health of a pool."""
    if not pool.enabled:
        return PoolState.DISABLED
    if not monitored:
        return PoolState.UNKNOWN
    enabled = [e for e in endpoints if e.enabled]
    if enabled and all(e.health is Health.UNKNOWN for e in enabled):
        return PoolState.UNKNOWN
    if not eligible:
        return PoolState.CRITICAL
    if all(e.health is Health.HEALTHY for e in enabled):
        return PoolState.HEALTHY
    return PoolState.DEGRADED
