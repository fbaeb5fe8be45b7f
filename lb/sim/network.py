"""The simulated network: how every endpoint answers, per vantage point, in virtual time.

Why a pure function of time
===========================

trio runs tasks that wake at the same instant in a randomised order.  If timeline events
mutated shared state from a task, a probe and an event due at the same instant could see each
other in either order and one seed would give two reports.  So the network holds no mutable
state: :class:`Network` compiles the scenario's timeline into per-(address, replica, layer)
step functions once, and every question ("what does this probe get at t?", "what does a user
entering at FRA get at t?") is answered from ``t`` alone.  An event at ``t`` applies to
everything that asks at ``t`` or later.

The layers of a tunnel endpoint (``docs/simulate.md`` has the table of statuses):

* the **edge** layer is cloudflared and the path to it.  A replica that refuses, is
  blackholed, unreachable or down holds no usable connection; the Cloudflare edge sends a
  request to a usable replica connected in the request's data center, else to the nearest
  one (local connection preference, docs/connector.md).  With none left, the user gets
  521 / 522 / 523 / 530 and a probe a refused connection, a timeout, no route, or 530.
* cloudflared routes by Host and path with the tunnel's ingress rules (R48, the matcher of
  :mod:`lb.connector.ingress`): ``http_status:NNN`` answers without the application, so a
  health route stays green while the application is down;
* the **origin** layer is the application: when it fails users get 502 (524 when it hangs,
  or when a user's answer comes later than the proxy waits: :meth:`Network.answers`).

:class:`SimTransport` plugs this into the monitor scheduler's transport seam
(:class:`monitors.transport.ProbeTransport`); the scheduler, timeouts, retries and judging are
the real ones.
"""

from __future__ import annotations

import errno
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from lb.config.model import Config, Datacenter
from lb.connector.ingress import HelloWorld, HttpStatus, match_rule
from lb.sim.scenario import EDGE, ORIGIN, NetEvent, Replica, Scenario
from lb.sim.spec import FAULTS, TimelineAction
from monitors.spec import Probe
from monitors.transport import Exchange
from steering.geo import nearest

__all__ = [
    "HANG",
    "TIE",
    "Answer",
    "Network",
    "SimSession",
    "SimTransport",
    "conditions_after",
    "prefer_local",
]

T = TypeVar("T")

EDGE_STATUS: dict[str, int] = {
    TimelineAction.REFUSE: 521,
    TimelineAction.BLACKHOLE: 522,
    TimelineAction.UNREACHABLE: 523,
    TimelineAction.DOWN: 530,
}
"""What a user gets when no replica of a tunnel (or a plain endpoint) can be reached."""
CONNECT_FAULTS: frozenset[str] = frozenset(
    {TimelineAction.REFUSE, TimelineAction.BLACKHOLE, TimelineAction.UNREACHABLE}
)
"""Edge faults that fail the proxy's connection itself (the proxy's 521 / 522 / 523)."""
ORIGIN_STATUS: dict[str, int] = {
    TimelineAction.REFUSE: 502,
    TimelineAction.BLACKHOLE: 524,
    TimelineAction.UNREACHABLE: 502,
    TimelineAction.DOWN: 502,
    TimelineAction.RESET: 502,
}
"""What a user gets when cloudflared is up but the application behind it fails."""
_EDGE_OWN = "edge-own"
"""An edge ``status`` of every replica (a ``tunnel:`` or ``endpoint:`` target): the edge
answers it without a replica, as the rehearsal's edge stand-in does (``lb/rehearse/edge.py``)."""
TIE = 1e-9
"""How far apart two virtual times may be and still be the same instant.  Times are float
sums (a request's tick plus its place in the batch, an attempt's start plus its latency), so
two that are equal on paper can differ in the last bit, one way or the other by where they
fall.  Every comparison of a due time with "now" allows this much, so that such a tie is
decided by one rule, not by rounding: an answer due exactly at the request timeout comes
(:meth:`Network._in_time`), an outcome due at the instant of a request is heard before it
(:class:`lb.sim.traffic.PendingOutcomes`)."""
HANG = "hang"
"""The failure of an answer that never came in time: the origin holds the request
(``blackhole``), or, for a user, its head comes later than the proxy waits
(:meth:`Network.answers`, ``user``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt through one replica gets."""

    replica: str | None
    """``tunnel/replica`` label, None for a plain endpoint."""
    status: int
    latency: float
    failure: str = ""
    """``refuse``, ``blackhole`` or ``unreachable`` for a failed connection; ``hang``
    (:data:`HANG`) for an answer that does not come in time (a probe waits for it until its
    own timeout, a user gets the proxy's 524); ``reset`` for an endpoint that resets the
    connection before answering, ``truncate`` for one that resets it in the middle of the
    body (users and probes); else empty."""
    connect_failed: bool = False
    """The connection to the endpoint failed (edge ``refuse``, ``blackhole``, ``unreachable``):
    the only answers the proxy retries (R42).  Every other answer is an HTTP response, final
    whatever its status; ``down`` is one too (the edge's 530, error 1033)."""
    through: bool = False
    """A whole response came through ``replica``: its own status, its ingress rule's, or
    the application's (cloudflared's 502 included), even one the proxy no longer waited for
    (a latency above the request timeout).  What ``by_replica`` counts.  Not so: the edge's
    own answers (no usable replica: 521-523, 530; a ``status`` of the whole tunnel at the
    edge layer), a reset or cut response, an application that holds the request."""


