"""The configuration model: frozen dataclasses with Cloudflare's API field names.

Cloudflare's three objects (monitors, pools with their origins, load balancers) keep exactly
the names, defaults and ranges of the Cloudflare API (see ``docs/config.md``), so objects
exported from Cloudflare load as they are.  What Cloudflare's objects cannot describe lives in
sections of our own (``tunnels``, ``datacenters``, ``connect_to``, ``engine``), never mixed
into theirs.

Field metadata drives the generic loader in :mod:`lb.config.loader`:

* ``range``: inclusive ``(low, high)`` bounds for numbers;
* ``choices``: the allowed values of a string;
* ``doc``: one line shown by ``tunnel-lb check --explain-fields`` and in ``docs/config.md``;
* ``path``: a file name, read after loading (:mod:`lb.files`); ``env``: the name of an
  environment variable, read after loading too.  The loader records where either was
  written, so a file or variable that turns out unusable is reported at that line.

Each class lists the read-only API fields it accepts and ignores in ``READ_ONLY``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lb.config.tunnels import tunnel_uuid

__all__ = [
    "POOL_SET_POLICIES",
    "REGIONS",
    "RETRY_CONDITIONS",
    "RETRY_STATUSES",
    "AdaptiveRouting",
    "CertificatePair",
    "Cluster",
    "Config",
    "Datacenter",
    "EngineSettings",
    "FlapDamping",
    "Limits",
    "Listener",
    "LoadBalancer",
    "LoadShedding",
    "LocalPreference",
    "Monitor",
    "MonitorGroup",
    "MonitorGroupMember",
    "Origin",
    "OriginSteering",
    "PassiveHealth",
    "Pool",
    "RandomSteering",
    "RetryOn",
    "SessionAffinityAttributes",
    "Tunnel",
    "TunnelReplica",
]

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}

REGIONS = (
    "WNAM", "ENAM", "WEU", "EEU", "NSAM", "SSAM", "OC", "ME", "NAF", "SAF", "SAS", "SEAS", "NEAS",
)  # fmt: skip
"""Cloudflare's 13 load-balancing regions (Regions API): keys of ``region_pools``."""


