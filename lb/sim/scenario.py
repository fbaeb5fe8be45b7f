"""Scenario files: parsing, validation and name resolution.

A scenario names an LB configuration, the users (per data center), a timeline of things going
wrong and the expectations the run must meet (``docs/simulate.md``).  Parsing reuses the
configuration loader's machinery, public in :mod:`lb.config` (:func:`lb.config.read_file`
for nodes that remember their lines, :class:`lb.config.Parser` for typed fields), so a
scenario error reads exactly like a configuration error: file, line, dotted path, message,
every problem at once.

Names in the timeline are resolved here, once, to what the simulator keys its state by:

* ``tunnel: NAME`` (name or UUID; the whole tunnel, never one replica), ``replica:
  TUNNEL/REPLICA``, ``origin: TUNNEL[/REPLICA]`` and ``endpoint: POOL/ENDPOINT`` become a
  :class:`NetEvent` on an *address* (the endpoint address, lowercased) and optionally one
  replica, at the ``edge`` layer (cloudflared and the path to it) or the ``origin`` layer
  (the application behind cloudflared);
* ``disable`` / ``enable`` / ``weight`` become :class:`ConfigEvent` s that the run turns into
  a new :class:`~lb.config.model.Config` (``dataclasses.replace``) and
  :meth:`lb.engine.Engine.reconfigure`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lb.config import (
    INVALID,
    ConfigError,
    Node,
    Parser,
    Problem,
    Report,
    Segment,
    Where,
    did_you_mean,
    read_file,
)
from lb.config import loader as config_loader
from lb.config.kinds import SCENARIO, wrong_kind
from lb.config.model import Config, Tunnel
from lb.config.tunnels import TUNNEL_SUFFIX
from lb.connector.ingress import IngressRule, RuleError, validate_rules
from lb.sim.spec import (
    CONFIG_ACTIONS,
    MEMBER_ACTIONS,
    BoundSpec,
    EventSpec,
    ExpectSpec,
    ScenarioSpec,
    TimelineAction,
    TrafficSpec,
)

__all__ = [
    "EDGE",
    "ORIGIN",
    "ConfigEvent",
    "Expectation",
    "KeepAlive",
    "Member",
    "MemberEvent",
    "NetEvent",
    "Replica",
    "Scenario",
    "Traffic",
    "config_with",
    "load_scenario",
    "parse_scenario",
]

MAX_SIMULATED = 1e9
"""Requests and sessions one run may simulate (every data center's rate integrated over the
duration).  At the 250,000-480,000 requests/s of wall time bench/simulate.py measures, that is
half an hour to an hour: a typo in a rate or a duration (both allow large values for short
runs) is refused at once instead of running practically forever."""

EDGE = "edge"
"""Layer of cloudflared (or a plain endpoint) and the path to it."""
ORIGIN = "origin"
"""Layer of the application behind cloudflared."""
ORIGIN_SERVICE = "origin"
"""The ingress service word that means "the application behind this replica"."""

Path_ = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Replica:
    """One cloudflared replica (or the single host of a plain endpoint)."""

    name: str
    datacenters: tuple[str, ...]
    label: str | None
    """``tunnel/replica`` for traffic reports; None for plain (non-tunnel) endpoints."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """An endpoint that closes keep-alive connections idle for ``idle`` seconds (``inf``:
    never), and besides at random moments, ``random`` times per connection-second."""

    idle: float
    announce: bool
    """It says so (``Keep-Alive: timeout=<idle>``), and the proxy keeps them ``idle - 1`` s."""
    random: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """The users of one data center."""

    datacenter: str
    steps: tuple[tuple[float, float], ...]
    """``(from, requests per second)``, sorted, the first from 0."""
    clients: int
    cookies: float
    headers: float
    host: str
    path: str
    sessions_rate: float = 0.0
    """Long-lived sessions opened per second (:mod:`lb.sim.sessions`)."""
    session_duration: float = 0.0
    """Seconds each session lasts unless its endpoint fails first."""
    country: str = ""
    """The users' country for country steering ("" = the data center's)."""

    def rate(self, t: float) -> float:
        """Requests per second at ``t``."""
        current = 0.0
        for at, rate in self.steps:
            if at > t:
                break
            current = rate
        return current

    def total(self, t: float) -> float:
        """Requests due from 0 to ``t``: the integral of the rate (no float drift per tick)."""
        out = 0.0
        for i, (at, rate) in enumerate(self.steps):
            if at >= t:
                break
            end = self.steps[i + 1][0] if i + 1 < len(self.steps) else t
            out += rate * (min(end, t) - at)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NetEvent:
    """A change of how one address (optionally one replica) behaves, from ``at`` on."""

    at: float
    index: int
    """Position in the file: the canonical order of same-instant events."""
    address: str
    replicas: tuple[str, ...]
    layer: str
    action: TimelineAction
    status: int = 0
    latency: float = 0.0
    period: float = 0.0
    down_for: float = 0.0
    how: str = ""
    scope: frozenset[str] = frozenset()
    label: str = ""
    wide: bool = False
    """The target is the whole address (``tunnel:`` or ``endpoint:``), not named replicas
    (``replica:``): at the edge layer a ``status`` of it is the edge's own answer.  Said by
    the target, not guessed from ``replicas``: a one-replica tunnel's ``replica:`` names
    every replica and is still that replica's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigEvent:
    """A configuration change at ``at``: disable, enable or re-weight."""

    at: float
    index: int
    action: TimelineAction
    pool: str
    endpoint: str | None
    weight: float | None = None
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One simulated cluster replica."""

    name: str
    vantage: str
    datacenter: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberEvent:
    """A cluster member dies (``kill``), loses the store (``partition``) or comes back."""

    at: float
    index: int
    member: str
    action: TimelineAction
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """One ``expect:`` entry, resolved."""

    name: str
    kind: str
    pool: str = ""
    endpoint: str = ""
    replica: str = ""
    datacenter: str = ""
    between: tuple[float, float] | None = None
    at_least: float | None = None
    at_most: float | None = None
    within: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A validated scenario, every name resolved."""

    name: str
    file: str
    config: Config
    duration: float
    seed: int
    report_interval: float
    tick: float
    rtt: float
    body: bytes
    traffic: tuple[Traffic, ...]
    events: tuple[NetEvent, ...]
    changes: tuple[ConfigEvent, ...]
    replicas: Mapping[str, tuple[Replica, ...]]
    """Endpoint address -> its replicas (one unnamed host for a plain endpoint)."""
    ingress: Mapping[str, tuple[IngressRule, ...]] = field(default_factory=dict)
    """Tunnel endpoint address -> cloudflared ingress rules (absent: all to the origin)."""
    keep_alive: Mapping[str, KeepAlive] = field(default_factory=dict)
    """Endpoint address -> how it closes idle keep-alive connections (absent: never)."""
    expectations: tuple[Expectation, ...] = ()
    warnings: tuple[Problem, ...] = ()
    members: tuple[Member, ...] = ()
    """Cluster replicas (empty: one process, as ``tunnel-lb run`` without a cluster)."""
    member_events: tuple[MemberEvent, ...] = ()
    heartbeat: float = 2.0
    heartbeat_ttl: float = 6.0
    vote_factor: float = 3.0


