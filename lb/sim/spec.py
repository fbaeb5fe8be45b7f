"""The raw shape of a scenario file, as dataclasses the configuration parser can read.

Why dataclasses with metadata: :class:`lb.config.Parser` already turns YAML nodes into
dataclasses with type, range and choice checks, unknown-key errors with a did-you-mean, and
file/line/dotted-path positions.  Describing the scenario file the same way reuses all of it
instead of writing a second YAML validator.  Cross-field checks (names, times) live in
:mod:`lb.sim.scenario`, which turns these raw objects into a resolved :class:`Scenario`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "ACTIONS",
    "CONFIG_ACTIONS",
    "FAULTS",
    "BoundSpec",
    "ClusterSpec",
    "EventSpec",
    "ExpectSpec",
    "IngressSpec",
    "KeepAliveSpec",
    "MemberSpec",
    "NetworkSpec",
    "RateStep",
    "ScenarioSpec",
    "SessionsSpec",
    "TimelineAction",
    "TrafficSpec",
    "seconds",
]


def seconds(value: float) -> str:
    """The one way reports show a time or a duration: tenths of a second (``17.9s``)."""
    return f"{value:.1f}s"


class TimelineAction(StrEnum):
    """What a timeline event does (its ``do:``), and the fault an address has.

    A ``StrEnum``: each member is the word the scenario file, the reports and the docs use.
    """

    REFUSE = "refuse"
    BLACKHOLE = "blackhole"
    UNREACHABLE = "unreachable"
    DOWN = "down"
    PARTITION = "partition"
    STATUS = "status"
    LATENCY = "latency"
    FLAP = "flap"
    RECOVER = "recover"
    DISABLE = "disable"
    ENABLE = "enable"
    WEIGHT = "weight"
    KILL = "kill"
    RESET = "reset"
    """The endpoint takes the connection and the request, then resets it before answering: the
    proxy gets no response byte (502, or a ``retry_on`` retry), a probe a reset connection."""
    TRUNCATE = "truncate"
    """The endpoint answers 200 and resets the connection in the middle of the body: a user
    gets a cut response (an error, 502 in the report), unless ``retry_on.buffer_response``
    read it whole first (simulated responses are small, of known length) and the attempt
    policy retries it (``truncated``); a probe, which reads the body, a reset connection."""


FAULTS = (
    TimelineAction.REFUSE,
    TimelineAction.BLACKHOLE,
    TimelineAction.UNREACHABLE,
    TimelineAction.DOWN,
)
"""Connectivity failures; each maps to a user-visible status and a probe failure (docs)."""
NETWORK_ACTIONS = (
    *FAULTS,
    TimelineAction.RESET,
    TimelineAction.TRUNCATE,
    TimelineAction.PARTITION,
    TimelineAction.STATUS,
    TimelineAction.LATENCY,
    TimelineAction.FLAP,
    TimelineAction.RECOVER,
)
CONFIG_ACTIONS = (TimelineAction.DISABLE, TimelineAction.ENABLE, TimelineAction.WEIGHT)
MEMBER_ACTIONS = (TimelineAction.KILL, TimelineAction.PARTITION, TimelineAction.RECOVER)
"""What can happen to a cluster member: it dies, or loses the store (``partition``)."""
ACTIONS = (*NETWORK_ACTIONS, *CONFIG_ACTIONS, TimelineAction.KILL)

_FROZEN: dict[str, Any] = {"frozen": True, "slots": True, "kw_only": True}


def _f(default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A field with parser metadata (``range``, ``choices``, ``doc``)."""
    if isinstance(default, dict | list):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(**_FROZEN)
class RateStep:
    """From ``at`` on, ``rate`` requests per second (a piecewise-constant rate)."""

    at: float = _f(range=(0.0, 1e9), doc="seconds since the start")
    rate: float = _f(range=(0.0, 1e8), doc="requests per second")


@dataclass(**_FROZEN)
class SessionsSpec:
    """Long-lived connections (SSH over a tunnel): they stay on their endpoint until it fails."""

    rate: float = _f(range=(0.0, 1e6), doc="sessions opened per second")
    duration: float = _f(range=(0.001, 1e9), doc="seconds each session lasts")


@dataclass(**_FROZEN)
class TrafficSpec:
    """The users entering at one data center."""

    rate: Any = _f(doc="requests per second: a number or a list of {at, rate} steps")
    clients: int = _f(1000, range=(1, 1_000_000), doc="distinct clients (IPs)")
    cookies: float = _f(0.0, range=(0.0, 1.0), doc="share of clients that keep __cflb")
    headers: float = _f(0.0, range=(0.0, 1.0), doc="share of clients sending affinity headers")
    host: str = _f("", doc="load balancer hostname; default: the first load balancer")
    path: str = _f("/", doc="request path (matched by the tunnel's ingress rules)")
    sessions: SessionsSpec | None = _f(None, doc="long-lived sessions besides the requests")
    country: str = _f("", doc="the users' country (as CF-IPCountry); default: the data center's")


@dataclass(**_FROZEN)
class IngressSpec:
    """One cloudflared ingress rule of a simulated tunnel (R48)."""

    hostname: str = _f("", doc="Host to match; empty = any")
    path: str = _f("", doc="path regex; empty = any")
    service: str = _f(doc="origin (the app), http://..., http_status:NNN or hello_world")


@dataclass(**_FROZEN)
class KeepAliveSpec:
    """How a simulated endpoint closes idle keep-alive connections (Node.js: after 5 s)."""

    idle: float | None = _f(
        None, range=(0.001, 86400.0), doc="seconds after which it closes an idle connection"
    )
    announce: bool = _f(False, doc="it sends Keep-Alive: timeout=<idle> (the proxy learns it)")
    random: float = _f(
        0.0, range=(0.0, 1000.0), doc="closes per connection-second at random moments besides"
    )