def _f(default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with loader metadata; mutable defaults become factories."""
    if isinstance(default, dict | list):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


def _host(header: Mapping[str, tuple[str, ...]]) -> str | None:
    """The first ``Host`` value of a Cloudflare ``header`` map (names are case-insensitive)."""
    for name, values in header.items():
        if name.lower() == "host" and values:
            return values[0]
    return None


# --------------------------------------------------------------------------- monitors


@dataclass(**_FROZEN)
class Monitor:
    """A Cloudflare monitor: a probe template attached to pools (docs/monitors.md)."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset({"created_on", "modified_on"})

    id: str = _f(doc="identifier that pools reference in `monitor`")
    type: str = _f("http", choices=("http", "https", "tcp"), doc="probe protocol")
    method: str = _f("GET", doc="HTTP method; a tcp monitor uses connection_established")
    path: str = _f("/", doc="request path (http/https)")
    port: int = _f(
        0, range=(0, 65535), doc="0 = the endpoint's port, else 80 / 443 (semantics.md, 17)"
    )
    header: Mapping[str, tuple[str, ...]] = _f({}, doc="extra request headers, Host included")
    expected_codes: str = _f("200", doc='"200", a class like "2xx", or a list "200,302" (R2)')
    expected_body: str = _f("", doc="case-insensitive substring of the first 10 KB (R1)")
    follow_redirects: bool = _f(False, doc="judge the final response after redirects (R3)")
    allow_insecure: bool = _f(False, doc="skip certificate validation (R4)")
    interval: float = _f(60, range=(1, 3600), doc="whole seconds between checks (R9)")
    timeout: float = _f(5, range=(0.01, 60), doc="whole seconds one attempt may take, 1-10 (R9)")
    retries: int = _f(2, range=(0, 5), doc="immediate re-attempts after a timeout (R8)")
    consecutive_up: int = _f(0, range=(0, 1000), doc="passes in a row to turn healthy (R12)")
    consecutive_down: int = _f(0, range=(0, 1000), doc="failures in a row to turn unhealthy")
    description: str = _f("", doc="free text")
    probe_zone: str = _f("", doc="accepted for compatibility; has no effect locally")

    @property
    def effective_method(self) -> str:
        """The method; ``GET`` (the API default) or empty means connection_established for a
        tcp monitor, as the API text says."""
        if self.type == "tcp" and self.method in ("", "GET"):
            return "connection_established"
        return self.method or "GET"

    @property
    def host_header(self) -> str | None:
        """The monitor's own Host header, if any (R5, second in precedence)."""
        return _host(self.header)


@dataclass(**_FROZEN)
class MonitorGroupMember:
    """One monitor of a monitor group and how its verdict counts (docs/monitors.md, R16)."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset({"created_at", "updated_at"})

    monitor_id: str = _f(doc="id of a monitor in `monitors`")
    enabled: bool = _f(True, doc="a disabled member is not probed and has no say")
    monitoring_only: bool = _f(False, doc="probed and shown, but never affects health")
    must_be_healthy: bool = _f(False, doc="its failure alone makes the endpoint unhealthy")


@dataclass(**_FROZEN)
class MonitorGroup:
    """A Cloudflare monitor group: several monitors whose verdicts combine (R16)."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset({"created_at", "updated_at"})

    id: str = _f(doc="identifier that pools reference in `monitor_group`")
    description: str = _f("", doc="free text")
    members: tuple[MonitorGroupMember, ...] = _f(doc="the monitors of the group")

    @property
    def active(self) -> tuple[MonitorGroupMember, ...]:
        """The enabled members: the only ones probed (R10 applied to members)."""
        return tuple(m for m in self.members if m.enabled)


# --------------------------------------------------------------------------- pools


@dataclass(**_FROZEN)
class Origin:
    """An endpoint of a pool; the API still calls it an origin (docs/config.md)."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset({"disabled_at", "healthy", "failure_reason"})

    name: str = _f(doc="label, unique in the pool")
    address: str = _f(doc="IP, hostname or <uuid>.cfargotunnel.com")
    enabled: bool = _f(True, doc="disabled endpoints are neither probed nor selected (R10)")
    weight: float = _f(1.0, range=(0.0, 1.0), doc="relative share inside the pool (R19)")
    header: Mapping[str, tuple[str, ...]] = _f({}, doc="only Host: sent on probes and traffic")
    port: int = _f(0, range=(0, 65535), doc="upstream port; 0 = protocol default")
    virtual_network_id: str = _f("", doc="accepted for compatibility")
    flatten_cname: bool = _f(True, doc="accepted for compatibility (DNS-only)")
    slow_start: float | None = _f(
        None,
        range=(0, 3600),
        doc="tunnel-lb extension: seconds of weight ramp after recovery; unset = the pool's",
    )

    @property
    def host_header(self) -> str | None:
        """The endpoint's Host override (R5, R47), if any."""
        return _host(self.header)

    @property
    def tunnel_id(self) -> str | None:
        """The tunnel UUID when the address is ``<uuid>.cfargotunnel.com`` (R46)."""
        return tunnel_uuid(self.address)


@dataclass(**_FROZEN)
class OriginSteering:
    """How a pool picks one of its endpoints (R19-R21, docs/cloudflare-rules.md)."""

    policy: str = _f(
        "random",
        choices=("random", "hash", "least_outstanding_requests", "least_connections"),
        doc="endpoint steering policy",
    )


@dataclass(**_FROZEN)
class LoadShedding:
    """Share of a pool's traffic diverted to other pools (R24)."""

    default_percent: float = _f(0.0, range=(0.0, 100.0), doc="share of non-session requests")
    default_policy: str = _f("random", choices=("random", "hash"), doc="per request or per IP")
    session_percent: float = _f(0.0, range=(0.0, 100.0), doc="share of affinity sessions")
    session_policy: str = _f("hash", choices=("hash",), doc="sessions are shed by IP hash")


RETRY_CONDITIONS = ("reset", "empty_response", "truncated")
"""The failures ``retry_on.conditions`` names (``lb.core.attempts``)."""
RETRY_STATUSES = (502, 503, 504)
MAX_BUFFER_RESPONSE = 4 << 20
"""The largest ``retry_on.buffer_response``: memory per request in flight stays bounded."""
"""The answers ``retry_on.statuses`` may name: the gateway errors an endpoint answers when
what stands behind it failed, which another endpoint may not."""


@dataclass(**_FROZEN)
class RetryOn:
    """tunnel-lb extension: retries beyond Cloudflare's single failover, within a budget.

    Off unless set (on a load balancer, or on a pool to override it for that pool's
    endpoints).  Only idempotent requests that can be sent again are retried, and the
    budget caps retries at a share of the requests in flight, so that retries never
    multiply the load on an outage (docs/semantics.md, "Retries beyond Cloudflare")."""

    conditions: tuple[str, ...] = _f(
        ("reset",),
        choices=RETRY_CONDITIONS,
        doc="reset: closed or reset before any response byte; "
        "empty_response: closed before the response head was complete; "
        "truncated: closed in a response body read whole (needs buffer_response)",
    )
    statuses: tuple[int, ...] = _f(
        (), range=(RETRY_STATUSES[0], RETRY_STATUSES[-1]), doc="answers that are retried"
    )
    num_retries: int = _f(1, range=(1, 3), doc="retries per request at most")
    budget_percent: float = _f(
        20.0, range=(0.0, 100.0), doc="retries in flight, as a share of the requests in flight"
    )
    min_retry_concurrency: int = _f(
        3, range=(0, 1000), doc="retries in flight allowed whatever the share"
    )
    buffer_response: int = _f(
        0,
        range=(0, MAX_BUFFER_RESPONSE),
        doc="bytes: a response body of known length up to this is read whole before it is "
        "relayed, so that a reset in it can be retried (truncated); 0 = stream",
    )


@dataclass(**_FROZEN)
class PassiveHealth:
    """tunnel-lb extension: eject endpoints that fail real traffic (Envoy's outlier detection).

    ``consecutive_connect_failure`` failed connections or ``consecutive_5xx`` 5xx answers in a
    row take an endpoint out for ``base_ejection_time`` x its number of recent ejections (at
    most ``max_ejection_time``); at most ``max_ejection_percent`` of a pool is out at once
    (always at least one endpoint).  It comes back at its monitor's first passing check after
    the ejection time (docs/semantics.md)."""

    enabled: bool = _f(True, doc="false turns it off (for a pool, under engine.passive_health)")
    consecutive_connect_failure: int = _f(
        5, range=(0, 1000), doc="failed connections in a row (refused, TLS, timeout); 0 = off"
    )
    consecutive_5xx: int = _f(5, range=(0, 1000), doc="5xx answers in a row; 0 = off")
    base_ejection_time: float = _f(
        30.0, range=(0.01, 86400), doc="seconds out for a first ejection; times n for the n-th"
    )
    max_ejection_time: float = _f(300.0, range=(0.01, 86400), doc="the longest ejection, seconds")
    max_ejection_percent: float = _f(
        10.0,
        range=(0.0, 100.0),
        doc="share of a pool's endpoints out at once (rounded down, but at least one)",
    )


@dataclass(**_FROZEN)
class Pool:
    """A Cloudflare pool (docs/config.md)."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"created_on", "modified_on", "disabled_at", "healthy", "notification_email"}
    )

    id: str = _f("", doc="identifier; defaults to the name")
    name: str = _f(doc="[A-Za-z0-9_-]+, unique (R23)")
    description: str = _f("", doc="free text")
    enabled: bool = _f(True, doc="a disabled pool gets no traffic and no probes (R10)")
    minimum_origins: int = _f(1, range=(0, 1000), doc="healthy endpoints needed (R17)")
    monitor: str | None = _f(None, doc="monitor id; none = health not considered (R13)")
    monitor_group: str | None = _f(
        None, doc="monitor group id, instead of `monitor` (R16, docs/monitors.md)"
    )
    check_regions: tuple[str, ...] | None = _f(
        None, choices=(*REGIONS, "ALL_REGIONS"), doc="accepted; vantage points are local"
    )
    health_sources: tuple[str, ...] | None = _f(
        None, choices=("regional", "global"), doc='unset or ["regional", "global"]; no effect'
    )
    origins: tuple[Origin, ...] = _f(doc="the endpoints")
    origin_steering: OriginSteering = _f(OriginSteering(), doc="endpoint steering")
    load_shedding: LoadShedding | None = _f(None, doc="R24")
    latitude: float | None = _f(None, range=(-90.0, 90.0), doc="for proximity steering")
    longitude: float | None = _f(None, range=(-180.0, 180.0), doc="for proximity steering")
    notification_filter: Mapping[str, Any] | None = _f(None, doc="accepted; no effect")
    networks: tuple[str, ...] | None = _f(None, doc="accepted for compatibility")
    slow_start: float = _f(
        0,
        range=(0, 3600),
        doc="tunnel-lb extension: seconds a recovered endpoint or pool ramps up; 0 = off",
    )
    passive_health: PassiveHealth | None = _f(
        None, doc="tunnel-lb extension: this pool's passive health; unset = engine.passive_health"
    )
    retry_on: RetryOn | None = _f(
        None, doc="tunnel-lb extension: the load balancer's retry_on, for this pool; unset = its"
    )

    @property
    def monitored(self) -> bool:
        """True when a monitor or a monitor group decides the health of the endpoints."""
        return self.monitor is not None or self.monitor_group is not None


# --------------------------------------------------------------------------- load balancers


@dataclass(**_FROZEN)
class RandomSteering:
    """Pool weights for random, least_outstanding_requests and least_connections."""

    pool_weights: Mapping[str, float] = _f(
        {}, range=(0.0, 1.0), doc="pool id or name -> weight 0..1"
    )
    default_weight: float = _f(1.0, range=(0.0, 1.0), doc="weight of unlisted pools")


@dataclass(**_FROZEN)
class AdaptiveRouting:
    """Zero-downtime failover across pools (R43)."""

    failover_across_pools: bool = _f(False, doc="retry into the next pool")


@dataclass(**_FROZEN)
class SessionAffinityAttributes:
    """Cookie and header affinity options (R34-R41, docs/cloudflare-rules.md)."""

    samesite: str = _f("Auto", choices=("Auto", "Lax", "None", "Strict"), doc="cookie SameSite")
    secure: str = _f("Auto", choices=("Auto", "Always", "Never"), doc="cookie Secure flag")
    drain_duration: float = _f(0, range=(0, 86400), doc="seconds sessions follow a disabled one")
    zero_downtime_failover: str = _f(
        "none", choices=("none", "temporary", "sticky"), doc="pinned sessions on errors (R45)"
    )
    headers: tuple[str, ...] = _f((), doc='header names; "cookie" or "cookie:a,b" for cookies')
    require_all_headers: bool = _f(False, doc="header mode: all headers must be present")


_STEERING_POLICIES = (
    "",
    "off",
    "geo",
    "random",
    "dynamic_latency",
    "proximity",
    "least_outstanding_requests",
    "least_connections",
)
_AFFINITY_MODES = ("", "none", "cookie", "ip_cookie", "header")
POOL_SET_POLICIES = (
    "off",
    "random",
    "dynamic_latency",
    "proximity",
    "least_outstanding_requests",
    "least_connections",
)
"""The steering policies the pool-sets documentation lists as supported inside a pool set."""


@dataclass(**_FROZEN)
class FixedResponse:
    """A custom rule's direct answer (R32): no pool is used."""

    status_code: int = _f(200, range=(100, 599), doc="HTTP status")
    content_type: str = _f("", doc="Content-Type (at most 32 characters)")
    location: str = _f("", doc="Location (at most 2048 characters)")
    message_body: str = _f("", doc="the body (at most 1024 characters)")


@dataclass(**_FROZEN)
class RuleOverrides:
    """Load-balancer fields a matching custom rule replaces (R32); unset fields stay."""

    default_pools: tuple[str, ...] | None = _f(None, doc="pool ids or names")
    pools: tuple[str, ...] | None = _f(
        None, doc="exactly these pools, in order, whatever the geo mappings say"
    )
    pool_weights: Mapping[str, float] | None = _f(
        None, range=(0.0, 1.0), doc="replaces random_steering.pool_weights"
    )
    pool_default_weight: float | None = _f(
        None, range=(0.0, 1.0), doc="replaces random_steering.default_weight"
    )
    fallback_pool: str | None = _f(None, doc="pool id or name")
    region_pools: Mapping[str, tuple[str, ...]] | None = _f(None, doc="as the load balancer's")
    country_pools: Mapping[str, tuple[str, ...]] | None = _f(None, doc="as the load balancer's")
    pop_pools: Mapping[str, tuple[str, ...]] | None = _f(None, doc="as the load balancer's")
    steering_policy: str | None = _f(None, choices=_STEERING_POLICIES, doc="pool steering")
    random_steering: RandomSteering | None = _f(None, doc="pool weights")
    adaptive_routing: AdaptiveRouting | None = _f(None, doc="R43")
    location_strategy: Mapping[str, str] | None = _f(None, doc="DNS-only; accepted, no effect")
    session_affinity: str | None = _f(None, choices=_AFFINITY_MODES, doc="affinity mode")
    session_affinity_ttl: float | None = _f(None, doc="seconds")
    session_affinity_attributes: SessionAffinityAttributes | None = _f(None, doc="affinity options")
    ttl: int | None = _f(None, range=(0, 86400), doc="DNS-only answer TTL")

    def changes(self) -> dict[str, Any]:
        """The fields this rule sets, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(**_FROZEN)
class Rule:
    """A custom rule (R32): when ``condition`` holds, ``overrides`` apply to the request, or
    ``fixed_response`` answers it.  Conditions are Cloudflare's Rules language (docs/rules.md)."""

    name: str = _f("", doc="label (at most 200 characters)")
    condition: str = _f("", doc="Rules-language expression; empty = every request")
    priority: int = _f(0, range=(0, 2**31 - 1), doc="lower runs first; ties in list order")
    disabled: bool = _f(False, doc="skipped when true")
    terminates: bool = _f(False, doc="stop evaluating rules after this one matches")
    fixed_response: FixedResponse | None = _f(None, doc="answer directly (terminates)")
    overrides: RuleOverrides = _f(RuleOverrides(), doc="load-balancer fields to replace")


@dataclass(**_FROZEN)
class Topology:
    """Where a pool set applies (R31): each listed field must match (docs/semantics.md, 8)."""

    pops: tuple[str, ...] = _f((), doc="data center codes")
    countries: tuple[str, ...] = _f((), doc="country codes of the data center")
    regions: tuple[str, ...] = _f((), doc="region codes of the data center")


@dataclass(**_FROZEN)
class PoolSetMatch:
    """A pool set's match: ``default`` (every request) or a topology."""

    default: bool = _f(False, doc="match every request")
    topology: Topology | None = _f(None, doc="match by the request's data center")


@dataclass(**_FROZEN)
class PoolSetOverrides:
    """What a matching pool set supplies instead of the load balancer's pools (R31)."""

    pools: tuple[str, ...] = _f((), doc="pool ids or names, in failover order")
    steering_policy: str | None = _f(
        None, choices=POOL_SET_POLICIES, doc="unset = off (failover order)"
    )
    pool_weights: Mapping[str, float] = _f(
        {}, range=(0.0, 1.0), doc="pool -> weight 0..1; not the load balancer's"
    )
    pool_default_weight: float | None = _f(
        None, range=(0.0, 1.0), doc="weight of the others; unset = 1"
    )
    fallback_pool: str | None = _f(None, doc="default: the load balancer's")


@dataclass(**_FROZEN)
class PoolSet:
    """A location-matched set of pools (R31): the first matching set steers the request."""

    name: str = _f("", doc="label")
    disabled: bool = _f(False, doc="skipped when true")
    match: PoolSetMatch | None = _f(None, doc="none = every request")
    overrides: PoolSetOverrides = _f(PoolSetOverrides(), doc="the pools and how to steer")
    fixed_response: FixedResponse | None = _f(None, doc="answer directly, no rules run")


@dataclass(**_FROZEN)
class LoadBalancer:
    """A Cloudflare load balancer; ``name`` is the hostname it answers for."""

    READ_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"created_on", "modified_on", "zone_name", "zone_id", "networks"}
    )

    id: str = _f("", doc="identifier; defaults to the name")
    name: str = _f(doc="the hostname requests carry in Host")
    description: str = _f("", doc="free text")
    enabled: bool = _f(True, doc="a disabled load balancer answers 404")
    proxied: bool = _f(False, doc="L7 proxy; false = DNS-only (tunnel endpoints need true, R50)")
    ttl: int = _f(30, range=(0, 86400), doc="DNS-only answer TTL; unused by the proxy")
    default_pools: tuple[str, ...] = _f(doc="failover order of pool ids or names")
    fallback_pool: str = _f(doc="pool of last resort, health ignored (R30)")
    steering_policy: str = _f("", choices=_STEERING_POLICIES, doc="pool steering (R25-R29)")
    random_steering: RandomSteering = _f(RandomSteering(), doc="pool weights")
    region_pools: Mapping[str, tuple[str, ...]] = _f({}, doc="region code -> pools (geo)")
    country_pools: Mapping[str, tuple[str, ...]] = _f({}, doc="country code -> pools (geo)")
    pop_pools: Mapping[str, tuple[str, ...]] = _f({}, doc="data center code -> pools (geo)")
    location_strategy: Mapping[str, str] | None = _f(None, doc="DNS-only; accepted, no effect")
    adaptive_routing: AdaptiveRouting = _f(AdaptiveRouting(), doc="R43")
    session_affinity: str = _f("", choices=_AFFINITY_MODES, doc="affinity mode (R34)")
    session_affinity_ttl: float | None = _f(None, doc="seconds; default 82800 cookie, 1800 header")
    session_affinity_attributes: SessionAffinityAttributes = _f(
        SessionAffinityAttributes(), doc="affinity options"
    )
    rules: tuple[Rule, ...] = _f((), doc="custom rules (R32)")
    pool_sets: tuple[PoolSet, ...] | None = _f(None, doc="location-matched pool sets (R31)")
    retry_on: RetryOn | None = _f(
        None, doc="tunnel-lb extension: retry resets and chosen 5xx (docs/semantics.md); off"
    )

    @property
    def effective_policy(self) -> str:
        """R25: ``""`` is geo when any geo mapping is set, else off."""
        if self.steering_policy:
            return self.steering_policy
        if self.region_pools or self.country_pools or self.pop_pools:
            return "geo"
        return "off"

    @property
    def affinity(self) -> str:
        """The affinity mode with ``""`` folded into ``none`` (R34)."""
        return self.session_affinity or "none"

    @property
    def effective_affinity_ttl(self) -> float:
        """The configured TTL or the mode's default (82800 s cookie, 1800 s header)."""
        if self.session_affinity_ttl is not None:
            return self.session_affinity_ttl
        return 1800.0 if self.affinity == "header" else 82800.0