def load_scenario(path: str | os.PathLike[str], *, seed: int | None = None) -> Scenario:
    """Read and validate a scenario file; raise :class:`ConfigError` with every problem."""
    node, problems = read_file(path)
    if problems:
        raise ConfigError(problems)
    if node is None:
        empty = Problem(file=os.fspath(path), line=None, path="", message="the file is empty")
        raise ConfigError([empty])
    return parse_scenario(node, os.fspath(path), seed=seed)


def parse_scenario(node: Node, filename: str, *, seed: int | None = None) -> Scenario:
    """Validate a parsed scenario document (see :func:`load_scenario`)."""
    other = wrong_kind(node, SCENARIO)
    if other is not None:
        raise ConfigError([node.at(()).problem(other)])
    report = Report()
    spec = Parser(report).dataclass(ScenarioSpec, node, ())
    if spec is INVALID:
        raise ConfigError(report.errors)
    assert isinstance(spec, ScenarioSpec)
    config, warnings = _config(spec, node, filename, report)
    if config is None:
        raise ConfigError(report.errors, warnings)
    return _Resolver(spec, node, filename, config, report, seed, warnings).build()


def _where(root: Node, path: Path_) -> Where:
    """The place of ``path`` in ``root``: the line of its deepest written part."""
    node, line = root, root.line
    for segment in path:
        child: Node | None = None
        if isinstance(node.value, dict) and isinstance(segment, str):
            child = node.value.get(segment)
            if child is not None:
                line = node.key_lines.get(segment, child.line)
        elif (
            isinstance(node.value, list) and isinstance(segment, int) and segment < len(node.value)
        ):
            child = node.value[segment]
            line = child.line
        if child is None:
            break
        node = child
    return Where(root.file, line, path)