def _fault(e: NetEvent, t: float) -> tuple[str, int]:
    """The fault a condition (the event that set it) imposes at ``t``; ``""`` when a flap is
    in its up part."""
    if e.action != TimelineAction.FLAP:
        return e.action, e.status
    if _flap_down(e, t):
        return e.how, e.status
    return "", 0


def _flap_start(e: NetEvent, n: int) -> float:
    """The instant the ``n``-th down part of a flap begins; it ends at this plus ``down_for``.

    The one expression both :func:`_flap_down` and :func:`_toggles` use, so that the network's
    change points (where cached answers are dropped) fall exactly where the answers change:
    a running sum or a ``%`` rounds differently and can put a toggle a tick late.
    """
    return e.at + n * e.period


def _flap_down(e: NetEvent, t: float) -> bool:
    """Whether a flap is in its failing part at ``t`` (``n`` from a division, then checked
    against :func:`_flap_start`, which may differ from the division by rounding)."""
    n = math.floor((t - e.at) / e.period)
    if _flap_start(e, n) > t:
        n -= 1
    elif _flap_start(e, n + 1) <= t:
        n += 1
    return t < _flap_start(e, n) + e.down_for


class _Track:
    """The conditions of one (address, replica, layer) as a step function of time."""

    __slots__ = ("states", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.states: list[tuple[NetEvent, ...]] = []

    def current(self) -> list[NetEvent]:
        return list(self.states[-1]) if self.states else []

    def push(self, at: float, conds: list[NetEvent]) -> None:
        if self.times and self.times[-1] == at:
            self.states[-1] = tuple(conds)
        else:
            self.times.append(at)
            self.states.append(tuple(conds))

    def at(self, t: float) -> tuple[NetEvent, ...]:
        i = bisect_right(self.times, t) - 1
        return self.states[i] if i >= 0 else ()


def conditions_after(conds: list[NetEvent], e: NetEvent) -> list[NetEvent]:
    """The conditions after event ``e``: recover clears, others replace their kind's slot.
    Public so the rehearsal (:mod:`lb.rehearse.drive`) keeps the state of its stand-ins by
    the same rule."""
    if e.action == TimelineAction.RECOVER:
        return [c for c in conds if e.scope and c.scope != e.scope]
    latency = e.action == TimelineAction.LATENCY
    kept = [
        c for c in conds if c.scope != e.scope or (c.action == TimelineAction.LATENCY) != latency
    ]
    kept.append(e)
    return kept


class Network:
    """Answers for users and probes; see the module docstring."""

    def __init__(self, scenario: Scenario, config: Config | None = None) -> None:
        config = config or scenario.config
        self._replicas: Mapping[str, tuple[Replica, ...]] = scenario.replicas
        self._ingress = scenario.ingress
        self._dcs: Mapping[str, Datacenter] = config.datacenters
        self.rtt = scenario.rtt
        self.body = scenario.body
        self.keep_alive = scenario.keep_alive
        """Endpoint address -> how it closes idle keep-alive connections (users' model)."""
        self._connect_timeout = config.engine.limits.connect_timeout
        self._request_timeout = config.engine.limits.request_timeout
        self._tracks: dict[tuple[str, str, str], _Track] = {}
        bounds: set[float] = set()
        for e in scenario.events:
            bounds.add(e.at)
            for name in e.replicas:
                track = self._tracks.setdefault((e.address, name, e.layer), _Track())
                track.push(e.at, conditions_after(track.current(), e))
            if e.action == TimelineAction.FLAP:
                bounds.update(_toggles(e, scenario.duration))
        self._bounds = sorted(bounds)
        self.probes_sent = 0
        """Probe attempts that reached the network (what endpoints see on the wire)."""

    # ------------------------------------------------------------------ state

    def next_change(self, t: float) -> float:
        """The first time after ``t`` at which some answer may change (inf if none)."""
        i = bisect_right(self._bounds, t)
        return self._bounds[i] if i < len(self._bounds) else math.inf

    def _state(
        self, address: str, replica: str, layer: str, place: frozenset[str], t: float
    ) -> tuple[str, int, float, bool]:
        """``(fault, status, added latency, wide)`` of one replica's layer as seen from
        ``place``; ``wide``: the fault's event targets the whole address, a ``tunnel:`` or
        ``endpoint:`` (:attr:`NetEvent.wide`; at the edge layer, the edge's own: the edge
        answers without a replica)."""
        track = self._tracks.get((address, replica, layer))
        if track is None:
            return "", 0, 0.0, False
        fault, status, latency, wide = "", 0, 0.0, False
        for c in track.at(t):
            if c.scope and not (c.scope & place):
                continue
            if c.action == TimelineAction.LATENCY:
                latency += c.latency
            else:
                fault, status = _fault(c, t)
                wide = c.wide
        return fault, status, latency, wide

    def _edge(
        self, address: str, replica: str, place: frozenset[str], t: float
    ) -> tuple[str, int, float]:
        """``(fault, status, added latency)`` of one replica's edge layer, by the one rule
        every answer follows (:meth:`answers` and :meth:`replica_answer` alike): a ``status``
        of the whole address (:attr:`NetEvent.wide`) is the edge's own, :data:`_EDGE_OWN`,
        answered without that replica whichever of them the edge picked."""
        fault, status, latency, wide = self._state(address, replica, EDGE, place, t)
        if wide and fault == TimelineAction.STATUS:
            fault = _EDGE_OWN
        return fault, status, latency

    def latency_events(self, address: str, t: float) -> list[NetEvent]:
        """The ``latency`` events in force at ``address`` at ``t`` (any replica, layer or
        scope), in file order."""
        found = {
            c.index: c
            for (a, _, _), track in self._tracks.items()
            if a == address
            for c in track.at(t)
            if c.action == TimelineAction.LATENCY
        }
        return [found[i] for i in sorted(found)]

    # ------------------------------------------------------------------ answers

    def answers(
        self,
        address: str,
        place: Iterable[str],
        dc: str,
        host: str,
        path: str,
        t: float,
        *,
        user: bool = False,
    ) -> tuple[Answer, ...]:
        """The possible answers of one attempt: one per replica the edge may pick.

        ``place`` holds the names ``seen_from`` scopes are matched against (the data center,
        or the vantage point); ``dc`` is the entry data center for locality ("" if none).
        ``user``: the attempt is a user's request through the proxy, which gives up on an
        answer too slow to come (:meth:`_in_time`); a probe waits for its monitor's own
        ``timeout`` instead (:class:`SimSession`), so its answers stay as they are.
        """
        out = self._answers(address, frozenset(place), dc, host, path, t)
        return self._in_time(out) if user else out

    def _in_time(self, answers: tuple[Answer, ...]) -> tuple[Answer, ...]:
        """``answers`` as the proxy ends them: an HTTP answer whose head would come more
        than ``engine.limits.request_timeout`` after the request was sent is its 524.

        The proxy's clock (lb/proxy/state.py, ``Phase.UPSTREAM``): the deadline starts when
        the request is written, once the connection stands, and runs to the response head.
        A simulated attempt spends the path's round trip (``rtt``) before that point and its
        added latency (edge and origin ``latency`` events) waiting for the head, so an answer
        whose added latency exceeds ``request_timeout`` times out, and the proxy gives up
        ``rtt + request_timeout`` after the attempt began (:meth:`_hang`, as for an origin
        that holds the request).  At the limit exactly the answer wins: the proxy's watchdog
        never fires early.  A failed connection is ``connect_timeout``'s affair, not this."""
        limit = self.rtt + self._request_timeout + TIE
        if all(a.connect_failed or a.latency <= limit for a in answers):
            return answers
        return tuple(
            a if a.connect_failed or a.latency <= limit else self._hang(a.replica, a.through)
            for a in answers
        )

    def _hang(self, replica: str | None, through: bool = False) -> Answer:
        """The proxy's 524: no response head ``request_timeout`` after the request was
        sent, one round trip (the connection) after the attempt began; ``through``: the
        replica's answer still comes, later (:attr:`Answer.through`)."""
        return Answer(replica, 524, self.rtt + self._request_timeout, HANG, through=through)

    def _answers(
        self, address: str, where: frozenset[str], dc: str, host: str, path: str, t: float
    ) -> tuple[Answer, ...]:
        """:meth:`answers` as the network gives them (no request timeout applied)."""
        replicas = self._replicas.get(address, ())
        usable: list[tuple[Replica, str, int, float]] = []
        dead: Answer | None = None
        for r in replicas:
            fault, status, latency = self._edge(address, r.name, where, t)
            if fault in FAULTS:
                if dead is None:
                    # a refusal (or no route) comes back over the path; a blackholed dial
                    # gets nothing, and the proxy's connect timeout, started at the dial,
                    # ends it (lb/proxy/exchange.py)
                    took = self.rtt + latency
                    if fault == TimelineAction.BLACKHOLE:
                        took = self._connect_timeout
                    dead = Answer(
                        r.label,
                        EDGE_STATUS[fault],
                        took,
                        fault,
                        connect_failed=fault in CONNECT_FAULTS,
                    )
                continue
            usable.append((r, fault, status, latency))
        if not usable:
            return (dead or Answer(None, 530, self.rtt, TimelineAction.DOWN),)
        chosen = self._local(usable, dc)
        return tuple(
            self._through(address, r, f, s, lat, where, host, path, t) for r, f, s, lat in chosen
        )

    def _local(
        self, usable: list[tuple[Replica, str, int, float]], dc: str
    ) -> list[tuple[Replica, str, int, float]]:
        return prefer_local(usable, dc, self._dcs, _replica_datacenters)

    def _through(
        self,
        address: str,
        r: Replica,
        fault: str,
        status: int,
        latency: float,
        where: frozenset[str],
        host: str,
        path: str,
        t: float,
    ) -> Answer:
        """One usable replica: its own status (or the edge's, :data:`_EDGE_OWN`), else its
        ingress rule, else the origin."""
        base = self.rtt + latency
        if fault == TimelineAction.STATUS or fault == _EDGE_OWN:
            return Answer(r.label, status, base, through=fault == TimelineAction.STATUS)
        if fault == TimelineAction.RESET or fault == TimelineAction.TRUNCATE:
            return Answer(r.label, 502, base, fault)  # no (whole) response: the proxy's 502
        rules = self._ingress.get(address)
        if rules is not None:
            service = rules[match_rule(rules, host, path)].parsed_service
            if isinstance(service, HttpStatus):
                return Answer(r.label, service.code, base, through=True)
            if isinstance(service, HelloWorld):
                return Answer(r.label, 200, base, through=True)
        o_fault, o_status, o_latency, _ = self._state(address, r.name, ORIGIN, where, t)
        base += o_latency
        if o_fault == TimelineAction.STATUS:
            return Answer(r.label, o_status, base, through=True)
        if o_fault == TimelineAction.BLACKHOLE:
            return self._hang(r.label)
        if o_fault == TimelineAction.TRUNCATE:
            # cloudflared streams the origin's body: the cut reaches the proxy as it is
            return Answer(r.label, 502, base, o_fault)
        if o_fault:
            return Answer(r.label, ORIGIN_STATUS[o_fault], base, through=True)
        return Answer(r.label, 200, base, through=True)

    def replica_answer(
        self, address: str, replica: str | None, dc: str, host: str, path: str, t: float
    ) -> Answer | None:
        """What a connection already open through ``replica`` (its label) gets at ``t``; None
        when that replica's edge connection is gone.  Locality does not apply: the
        connection exists already (a long-lived session, :mod:`lb.sim.sessions`).  Otherwise
        the answer is the one :meth:`answers` gives through that replica: the same edge rule
        (:meth:`_edge`), then :meth:`_through`."""
        where = frozenset((dc,))
        for r in self._replicas.get(address, ()):
            if r.label == replica:
                fault, status, latency = self._edge(address, r.name, where, t)
                if fault in FAULTS:
                    return None
                return self._through(address, r, fault, status, latency, where, host, path, t)
        return None

    def probe(self, probe: Probe, vantage: str, t: float, turn: int) -> Answer:
        """What one probe attempt from ``vantage`` gets; ``turn`` spreads it over replicas."""
        dc = vantage if vantage in self._dcs else ""
        address = probe.address.lower().rstrip(".")
        options = self.answers(address, (vantage,), dc, probe.host, probe.path, t)
        return options[turn % len(options)]


def prefer_local(
    usable: Sequence[T], dc: str, dcs: Mapping[str, Datacenter], where: Callable[[T], Iterable[str]]
) -> list[T]:
    """The edge's pick among usable replicas: those connected in ``dc`` (``where`` gives a
    replica's data centers), else the nearest ones, else all (cloudflared §6).  Pure, so the
    rehearsal's edge stand-in (:mod:`lb.rehearse.edge`) asks the same rule."""
    if not dc or len(usable) == 1:
        return list(usable)
    local = [u for u in usable if dc in where(u)]
    if local:
        return local
    return nearest(usable, dcs.get(dc), where, dcs) or list(usable)


def _replica_datacenters(u: tuple[Replica, str, int, float]) -> tuple[str, ...]:
    return u[0].datacenters


def _toggles(e: NetEvent, duration: float) -> list[float]:
    """The instants a flap switches between failing and working, up to ``duration``."""
    out: list[float] = []
    n = 0
    while e.period > 0 and (start := _flap_start(e, n)) <= duration:
        out.extend((start, start + e.down_for))
        n += 1
    return out


# --------------------------------------------------------------------------- the transport


class SimSession:
    """One probe identity from one vantage point, answered by the :class:`Network`."""

    def __init__(self, network: Network, probe: Probe, vantage: str, start: float) -> None:
        self.phase = "connect"
        self._network = network
        self._probe = probe
        self._vantage = vantage
        self._start = start
        self._turn = 0

    async def attempt(self) -> Exchange:
        """One attempt: refuse, hang, or answer after the simulated latency."""
        self.phase = "connect"
        network = self._network
        network.probes_sent += 1
        now = trio.current_time() - self._start
        answer = network.probe(self._probe, self._vantage, now, self._turn)
        self._turn += 1
        if answer.failure == TimelineAction.REFUSE:
            await trio.sleep(network.rtt)
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused (simulated)")
        if answer.failure == TimelineAction.UNREACHABLE:
            raise OSError(errno.EHOSTUNREACH, "no route to host (simulated)")
        if answer.failure == TimelineAction.BLACKHOLE:
            await trio.sleep_forever()
        self.phase = "http"
        if answer.failure == HANG:
            await trio.sleep_forever()
        if answer.failure == TimelineAction.RESET or answer.failure == TimelineAction.TRUNCATE:
            # a cut body fails the check too: the monitor reads the body
            await trio.sleep(answer.latency)
            raise trio.BrokenResourceError("connection reset before the answer (simulated)")
        await trio.sleep(answer.latency)
        body = network.body if self._probe.scheme != "tcp" else b""
        status = None if self._probe.scheme == "tcp" else answer.status
        return Exchange(status=status, body=body, rtt=answer.latency)

    async def aclose(self) -> None:
        """Nothing to release: the network is in memory."""


class SimTransport:
    """The in-memory :class:`monitors.transport.ProbeTransport` of the simulator."""

    def __init__(self, network: Network, start: float) -> None:
        self._network = network
        self._start = start

    def open_session(self, probe: Probe, vantage: str) -> SimSession:
        """A session whose attempts ask the network at the current virtual time."""
        return SimSession(self._network, probe, vantage, self._start)