# --------------------------------------------------------------------------- our sections


@dataclass(**_FROZEN)
class TunnelReplica:
    """One cloudflared replica of a tunnel and the data centers it holds connections in."""

    name: str = _f(doc="replica (host) name")
    datacenters: tuple[str, ...] = _f(doc="data center codes it is connected to")


@dataclass(**_FROZEN)
class Tunnel:
    """A tunnel UUID and its replicas (docs/connector.md)."""

    id: str = _f(doc="tunnel UUID (lowercase, dashed)")
    name: str = _f("", doc="label")
    replicas: tuple[TunnelReplica, ...] = _f((), doc="replicas with their data centers")

    @property
    def datacenters(self) -> frozenset[str]:
        """Every data center that some replica of this tunnel is connected to."""
        return frozenset(dc for r in self.replicas for dc in r.datacenters)


@dataclass(**_FROZEN)
class Datacenter:
    """A Cloudflare data center (PoP): where requests enter and replicas connect."""

    code: str = _f(doc="IATA-like code, e.g. FRA")
    region: str = _f(choices=REGIONS, doc="Cloudflare region, e.g. WEU")
    country: str = _f("", doc="ISO country code")
    latitude: float | None = _f(None, range=(-90.0, 90.0), doc="degrees")
    longitude: float | None = _f(None, range=(-180.0, 180.0), doc="degrees")