def _config(
    spec: ScenarioSpec, root: Node, filename: str, report: Report
) -> tuple[Config | None, list[Problem]]:
    """The LB configuration: a path relative to the scenario file, or an inline mapping."""
    where = _where(root, ("config",))
    raw = spec.config
    try:
        if isinstance(raw, str):
            target = Path(filename).parent / raw
            result = config_loader.load_config([target])
        elif isinstance(raw, dict):
            child = root.value["config"] if isinstance(root.value, dict) else root
            assert isinstance(child, Node)
            result = config_loader.load_config_node(child, filename)
        else:
            report.error(where, "expected a path to a configuration or an inline mapping")
            return None, []
    except ConfigError as exc:
        for p in exc.problems:
            if not isinstance(raw, str):
                report.errors.append(_prefixed(p))
            elif p.file == os.fspath(target) and p.line is None and not p.path:
                # The named file itself cannot be read: at the line of the scenario naming it.
                report.error(where, f"{p.file}: {p.message}")
            else:
                report.errors.append(p)
        return None, list(exc.warnings)
    return result.config, result.warnings


def _prefixed(p: Problem) -> Problem:
    """A problem of an inline configuration, its path put under ``config``."""
    path = p.path if p.path.startswith("[") or not p.path else f".{p.path}"
    return Problem(file=p.file, line=p.line, path=f"config{path}", message=p.message)