@dataclass(**_FROZEN)
class NetworkSpec:
    """How the simulated network answers when nothing is wrong."""

    rtt: float = _f(0.02, range=(0.0, 60.0), doc="seconds of a healthy round trip")
    body: str = _f("ok", doc="body of every origin response (for expected_body)")
    ingress: Mapping[str, tuple[IngressSpec, ...]] = _f(
        {}, doc="tunnel name or UUID -> cloudflared ingress rules; default: all to the origin"
    )
    keep_alive: Mapping[str, KeepAliveSpec] = _f(
        {}, doc="tunnel name or UUID, or POOL/ENDPOINT -> its idle keep-alive closes"
    )


@dataclass(**_FROZEN)
class EventSpec:
    """One timeline entry: a network change or a configuration change at a time."""

    at: float = _f(range=(0.0, 1e9), doc="seconds since the start")
    tunnel: str = _f("", doc="tunnel name or UUID (every replica)")
    replica: str = _f("", doc="TUNNEL/REPLICA")
    origin: str = _f("", doc="the app behind a tunnel: TUNNEL or TUNNEL/REPLICA")
    endpoint: str = _f("", doc="POOL/ENDPOINT")
    pool: str = _f("", doc="pool name (disable / enable)")
    do: str = _f(choices=ACTIONS, doc="what happens")
    status: int | None = _f(None, range=(100, 599), doc="for do: status")
    latency: float = _f(0.0, range=(0.0, 3600.0), doc="seconds added, for do: latency")
    period: float = _f(0.0, range=(0.0, 1e9), doc="seconds, for do: flap")
    down_for: float | None = _f(None, range=(0.0, 1e9), doc="failing part of a flap period")
    how: str = _f("refuse", choices=(*FAULTS, TimelineAction.STATUS), doc="the failure of a flap")
    member: str = _f("", doc="cluster member name (kill, partition from the store)")
    seen_from: tuple[str, ...] = _f((), doc="vantage points / data centers; empty = all")
    until: float | None = _f(None, range=(0.0, 1e9), doc="recover at this time")
    weight: float | None = _f(None, range=(0.0, 1.0), doc="for do: weight")


@dataclass(**_FROZEN)
class BoundSpec:
    """The parameters of one expectation; which ones apply depends on its kind."""

    pool: str = _f("", doc="pool name")
    endpoint: str = _f("", doc="POOL/ENDPOINT")
    replica: str = _f("", doc="TUNNEL/REPLICA")
    datacenter: str = _f("", doc="only requests entering here")
    between: tuple[float, ...] = _f((), doc="[start, end] seconds")
    at_least: float | None = _f(None, doc="lower bound")
    at_most: float | None = _f(None, doc="upper bound")
    within: float | None = _f(None, range=(0.0, 1e9), doc="seconds (drained, detected)")


@dataclass(**_FROZEN)
class ExpectSpec:
    """One ``expect:`` entry: an optional name and exactly one kind."""

    name: str = _f("", doc="label in the report")
    share: BoundSpec | None = _f(None, doc="share of requests of a pool/endpoint/replica")
    requests: BoundSpec | None = _f(None, doc="number of requests")
    errors: BoundSpec | None = _f(None, doc="number of error responses")
    drained: BoundSpec | None = _f(None, doc="an endpoint gets no traffic within t of failing")
    detected: BoundSpec | None = _f(None, doc="an endpoint is marked unhealthy within t")
    transitions: BoundSpec | None = _f(None, doc="aggregate health transitions")
    sessions_broken: BoundSpec | None = _f(None, doc="affinity sessions moved")
    sessions_dropped: BoundSpec | None = _f(None, doc="long-lived sessions cut by failures")
    probes: BoundSpec | None = _f(None, doc="probe attempts sent")


@dataclass(**_FROZEN)
class MemberSpec:
    """One ``tunnel-lb run`` replica of a simulated cluster (docs/cluster.md)."""

    name: str = _f(doc="member name, used by timeline events")
    vantage: str = _f("", doc="its vantage point; default: its name")
    datacenter: str = _f("", doc="data center whose users it serves; empty = none")


@dataclass(**_FROZEN)
class ClusterSpec:
    """Replicas sharing health through an in-memory store, with the cluster's own code."""

    members: tuple[MemberSpec, ...] = _f(doc="the replicas; the first one is observed")
    heartbeat: float = _f(2.0, range=(0.01, 300), doc="seconds between heartbeats")
    heartbeat_ttl: float = _f(0, range=(0, 3600), doc="member expiry; 0 = 3 x heartbeat")
    vote_factor: float = _f(3.0, range=(1.5, 100), doc="vote expiry: factor x interval + check")


@dataclass(**_FROZEN)
class ScenarioSpec:
    """The whole file."""

    name: str = _f("", doc="label; default: the file name")
    description: str = _f("", doc="free text")
    config: Any = _f(doc="path to an LB configuration (relative to this file) or one inline")
    duration: float = _f(range=(0.001, 1e7), doc="seconds of virtual time")
    seed: int = _f(0, doc="seed of every random stream")
    report_interval: float = _f(10.0, range=(0.001, 1e7), doc="seconds per report window")
    tick: float = _f(0.1, range=(0.001, 60.0), doc="seconds per traffic batch")
    traffic: Mapping[str, TrafficSpec] = _f({}, doc="data center code -> users")
    network: NetworkSpec = _f(NetworkSpec(), doc="healthy behaviour")
    timeline: tuple[EventSpec, ...] = _f((), doc="events")
    expect: tuple[ExpectSpec, ...] = _f((), doc="expectations")
    cluster: ClusterSpec | None = _f(None, doc="simulate several replicas (docs/cluster.md)")