@dataclass(**_FROZEN)
class LocalPreference:
    """Prefer endpoints whose tunnel holds a connection in the request's data center.

    A tunnel-lb extension: Cloudflare's own local connection preference only picks among the
    replicas (connections) of one tunnel, never between the endpoints of a pool."""

    enabled: bool = _f(False, doc="turn local-data-center preference on")
    spill: float = _f(
        0.0, range=(0.0, 1.0), doc="share of requests that ignore locality and follow weights"
    )


@dataclass(**_FROZEN)
class CertificatePair:
    """An extra certificate of an HTTPS listener, chosen by the client's SNI name."""

    certificate: str = _f(doc="PEM certificate chain", path=True)
    key: str = _f(doc="PEM private key", path=True)
    hostnames: tuple[str, ...] = _f(
        (), doc="SNI names it serves (*.example.com = one label); empty = its DNS SANs"
    )


@dataclass(**_FROZEN)
class Listener:
    """A downstream listener of the proxy."""

    address: str = _f("127.0.0.1", doc="bind address")
    port: int = _f(8080, range=(0, 65535), doc="bind port; 0 = any free port")
    certificate: str = _f("", doc="PEM certificate chain for HTTPS; empty = plain HTTP", path=True)
    key: str = _f("", doc="PEM private key for HTTPS", path=True)
    certificates: tuple[CertificatePair, ...] = _f(
        (), doc="more certificates, picked by SNI; no match = certificate/key"
    )