class _Resolver:
    """Cross-field checks and name resolution (see the module docstring)."""

    def __init__(
        self,
        spec: ScenarioSpec,
        root: Node,
        filename: str,
        config: Config,
        report: Report,
        seed: int | None,
        warnings: list[Problem],
    ) -> None:
        self.spec, self.root, self.file, self.config = spec, root, filename, config
        self.report, self.seed, self.warnings = report, seed, warnings
        self.tunnels: dict[str, Tunnel] = {}
        for t in config.tunnels:
            self.tunnels[t.id] = t
            if t.name:
                self.tunnels.setdefault(t.name, t)
        self.endpoints = {f"{p.name}/{o.name}": o for p in config.pools for o in p.origins}
        self.pools = {p.name for p in config.pools}
        self.replicas = self._replicas()
        self.members = self._members()
        self.scope_names = (
            set(config.datacenters)
            | set(config.engine.vantage_points)
            | {m.vantage for m in self.members}
        )
        self.member_events: list[MemberEvent] = []

    def error(self, path: Path_, message: str) -> None:
        self.report.error(_where(self.root, path), message)

    # ------------------------------------------------------------------ whole file

    def build(self) -> Scenario:
        spec = self.spec
        tick = spec.tick
        if spec.report_interval < tick:
            self.error(("report_interval",), f"must be at least the tick ({tick:g} s)")
        if spec.duration < tick:
            self.error(("duration",), f"must be at least the tick ({tick:g} s)")
        traffic = tuple(self._traffic(dc, t) for dc, t in sorted(spec.traffic.items()))
        if not traffic:
            self.error(("traffic",), "no traffic: name at least one data center")
        self._check_volume(traffic, spec.duration)
        if not self.config.load_balancers:
            self.error(("config",), "the configuration has no load balancer")
        events: list[NetEvent] = []
        changes: list[ConfigEvent] = []
        for i, e in enumerate(spec.timeline):
            self._event(i, e, events, changes)
        ingress = self._ingress()
        keep_alive = self._keep_alive()
        expectations = tuple(self._expectation(i, x) for i, x in enumerate(spec.expect))
        if self.report.errors:
            raise ConfigError(self.report.errors, self.warnings)
        return Scenario(
            name=spec.name or Path(self.file).stem,
            file=self.file,
            config=self.config,
            duration=spec.duration,
            seed=spec.seed if self.seed is None else self.seed,
            report_interval=spec.report_interval,
            tick=tick,
            rtt=spec.network.rtt,
            body=spec.network.body.encode(),
            traffic=traffic,
            events=tuple(sorted(events, key=lambda e: (e.at, e.index))),
            changes=tuple(sorted(changes, key=lambda c: (c.at, c.index))),
            members=self.members,
            member_events=tuple(sorted(self.member_events, key=lambda e: (e.at, e.index))),
            heartbeat=spec.cluster.heartbeat if spec.cluster else 2.0,
            heartbeat_ttl=(spec.cluster.heartbeat_ttl or 3 * spec.cluster.heartbeat)
            if spec.cluster
            else 6.0,
            vote_factor=spec.cluster.vote_factor if spec.cluster else 3.0,
            replicas=self.replicas,
            ingress=ingress,
            keep_alive=keep_alive,
            expectations=expectations,
            warnings=tuple(self.warnings),
        )

    def _replicas(self) -> dict[str, tuple[Replica, ...]]:
        """Every endpoint address with its replicas (config ``tunnels``) or one plain host."""
        out: dict[str, tuple[Replica, ...]] = {}
        for o in self.endpoints.values():
            address = o.address.lower().rstrip(".")
            tid = o.tunnel_id
            t = self.tunnels.get(tid) if tid else None
            if t is not None and t.replicas:
                label = t.name or t.id
                out[address] = tuple(
                    Replica(r.name, tuple(r.datacenters), f"{label}/{r.name}") for r in t.replicas
                )
            elif tid:
                out[address] = (Replica("", (), f"{tid}/-"),)
            else:
                out[address] = (Replica("", (), None),)
        return out

    # ------------------------------------------------------------------ traffic

    def _check_volume(self, traffic: tuple[Traffic, ...], duration: float) -> None:
        """:data:`MAX_SIMULATED`: reported at the rate of the largest data center."""
        volumes = [(t.total(duration) + t.sessions_rate * duration, t) for t in traffic]
        total = sum(v for v, _ in volumes)
        if total <= MAX_SIMULATED:
            return
        largest = max(volumes, key=lambda vt: vt[0])[1]
        seconds = f"{duration:,.3f}".rstrip("0").rstrip(".")
        message = (
            f"{total:,.0f} requests over {seconds} s (rate x duration, summed over data "
            f"centers) is more than a run may simulate ({MAX_SIMULATED:,.0f}, about an hour); "
            "lower the rate or the duration"
        )
        self.error(("traffic", largest.datacenter, "rate"), message)

    def _traffic(self, dc: str, t: TrafficSpec) -> Traffic:
        path: Path_ = ("traffic", dc)
        if dc not in self.config.datacenters:
            hint = did_you_mean(dc, self.config.datacenters)
            self.error(path, f"unknown data center {dc!r}{hint}")
        host = t.host or (self.config.load_balancers[0].name if self.config.load_balancers else "")
        if t.host and self.config.load_balancer(t.host) is None:
            names = [lb.name for lb in self.config.load_balancers]
            self.error((*path, "host"), f"no load balancer {t.host!r}{did_you_mean(t.host, names)}")
        return Traffic(
            datacenter=dc,
            steps=self._steps(t.rate, (*path, "rate")),
            clients=t.clients,
            cookies=t.cookies,
            headers=t.headers,
            host=host,
            path=t.path or "/",
            sessions_rate=t.sessions.rate if t.sessions else 0.0,
            session_duration=t.sessions.duration if t.sessions else 0.0,
            country=self._country(t.country, (*path, "country")),
        )

    def _country(self, raw: str, path: Path_) -> str:
        if raw and (len(raw) != 2 or not raw.isascii() or not raw.isalpha() or not raw.isupper()):
            self.error(
                path, f'must be a two-letter upper-case country code such as "DE", got {raw!r}'
            )
        return raw

    def _steps(self, raw: Any, path: Path_) -> tuple[tuple[float, float], ...]:
        if isinstance(raw, bool) or raw is None:
            self.error(path, "expected a number or a list of {at, rate} steps")
            return ((0.0, 0.0),)
        if isinstance(raw, int | float):
            if not 0 <= raw <= 1e8:
                self.error(path, f"must be between 0 and 100000000, got {raw:g}")
            return ((0.0, float(raw)),)
        if not isinstance(raw, list) or not raw:
            self.error(path, "expected a number or a non-empty list of {at, rate} steps")
            return ((0.0, 0.0),)
        steps: list[tuple[float, float]] = []
        for i, item in enumerate(raw):
            at, rate = (item.get("at"), item.get("rate")) if isinstance(item, dict) else (0, 0)
            ok = isinstance(item, dict) and set(item) <= {"at", "rate"}
            numbers = all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in (at, rate)
            )
            ok = ok and numbers
            if not ok:
                self.error((*path, i), "expected {at: seconds, rate: requests per second}")
                continue
            assert isinstance(at, int | float) and isinstance(rate, int | float)
            if steps and at <= steps[-1][0]:
                self.error((*path, i, "at"), "steps must be in increasing time order")
            if not 0 <= at <= self.spec.duration or rate < 0:
                self.error((*path, i), "at must be within the duration and rate >= 0")
            steps.append((float(at), float(rate)))
        if steps and steps[0][0] > 0:
            steps.insert(0, (0.0, 0.0))
        return tuple(steps) or ((0.0, 0.0),)

    # ------------------------------------------------------------------ timeline

    def _event(
        self, i: int, e: EventSpec, events: list[NetEvent], changes: list[ConfigEvent]
    ) -> None:
        path: Path_ = ("timeline", i)
        if e.member:
            self._member_event(i, e)
            return
        if e.do == TimelineAction.KILL:
            self.error((*path, "do"), "kill applies to a cluster member: name member:")
            return
        targets = [
            (k, v)
            for k, v in (
                ("tunnel", e.tunnel),
                ("replica", e.replica),
                ("origin", e.origin),
                ("endpoint", e.endpoint),
                ("pool", e.pool),
            )
            if v
        ]
        if len(targets) != 1:
            self.error(path, "name exactly one of tunnel, replica, origin, endpoint or pool")
            return
        kind, name = targets[0]
        for t, key in ((e.at, "at"), (e.until, "until")):
            if t is not None and t > self.spec.duration:
                self.error((*path, key), f"{t:g} is after the end ({self.spec.duration:g} s)")
        if e.until is not None and e.until <= e.at:
            self.error((*path, "until"), "must be after at")
        label = f"{e.do} {kind} {name}"
        if e.do in CONFIG_ACTIONS:
            self._config_event(i, e, kind, name, label, changes)
        else:
            self._net_event(i, e, kind, name, label, events)

    def _members(self) -> tuple[Member, ...]:
        cluster = self.spec.cluster
        if cluster is None:
            return ()
        if not cluster.members:
            self.error(("cluster", "members"), "name at least one member")
        out: list[Member] = []
        names: set[str] = set()
        for j, m in enumerate(cluster.members):
            if m.name in names:
                self.error(("cluster", "members", j, "name"), f"member {m.name!r} is named twice")
            names.add(m.name)
            if m.datacenter and m.datacenter not in self.spec.traffic:
                known = sorted(self.spec.traffic)
                self.error(
                    ("cluster", "members", j, "datacenter"),
                    f"{m.datacenter!r} has no traffic{did_you_mean(m.datacenter, known)}",
                )
            out.append(Member(name=m.name, vantage=m.vantage or m.name, datacenter=m.datacenter))
        return tuple(out)

    def _member_event(self, i: int, e: EventSpec) -> None:
        path: Path_ = ("timeline", i)
        names = [m.name for m in self.members]
        others = [k for k in ("tunnel", "replica", "origin", "endpoint", "pool") if getattr(e, k)]
        if others:
            self.error(path, f"a member event names only the member, not {others[0]}")
        if e.member not in names:
            hint = did_you_mean(e.member, names) if names else " (no cluster: members)"
            self.error((*path, "member"), f"unknown member {e.member!r}{hint}")
            return
        if e.do not in MEMBER_ACTIONS:
            self.error(
                (*path, "do"), "a member can be killed, partitioned (from the store) or recovered"
            )
            return
        if e.seen_from:
            self.error((*path, "seen_from"), "a member event is not scoped")
        if e.until is not None and e.until <= e.at:
            self.error((*path, "until"), "must be after at")
        label = f"{e.do} member {e.member}"
        self.member_events.append(
            MemberEvent(
                at=e.at, index=2 * i, member=e.member, action=TimelineAction(e.do), label=label
            )
        )
        if e.until is not None and e.do != TimelineAction.RECOVER:
            self.member_events.append(
                MemberEvent(
                    at=e.until,
                    index=2 * i + 1,
                    member=e.member,
                    action=TimelineAction.RECOVER,
                    label=f"recover member {e.member} (until)",
                )
            )

    def _config_event(
        self, i: int, e: EventSpec, kind: str, name: str, label: str, out: list[ConfigEvent]
    ) -> None:
        path: Path_ = ("timeline", i)
        if e.seen_from:
            self.error((*path, "seen_from"), "a configuration change is seen everywhere")
        if kind == "pool":
            if name not in self.pools:
                self.error((*path, "pool"), _unknown("pool", name, self.pools))
                return
            if e.do == TimelineAction.WEIGHT:
                self.error((*path, "do"), "weight applies to an endpoint, not a pool")
                return
            pool, endpoint = name, None
        elif kind == "endpoint":
            if name not in self.endpoints:
                self.error((*path, "endpoint"), self._unknown_endpoint(name))
                return
            pool, _, endpoint = name.partition("/")
        else:
            self.error((*path, "do"), f"{e.do} applies to an endpoint or a pool, not a {kind}")
            return
        if e.do == TimelineAction.WEIGHT and e.weight is None:
            self.error((*path, "weight"), "do: weight needs weight: 0..1")
            return
        out.append(
            ConfigEvent(
                at=e.at,
                index=2 * i,
                action=TimelineAction(e.do),
                pool=pool,
                endpoint=endpoint,
                weight=e.weight,
                label=label,
            )
        )
        if e.until is not None:
            undo = (
                TimelineAction.ENABLE
                if e.do == TimelineAction.DISABLE
                else TimelineAction.DISABLE
                if e.do == TimelineAction.ENABLE
                else TimelineAction.WEIGHT
            )
            old = self.endpoints[name].weight if endpoint is not None else None
            out.append(
                ConfigEvent(
                    at=e.until,
                    index=2 * i + 1,
                    action=undo,
                    pool=pool,
                    endpoint=endpoint,
                    weight=old,
                    label=f"{undo} {kind} {name} (until)",
                )
            )

    def _net_event(
        self, i: int, e: EventSpec, kind: str, name: str, label: str, out: list[NetEvent]
    ) -> None:
        path: Path_ = ("timeline", i)
        resolved = self._target(kind, name, (*path, kind))
        if resolved is None:
            return
        address, replicas, layer = resolved
        for s in e.seen_from:
            if s not in self.scope_names:
                hint = did_you_mean(s, sorted(self.scope_names))
                self.error(
                    (*path, "seen_from"),
                    f"{s!r} is neither a data center nor a vantage point{hint}",
                )
        action = (
            TimelineAction.UNREACHABLE if e.do == TimelineAction.PARTITION else TimelineAction(e.do)
        )
        if e.do == TimelineAction.PARTITION and not e.seen_from:
            self.error((*path, "seen_from"), "a partition needs seen_from: the places cut off")
        needs_status = action == TimelineAction.STATUS or (
            action == TimelineAction.FLAP and e.how == TimelineAction.STATUS
        )
        if needs_status and e.status is None:
            self.error((*path, "status"), "needs status: NNN")
        if action == TimelineAction.LATENCY and e.latency <= 0:
            self.error((*path, "latency"), "do: latency needs latency: seconds > 0")
        down_for = 0.0
        if action == TimelineAction.FLAP:
            if e.period <= 0:
                self.error((*path, "period"), "do: flap needs period: seconds > 0")
            down_for = e.down_for if e.down_for is not None else e.period / 2
            if e.period > 0 and not 0 < down_for < e.period:
                self.error((*path, "down_for"), "must be between 0 and the period (exclusive)")
        common: dict[str, Any] = {
            "address": address,
            "replicas": replicas,
            "layer": layer,
            "scope": frozenset(e.seen_from),
            "wide": kind in ("tunnel", "endpoint"),
        }
        out.append(
            NetEvent(
                at=e.at,
                index=2 * i,
                action=action,
                status=e.status or 0,
                latency=e.latency,
                period=e.period,
                down_for=down_for,
                how=e.how,
                label=label,
                **common,
            )
        )
        if e.until is not None and action != TimelineAction.RECOVER:
            out.append(
                NetEvent(
                    at=e.until,
                    index=2 * i + 1,
                    action=TimelineAction.RECOVER,
                    label=f"recover {kind} {name} (until)",
                    **common,
                )
            )

    def _target(self, kind: str, name: str, path: Path_) -> tuple[str, tuple[str, ...], str] | None:
        """``(address, replica names, layer)`` of a timeline target, or None (reported)."""
        if kind == "pool":
            self.error(path, "a pool can only be disabled or enabled; name its endpoints")
            return None
        if kind == "endpoint":
            o = self.endpoints.get(name)
            if o is None:
                self.error(path, self._unknown_endpoint(name))
                return None
            address = o.address.lower().rstrip(".")
            return address, tuple(r.name for r in self.replicas[address]), EDGE
        tunnel_name, slash, replica = name.partition("/")
        tunnel_address = self._tunnel_address(tunnel_name)
        if tunnel_address is None:
            known = {t.name or t.id for t in self.config.tunnels}
            self.error(path, _unknown("tunnel", tunnel_name, known))
            return None
        address = tunnel_address
        names = tuple(r.name for r in self.replicas[address])
        if kind == "tunnel" and slash:
            # One meaning per key: ``tunnel:`` is every replica (the edge's own status),
            # ``replica:`` one; naming a replica under ``tunnel:`` would mean either.  The
            # ``replica:`` hint only for a replica the tunnel has.
            whole = f"tunnel: {tunnel_name} for the whole tunnel"
            use = f"replica: {name} for one replica, {whole}" if replica in names else whole
            self.error(path, f"tunnel: names a whole tunnel, not a replica: use {use}")
            return None
        if kind == "replica" and not replica:
            self.error(path, "expected TUNNEL/REPLICA")
            return None
        if replica:
            if replica not in names:
                self.error(path, _unknown(f"replica of tunnel {tunnel_name!r}:", replica, names))
                return None
            names = (replica,)
        return address, names, ORIGIN if kind == "origin" else EDGE

    def _tunnel_address(self, name: str) -> str | None:
        """The endpoint address of a tunnel named by name or UUID, if an endpoint uses it."""
        t = self.tunnels.get(name)
        uuid = t.id if t is not None else name.lower()
        address = f"{uuid}{TUNNEL_SUFFIX}"
        return address if address in self.replicas else None

    def _unknown_endpoint(self, name: str) -> str:
        return _unknown("endpoint", name, self.endpoints)

    # ------------------------------------------------------------------ ingress

    def _ingress(self) -> dict[str, tuple[IngressRule, ...]]:
        out: dict[str, tuple[IngressRule, ...]] = {}
        for name, specs in self.spec.network.ingress.items():
            path: Path_ = ("network", "ingress", name)
            address = self._tunnel_address(name)
            if address is None:
                self.error(path, f"no endpoint uses tunnel {name!r}")
                continue
            rules: list[IngressRule] = []
            for i, s in enumerate(specs):
                service = "http://origin" if s.service == ORIGIN_SERVICE else s.service
                try:
                    rules.append(IngressRule(service, s.hostname or None, s.path or None))
                except RuleError as exc:
                    self.error((*path, i, exc.field), str(exc))
            if len(rules) == len(specs):
                for index, message in validate_rules(rules):
                    self.error(path if index is None else (*path, index), message)
                out[address] = tuple(rules)
        return out

    def _keep_alive(self) -> dict[str, KeepAlive]:
        out: dict[str, KeepAlive] = {}
        for name, spec in self.spec.network.keep_alive.items():
            path: Path_ = ("network", "keep_alive", name)
            kind = "endpoint" if name in self.endpoints else "tunnel"
            if kind == "tunnel" and "/" in name:
                self.error(path, self._unknown_endpoint(name))
                continue
            target = self._target(kind, name, path)
            if spec.idle is None and spec.announce:
                self.error((*path, "announce"), "needs idle: the timeout it announces")
            elif target is not None:
                idle = math.inf if spec.idle is None else spec.idle
                out[target[0]] = KeepAlive(idle, spec.announce, spec.random)
        return out

    # ------------------------------------------------------------------ expectations

    def _expectation(self, i: int, x: ExpectSpec) -> Expectation:
        path: Path_ = ("expect", i)
        kinds = [
            (k, v)
            for k, v in (
                ("share", x.share),
                ("requests", x.requests),
                ("errors", x.errors),
                ("drained", x.drained),
                ("detected", x.detected),
                ("transitions", x.transitions),
                ("sessions_broken", x.sessions_broken),
                ("sessions_dropped", x.sessions_dropped),
                ("probes", x.probes),
            )
            if v is not None
        ]
        if len(kinds) != 1:
            self.error(
                path,
                "name exactly one kind: share, requests, errors, drained, "
                "detected, transitions, sessions_broken, sessions_dropped or probes",
            )
            return Expectation(name=x.name, kind="invalid")
        kind, b = kinds[0]
        assert b is not None
        self._check_bound(kind, b, (*path, kind))
        between = (b.between[0], b.between[1]) if len(b.between) == 2 else None
        out = Expectation(
            name="",
            kind=kind,
            pool=b.pool,
            endpoint=b.endpoint,
            replica=b.replica,
            datacenter=b.datacenter,
            between=between,
            at_least=b.at_least,
            at_most=b.at_most,
            within=b.within,
        )
        return _named(out, x.name)

    def _check_bound(self, kind: str, b: BoundSpec, path: Path_) -> None:
        subjects = [
            k for k, v in (("pool", b.pool), ("endpoint", b.endpoint), ("replica", b.replica)) if v
        ]
        allowed = {
            "share": {"pool", "endpoint", "replica"},
            "requests": {"pool", "endpoint", "replica"},
            "errors": {"pool", "endpoint"},
            "transitions": {"pool", "endpoint"},
            "drained": {"endpoint"},
            "detected": {"endpoint"},
            "sessions_dropped": {"pool", "endpoint"},
        }.get(kind, set())
        for s in subjects:
            if s not in allowed:
                self.error((*path, s), f"{kind} does not take {s}")
        if len(subjects) > 1:
            self.error(path, "name at most one of pool, endpoint, replica")
        if kind in ("share", "drained", "detected") and not subjects:
            self.error(path, f"{kind} needs " + " or ".join(sorted(allowed)))
        if b.pool and b.pool not in self.pools:
            self.error((*path, "pool"), _unknown("pool", b.pool, self.pools))
        if b.endpoint and b.endpoint not in self.endpoints:
            self.error((*path, "endpoint"), self._unknown_endpoint(b.endpoint))
        labels = {r.label for rs in self.replicas.values() for r in rs if r.label}
        if b.replica and b.replica not in labels:
            self.error((*path, "replica"), _unknown("replica", b.replica, labels))
        if b.datacenter and b.datacenter not in self.spec.traffic:
            self.error((*path, "datacenter"), f"no traffic enters at {b.datacenter!r}")
        if b.datacenter and kind not in ("share", "requests", "errors"):
            self.error((*path, "datacenter"), f"{kind} does not take datacenter")
        if b.between:
            ok = len(b.between) == 2 and 0 <= b.between[0] < b.between[1] <= self.spec.duration
            if not ok:
                self.error(
                    (*path, "between"),
                    "expected [start, end] with "
                    f"0 <= start < end <= duration ({self.spec.duration:g})",
                )
            if kind not in ("share", "requests", "errors"):
                self.error((*path, "between"), f"{kind} does not take between")
        if kind in ("drained", "detected"):
            if b.within is None:
                self.error(path, f"{kind} needs within: seconds")
            if b.at_least is not None or b.at_most is not None:
                self.error(path, f"{kind} takes within, not at_least / at_most")
        else:
            if b.within is not None:
                self.error((*path, "within"), f"{kind} takes at_least / at_most, not within")
            if b.at_least is None and b.at_most is None:
                self.error(path, "needs at_least and/or at_most")
            if kind == "share":
                for key, v in (("at_least", b.at_least), ("at_most", b.at_most)):
                    if v is not None and not 0 <= v <= 1:
                        self.error((*path, key), "a share is between 0 and 1")


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown tunnel 'x' (did you mean "y"?)``, else the names that exist (if few)."""
    names = sorted(set(known))
    hint = did_you_mean(name, names)
    if not hint and names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        hint = f" (known: {shown})"
    return f"unknown {what} {name!r}{hint}"


def _named(x: Expectation, name: str) -> Expectation:
    """The expectation with its given name, or one generated from its parameters."""
    if not name:
        subject = ""
        for kind, value in (("pool", x.pool), ("endpoint", x.endpoint), ("replica", x.replica)):
            if value:
                subject = f"{kind} {value}"
        parts = [x.kind.replace("_", " "), subject]
        if x.datacenter:
            parts.append(f"from {x.datacenter}")
        if x.between:
            parts.append(f"in [{x.between[0]:g}, {x.between[1]:g}]")
        if x.within is not None:
            parts.append(f"within {x.within:g}s")
        if x.at_least is not None:
            parts.append(f">= {x.at_least:g}")
        if x.at_most is not None:
            parts.append(f"<= {x.at_most:g}")
        name = " ".join(p for p in parts if p)
    return Expectation(
        name=name,
        kind=x.kind,
        pool=x.pool,
        endpoint=x.endpoint,
        replica=x.replica,
        datacenter=x.datacenter,
        between=x.between,
        at_least=x.at_least,
        at_most=x.at_most,
        within=x.within,
    )


def config_with(config: Config, change: ConfigEvent) -> Config:
    """``config`` with one change applied, via ``dataclasses.replace`` (never mutated)."""
    pools = []
    for p in config.pools:
        if p.name != change.pool:
            pools.append(p)
            continue
        if change.endpoint is None:
            pools.append(dataclasses.replace(p, enabled=change.action == TimelineAction.ENABLE))
            continue
        origins = []
        for o in p.origins:
            if o.name == change.endpoint:
                if change.action == TimelineAction.WEIGHT:
                    assert change.weight is not None
                    o = dataclasses.replace(o, weight=change.weight)
                else:
                    o = dataclasses.replace(o, enabled=change.action == TimelineAction.ENABLE)
            origins.append(o)
        pools.append(dataclasses.replace(p, origins=tuple(origins)))
    return dataclasses.replace(config, pools=tuple(pools))