@dataclass(**_FROZEN)
class Limits:
    """Request limits of the proxy."""

    max_header_bytes: int = _f(65536, range=(1024, 1 << 24), doc="431 past this")
    max_headers: int = _f(100, range=(1, 10000), doc="431 past this many header lines")
    max_body_bytes: int = _f(100 << 20, range=(0, 1 << 40), doc="413 past this")
    idle_timeout: float = _f(60.0, range=(0.1, 86400), doc="seconds a client may stay idle")
    request_timeout: float = _f(100.0, range=(0.1, 86400), doc="seconds for one request")
    connect_timeout: float = _f(5.0, range=(0.01, 300), doc="seconds to reach an endpoint")
    max_connections: int = _f(
        0,
        range=(0, 1 << 24),
        doc="client connections at once; 0 = derived from the file-descriptor limit",
    )
    min_body_rate: int = _f(
        0,
        range=(0, 1 << 30),
        doc="bytes/s a request body must average once past min_body_rate_grace, else 408; "
        "0 = judged only at the connection cap, at 240",
    )
    min_body_rate_grace: float = _f(
        5.0, range=(0.1, 3600), doc="seconds of waiting for a body before its rate is judged"
    )
    min_response_rate: int = _f(
        0,
        range=(0, 1 << 30),
        doc="bytes/s a client must take each response write at, once the write is blocked "
        "on it past min_response_rate_grace, else the connection is cut; "
        "0 = judged only at the connection cap, at 240",
    )
    min_response_rate_grace: float = _f(
        5.0,
        range=(0.1, 3600),
        doc="seconds a response write may be blocked on the client before its rate is judged",
    )


@dataclass(**_FROZEN)
class FlapDamping:
    """tunnel-lb extension: route-flap damping of endpoint health (RFC 2439's model).

    Each health transition adds ``penalty``, which halves every ``half_life`` seconds; above
    ``suppress`` the endpoint stays out of rotation until the penalty decays below ``reuse``,
    and never longer than ``max_suppress`` seconds after its last transition."""

    penalty: float = _f(1.0, range=(0.01, 1e6), doc="penalty added by each health transition")
    half_life: float = _f(60.0, range=(1, 86400), doc="seconds for the penalty to halve")
    suppress: float = _f(2.5, range=(0.01, 1e6), doc="suppress the endpoint above this penalty")
    reuse: float = _f(1.0, range=(0.01, 1e6), doc="release it when the penalty decays below this")
    max_suppress: float = _f(
        300.0, range=(1, 86400), doc="longest suppression after the last transition, seconds"
    )

    @property
    def ceiling(self) -> float:
        """The highest penalty (RFC 2439): it decays to ``reuse`` in ``max_suppress``."""
        return float(self.reuse * 2.0 ** (self.max_suppress / self.half_life))


@dataclass(**_FROZEN)
class Cluster:
    """Replicas sharing health through Redis (docs/cluster.md)."""

    redis: str = _f(doc="redis://, rediss:// or unix:// URL of the shared store")
    vantage: str = _f("", doc="this replica's vantage point; empty = engine.datacenter")
    key_prefix: str = _f("tunnel-lb:", doc="prefix of every key and channel")
    vote_factor: float = _f(
        3.0, range=(1.5, 100), doc="a vote expires after factor x interval + check time"
    )
    vote_ttl: float = _f(0, range=(0, 86400), doc="fixed vote lifetime in seconds; 0 = derived")
    heartbeat: float = _f(2.0, range=(0.05, 300), doc="seconds between membership heartbeats")
    heartbeat_ttl: float = _f(0, range=(0, 3600), doc="member expiry; 0 = 3 x heartbeat")
    timeout: float = _f(1.0, range=(0.01, 60), doc="a store call slower than this is a failure")
    batch: float = _f(0.01, range=(0, 5), doc="seconds votes wait to be sent together")

    @property
    def member_ttl(self) -> float:
        """Seconds a heartbeat keeps a member alive."""
        return self.heartbeat_ttl or 3 * self.heartbeat


@dataclass(**_FROZEN)
class EngineSettings:
    """Settings of this engine that Cloudflare's objects do not describe."""

    vantage_points: tuple[str, ...] = _f(("local",), doc="where probes run (R14 majority)")
    datacenter: str = _f("", doc="data center this process stands in for")
    listen: tuple[Listener, ...] = _f((Listener(),), doc="proxy listeners")
    admin: str = _f("127.0.0.1:9100", doc="admin listener host:port")
    admin_token_file: str = _f(
        "",
        doc="file holding the admin API's bearer token; needed to bind beyond loopback",
        path=True,
    )
    admin_token_env: str = _f("", doc="environment variable holding that token instead", env=True)
    admin_names: tuple[str, ...] = _f(
        (), doc="more Host names the admin API answers to (besides its addresses)"
    )
    affinity_secret: str = _f(
        "",
        doc="HMAC key for __cflb; empty = affinity_secret_file, $TUNNEL_LB_AFFINITY_SECRET, random",
    )
    affinity_secret_file: str = _f("", doc="file holding the __cflb HMAC key", path=True)
    trusted_proxies: tuple[str, ...] = _f((), doc="CIDRs whose client headers are believed")
    client_ip_header: str = _f("CF-Connecting-IP", doc="client IP header from trusted peers")
    client_country_header: str = _f(
        "CF-IPCountry", doc="client country header from trusted peers (country steering)"
    )
    datacenter_header: str = _f("CF-Ray", doc="entry data center: colo suffix of CF-Ray")
    local_preference: LocalPreference = _f(
        LocalPreference(), doc="tunnel-lb extension: prefer endpoints connected in the request's DC"
    )
    zero_downtime_failover_codes: tuple[int, ...] = _f(
        (521, 522, 523),
        range=(500, 599),
        doc="attempt outcomes that trigger the single retry (R42)",
    )
    error_style: str = _f("cloudflare", choices=("cloudflare", "plain"), doc="5xx codes")
    probe_connection_reuse: float = _f(
        0.0,
        range=(0, 86400),
        doc="seconds a probe connection may carry more checks; 0 = a new one per check",
    )
    probe_user_agent: str = _f(
        "tunnel-lb", choices=("tunnel-lb", "cloudflare"), doc="probe User-Agent (R6)"
    )
    minimum_interval: float = _f(10, range=(1, 3600), doc="plan minimum for monitor interval")
    fractional_monitor_times: bool = _f(
        False,
        doc="accept monitor timeouts outside 1-10 s and fractions of a second (rehearsals and "
        "fast tests; Cloudflare's API takes whole seconds)",
    )
    dynamic_latency_alpha: float = _f(0.3, range=(0.01, 1.0), doc="EWMA weight of a new RTT")
    workers: int = _f(1, range=(1, 64), doc="proxy processes sharing the port")
    drain_timeout: float = _f(30.0, range=(0, 3600), doc="seconds SIGTERM waits for requests")
    access_log: bool = _f(False, doc="one log line per request")
    upstream_ca: str = _f(
        "",
        doc="PEM CA bundle trusted for endpoints (probes and traffic); empty = system store",
        path=True,
    )
    upstream_idle_timeout: float = _f(
        30.0,
        range=(0.0, 3600),
        doc="seconds a pooled endpoint connection may stay idle and still be reused "
        "(less when the endpoint sends Keep-Alive: timeout=N); 0 = never reuse",
    )
    limits: Limits = _f(Limits(), doc="request limits")
    cluster: Cluster | None = _f(None, doc="share health with other replicas (docs/cluster.md)")
    state_file: str = _f(
        "",
        doc="tunnel-lb extension: file keeping health and sessions across restarts; empty = off",
        path=True,
    )
    state_interval: float = _f(
        10.0, range=(1, 86400), doc="seconds between writes of state_file (and at shutdown)"
    )
    state_max_age: float = _f(
        300.0, range=(1, 86400 * 30), doc="an older state_file is ignored at start"
    )
    flap_damping: FlapDamping | None = _f(
        None, doc="tunnel-lb extension: keep flapping endpoints out (docs/semantics.md); off"
    )
    passive_health: PassiveHealth | None = _f(
        None,
        doc="tunnel-lb extension: eject endpoints that fail real traffic (docs/semantics.md); off",
    )


@dataclass(**_FROZEN)
class Config:
    """A whole configuration, validated and with every reference resolved to a pool name."""

    monitors: tuple[Monitor, ...] = ()
    monitor_groups: tuple[MonitorGroup, ...] = ()
    pools: tuple[Pool, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    tunnels: tuple[Tunnel, ...] = ()
    datacenters: Mapping[str, Datacenter] = field(default_factory=dict)
    connect_to: Mapping[str, str] = field(default_factory=dict)
    engine: EngineSettings = EngineSettings()
    source: tuple[str, ...] = ()
    """Files the configuration was read from."""

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` (references are resolved to names by the loader)."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def monitor(self, monitor_id: str) -> Monitor:
        """The monitor with id ``monitor_id``."""
        for m in self.monitors:
            if m.id == monitor_id:
                return m
        raise KeyError(monitor_id)

    def monitor_group(self, group_id: str) -> MonitorGroup:
        """The monitor group with id ``group_id``."""
        for g in self.monitor_groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def pool_monitors(self, pool: Pool) -> tuple[Monitor, ...]:
        """Every monitor that probes ``pool``: its monitor, or its group's enabled members."""
        if pool.monitor is not None:
            return (self.monitor(pool.monitor),)
        if pool.monitor_group is not None:
            group = self.monitor_group(pool.monitor_group)
            return tuple(self.monitor(m.monitor_id) for m in group.active)
        return ()

    def passive(self, pool: Pool) -> PassiveHealth | None:
        """``pool``'s passive health settings in force: its own, else the engine's; None when
        off, or when the pool has no monitor to bring an ejected endpoint back."""
        passive = pool.passive_health or self.engine.passive_health
        if passive is None or not passive.enabled or not pool.monitored:
            return None
        return passive

    def load_balancer(self, host: str) -> LoadBalancer | None:
        """The load balancer whose name is ``host`` (case-insensitive, port stripped)."""
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        host = host.lower().rstrip(".")
        for lb in self.load_balancers:
            if lb.name.lower() == host:
                return lb
        return None

    def tunnel(self, uuid: str) -> Tunnel | None:
        """The ``tunnels`` entry for ``uuid``, if described."""
        for t in self.tunnels:
            if t.id == uuid:
                return t
        return None
