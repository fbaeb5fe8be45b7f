"""Prometheus metrics of one engine: counters fed by callbacks, gauges read at scrape time.

Theory of operation
===================

The core knows nothing about Prometheus (docs/design.md).  Everything here hangs off the
engine's observer lists and off methods the proxy hooks call, and is exposed through one
:class:`Metrics` object that owns its own ``CollectorRegistry``; the global ``REGISTRY`` is
never touched, so tests and simulations stay isolated.

Two kinds of series:

* **Event counters and histograms** (requests, retries, decisions, probes, transitions,
  reloads) are incremented by callbacks.  They are kept in plain dictionaries keyed by the
  label tuple and turned into metric families only when scraped.  A request therefore costs a
  few dictionary operations: no ``.labels()`` call (slow: it validates and joins the labels
  on every call), no lock (everything runs on the trio thread, scrapes included), and no
  ``*_created`` series, which prometheus_client would add to every counter in the text format.
* **State gauges** (endpoint and pool health, load-balancer state, in-flight requests and
  connections, readiness) are read from the engine's current snapshot and live counters at
  scrape time, the custom-collector pattern of
  https://prometheus.github.io/client_python/collector/custom/.  They are never stale and
  cost nothing between scrapes; endpoints that a reload removed simply disappear.  The one
  exception is *when* a state last changed: that is stamped by the observers (a flap
  between two scrapes would otherwise go unseen) and read at scrape time.

The registry also holds prometheus_client's process and platform collectors (``process_*``,
``python_info``) and ``lb_build_info``, so an operator sees restarts, memory and versions.

With worker processes (``lb/workers.py``) each child's counters and histograms, all of
:attr:`Metrics.events`, travel to the parent, whose registry alone is scraped.

Every metric is declared once, in :data:`METRICS`, with its type, labels and help; the
exposition, ``describe()`` and ``docs/metrics.md`` (checked by a test) all follow that table.

Invariant: all methods run on the thread that owns the engine.  ``generate_latest`` on
:attr:`Metrics.registry` must run there too (the admin server calls it from its trio task).
"""

from __future__ import annotations

import bisect
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lb import __version__
from lb.config.model import Config, LoadBalancer
from lb.core.health import Health, HealthEvent, ProbeResult
from lb.core.passive import PASSIVE
from lb.core.snapshot import PoolState, Snapshot
from lb.proxy.errors import ATTEMPT_ERRORS
from steering import Affinity, Decision

if TYPE_CHECKING:
    from lb.engine import Engine
    from lb.proxy.hooks import RequestRecord

__all__ = [
    "DURATION_BUCKETS",
    "METRICS",
    "LoadBalancerState",
    "MetricSpec",
    "Metrics",
    "load_balancer_state",
]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its exposition name, Prometheus type, label names and help text."""

    name: str
    """Full sample name for counters (with ``_total``); the family name otherwise."""
    kind: str
    """``counter``, ``gauge`` or ``histogram``."""
    labels: tuple[str, ...]
    help: str


DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the request and probe duration histograms, ``+Inf`` implied.

From 1 ms (a loopback tunnel) to 60 s (the longest monitor timeout, R8); Prometheus' default
buckets stop at 10 s, which would put every slow-but-passing probe into ``+Inf``.
"""

_LB = "load_balancer"
_EP = ("pool", "endpoint")

METRICS: tuple[MetricSpec, ...] = (
    # ---- traffic (proxy hooks)
    MetricSpec(
        "lb_requests_total",
        "counter",
        (_LB, *_EP, "status"),
        "Requests answered, by load balancer, pool, endpoint and HTTP status "
        "(pool and endpoint are empty when no endpoint was chosen).",
    ),
    MetricSpec(
        "lb_request_duration_seconds",
        "histogram",
        (_LB, *_EP),
        "Time from the request head to the end of the response, in seconds "
        "(pool and endpoint are empty when no endpoint was chosen).",
    ),
    MetricSpec(
        "lb_retries_total",
        "counter",
        (_LB, "pool", "reason"),
        "Second attempts, by the pool of the failed first attempt: zero-downtime failover by "
        "failed status, stale_connection, or retry_on_<condition> (one per retry_on retry).",
    ),
    MetricSpec(
        "lb_retry_budget_refusals_total",
        "counter",
        (_LB,),
        "retry_on retries the retry budget refused: the request got its first answer.",
    ),
    MetricSpec(
        "lb_upstream_errors_total",
        "counter",
        (*_EP, "kind"),
        "Attempts at an endpoint that failed, by kind (refused, connect_timeout, dns, "
        "unreachable, tls_handshake, tls_certificate, response_timeout, upstream_closed...).",
    ),
    MetricSpec(
        "lb_fallback_requests_total",
        "counter",
        (_LB,),
        "Requests steered to the fallback pool because no candidate pool was eligible.",
    ),
    MetricSpec(
        "lb_steering_decisions_total",
        "counter",
        (_LB, "policy", "reason"),
        "Steering decisions, by pool/endpoint policy and why the pool was chosen "
        "(policy, affinity, fallback, retry, no_pool, unknown_host).",
    ),
    MetricSpec(
        "lb_affinity_total",
        "counter",
        (_LB, "outcome"),
        "Session-affinity outcomes of first decisions: new, hit, remapped, expired, invalid.",
    ),
    MetricSpec(
        "lb_client_connections",
        "gauge",
        (),
        "Client connections open right now, over every worker process.",
    ),
    MetricSpec(
        "lb_client_tls_failures_total",
        "counter",
        ("reason",),
        "Client TLS handshakes that failed, by reason: plain_http, handshake_failed, "
        "connection_lost, timed_out.",
    ),
    MetricSpec(
        "lb_slow_request_bodies_total",
        "counter",
        ("closed_by",),
        "Client connections closed because their request body came too slowly: "
        "min_body_rate, or connection_cap (to make room for a new connection).",
    ),
    MetricSpec(
        "lb_slow_response_reads_total",
        "counter",
        ("closed_by",),
        "Client connections cut because their client took the response too slowly: "
        "min_response_rate, or connection_cap (to make room for a new connection).",
    ),
    MetricSpec(
        "lb_websocket_upgrades_total",
        "counter",
        (_LB, *_EP),
        "WebSocket upgrades relayed (101), by the endpoint that accepted them: each is one "
        "session of a TCP service (tunnel-lb access tcp, cloudflared access).",
    ),
    MetricSpec(
        "lb_websockets_open",
        "gauge",
        (_LB,),
        "WebSockets being carried right now.",
    ),
    MetricSpec(
        "lb_websocket_bytes_total",
        "counter",
        (_LB, "direction"),
        "Bytes carried by finished WebSockets after the 101: in (client to tunnel), out.",
    ),
    # ---- proxy: upstream timing, bytes, active requests (proxy hooks)
    MetricSpec(
        "lb_upstream_connect_duration_seconds",
        "histogram",
        _EP,
        "Time to open a connection to the endpoint (TCP connect and TLS handshake), "
        "for connects that succeeded; reused keep-alive connections are not counted.",
    ),
    MetricSpec(
        "lb_upstream_first_byte_seconds",
        "histogram",
        _EP,
        "Time to first byte: from sending the request on an open connection to the "
        "response head (connect excluded), by endpoint.",
    ),
    MetricSpec(
        "lb_client_bytes_total",
        "counter",
        (_LB, "direction"),
        "Body bytes received from clients and sent to clients, by load balancer "
        "(after a 101: the bytes carried).",
    ),
    MetricSpec(
        "lb_endpoint_bytes_total",
        "counter",
        (*_EP, "direction"),
        "Body bytes sent to and received from the endpoint, for requests it answered.",
    ),
    MetricSpec(
        "lb_requests_active",
        "gauge",
        (),
        "Client requests received and not finished, over every worker process.",
    ),
    # ---- monitors (engine observers)
    MetricSpec(
        "lb_probes_total",
        "counter",
        (*_EP, "vantage", "result", "reason"),
        "Health checks completed, by result (success, failure) and Cloudflare failure reason.",
    ),
    MetricSpec(
        "lb_monitor_group_probes_total",
        "counter",
        (*_EP, "vantage", "member", "result"),
        "Health checks made by monitor group members, by member monitor id and result.",
    ),
    MetricSpec(
        "lb_probe_duration_seconds",
        "histogram",
        (*_EP, "vantage"),
        "Health-check round trip from request to response head, for checks that got one.",
    ),
    MetricSpec(
        "lb_health_transitions_total",
        "counter",
        (*_EP, "vantage", "to"),
        'Endpoint health changes per vantage point; vantage="*" is the majority of them.',
    ),
    MetricSpec(
        "lb_passive_ejections_total",
        "counter",
        _EP,
        "Endpoints ejected by passive health (passive_health) after failing real traffic.",
    ),
    # ---- configuration
    MetricSpec(
        "lb_config_reloads_total",
        "counter",
        ("result",),
        "Configuration reload attempts, by result (success, failure).",
    ),
    MetricSpec(
        "lb_config_last_reload_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time the configuration in force was applied.",
    ),
    MetricSpec(
        "lb_config_generation",
        "gauge",
        (),
        "Number of configuration swaps since the engine started.",
    ),
    # ---- state, read from the engine at scrape time
    MetricSpec(
        "lb_ready",
        "gauge",
        (),
        "1 once every monitored endpoint has a result from every vantage point, else 0.",
    ),
    MetricSpec(
        "lb_endpoint_health",
        "gauge",
        (*_EP, "vantage", "state"),
        "1 for the endpoint's current health state, 0 for the others; "
        'vantage="*" is the aggregate that steering uses.',
    ),
    MetricSpec(
        "lb_endpoint_last_change_timestamp_seconds",
        "gauge",
        _EP,
        "Unix time the endpoint's aggregate state (lb_endpoint_health) last changed, "
        "or when this process started watching it.",
    ),
    MetricSpec(
        "lb_endpoint_weight",
        "gauge",
        _EP,
        "The endpoint's configured weight in its pool (0 takes no new traffic).",
    ),
    MetricSpec(
        "lb_endpoint_in_flight_requests",
        "gauge",
        _EP,
        "Requests sent to the endpoint and not finished, over every worker process.",
    ),
    MetricSpec(
        "lb_endpoint_connections",
        "gauge",
        _EP,
        "Open upstream connections to the endpoint, over every worker process.",
    ),
    MetricSpec(
        "lb_pool_health",
        "gauge",
        ("pool", "state"),
        "1 for the pool's current state (healthy, degraded, critical, unknown, disabled), "
        "0 for the others.",
    ),
    MetricSpec(
        "lb_pool_last_change_timestamp_seconds",
        "gauge",
        ("pool",),
        "Unix time the pool's state (lb_pool_health) last changed, "
        "or when this process started watching it.",
    ),
    MetricSpec(
        "lb_pool_eligible",
        "gauge",
        ("pool",),
        "1 when the pool may receive traffic: enabled with minimum_origins healthy.",
    ),
    MetricSpec(
        "lb_pool_healthy_endpoints",
        "gauge",
        ("pool",),
        "Enabled endpoints of the pool that are healthy.",
    ),
    MetricSpec(
        "lb_pool_ejected_endpoints",
        "gauge",
        ("pool",),
        "Endpoints of the pool passive health holds out right now (pools it covers only).",
    ),
    MetricSpec(
        "lb_pool_minimum_endpoints",
        "gauge",
        ("pool",),
        "The pool's minimum_origins: healthy endpoints it needs to be eligible.",
    ),
    MetricSpec(
        "lb_pool_probe_rtt_seconds",
        "gauge",
        ("pool", "vantage"),
        "Moving average of the pool's probe round trips, which dynamic_latency steers by.",
    ),
    MetricSpec(
        "lb_load_balancer_state",
        "gauge",
        (_LB, "state"),
        "1 for the load balancer's current state (healthy, degraded, fallback, down, "
        "disabled), 0 for the others.",
    ),
    MetricSpec(
        "lb_affinity_header_sessions",
        "gauge",
        (),
        "Header-affinity sessions held in memory.",
    ),
    # ---- the process
    MetricSpec(
        "lb_build_info",
        "gauge",
        ("version", "python"),
        "Always 1; the labels say which tunnel-lb and which Python run.",
    ),
)
"""Every metric this module exposes; ``docs/metrics.md`` lists the same table."""

_SPECS = {m.name: m for m in METRICS}

UPSTREAM_ERROR_KINDS: frozenset[str] = ATTEMPT_ERRORS
"""The ``kind`` values of ``lb_upstream_errors_total``: the proxy's attempt errors
(``lb.proxy.hooks.Attempt.error``, :data:`lb.proxy.errors.ATTEMPT_ERRORS`).  Anything else
is counted as ``other``, so the label stays a closed set whatever the proxy reports."""

ENDPOINT_STATES = (Health.HEALTHY.value, Health.UNHEALTHY.value, Health.UNKNOWN.value, "disabled")
VANTAGE_STATES = (Health.HEALTHY.value, Health.UNHEALTHY.value, Health.UNKNOWN.value)
POOL_STATES = tuple(PoolState)


class LoadBalancerState(StrEnum):
    """What a load balancer can serve right now (a ``StrEnum``: each member is its string, for
    JSON and metric labels).

    Over every pool the load balancer can steer to (``default_pools`` and the geo lists):
    ``healthy``: all are eligible; ``degraded``: some are; ``fallback``: none is, and the
    enabled fallback pool answers (R30); ``down``: none is and the fallback pool is disabled
    or missing (530 / 1016); ``disabled``: the load balancer itself is off (404).
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FALLBACK = "fallback"
    DOWN = "down"
    DISABLED = "disabled"


def load_balancer_state(lb: LoadBalancer, snapshot: Snapshot) -> LoadBalancerState:
    """The :class:`LoadBalancerState` of ``lb`` in ``snapshot``."""
    if not lb.enabled:
        return LoadBalancerState.DISABLED
    # Every pool the load balancer can steer to: default_pools and the geo lists (§2.3).
    names = dict.fromkeys(lb.default_pools)
    for mapping in (lb.region_pools, lb.country_pools, lb.pop_pools):
        for listed in mapping.values():
            names.update(dict.fromkeys(listed))
    pools = [snapshot.pools.get(name) for name in names]
    eligible = sum(1 for p in pools if p is not None and p.eligible)
    if pools and eligible == len(pools):
        return LoadBalancerState.HEALTHY
    if eligible:
        return LoadBalancerState.DEGRADED
    fallback = snapshot.pools.get(lb.fallback_pool)
    if fallback is not None and fallback.config.enabled:
        return LoadBalancerState.FALLBACK
    return LoadBalancerState.DOWN


# --------------------------------------------------------------------------- storage


class _Counter:
    """Counter values by label tuple; a family is built only when scraped."""

    __slots__ = ("spec", "values")

    def __init__(self, name: str) -> None:
        self.spec = _SPECS[name]
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the series with labels ``key``."""
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def take(self) -> list[list[Any]]:
        """Move the values out as JSON-ready ``[labels, value]`` pairs, leaving none."""
        values, self.values = self.values, {}
        return [[list(key), value] for key, value in values.items()]

    def merge(self, items: Iterable[Any]) -> None:
        """Add pairs made by :meth:`take` (in another process) to these values."""
        for key, value in items:
            self.inc(tuple(str(k) for k in key), float(value))

    def family(self) -> CounterMetricFamily:
        """The series as a metric family, at scrape time."""
        # CounterMetricFamily strips "_total" from the family name and adds it to samples.
        fam = CounterMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)
        for key, value in sorted(self.values.items()):
            fam.add_metric(key, value)
        return fam


class _Histogram:
    """Histogram buckets by label tuple.

    Each label tuple maps to a list of per-bucket counts (not cumulative, so an observation
    touches one slot), the ``+Inf`` bucket, then the running sum.  ``bisect_left`` finds the
    first bound ``>= value``, which is Prometheus' ``le`` (less than or equal) rule.
    """

    __slots__ = ("bounds", "data", "spec")

    def __init__(self, name: str, bounds: Sequence[float]) -> None:
        self.spec = _SPECS[name]
        self.bounds = tuple(bounds)
        self.data: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        """Count one observation of ``value`` for labels ``key``."""
        slots = self.data.get(key)
        if slots is None:
            slots = self.data[key] = [0.0] * (len(self.bounds) + 2)
        slots[bisect.bisect_left(self.bounds, value)] += 1
        slots[-1] += value

    def take(self) -> list[list[Any]]:
        """Move the buckets out as JSON-ready ``[labels, slots]`` pairs, leaving none."""
        data, self.data = self.data, {}
        return [[list(key), slots] for key, slots in data.items()]

    def merge(self, items: Iterable[Any]) -> None:
        """Add pairs made by :meth:`take` (in another process) to these buckets."""
        width = len(self.bounds) + 2
        for key, slots in items:
            if len(slots) != width:
                continue  # another build's buckets: not comparable, dropped
            mine = self.data.setdefault(tuple(str(k) for k in key), [0.0] * width)
            for i, value in enumerate(slots):
                mine[i] += float(value)

    def family(self) -> HistogramMetricFamily:
        """The buckets as a cumulative metric family, at scrape time."""
        fam = HistogramMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)
        edges = [*(_float_text(b) for b in self.bounds), "+Inf"]
        for key, slots in sorted(self.data.items()):
            running = 0.0
            buckets = []
            for edge, count in zip(edges, slots, strict=False):
                running += count
                buckets.append((edge, running))
            fam.add_metric(list(key), buckets, sum_value=slots[-1])
        return fam


def _float_text(value: float) -> str:
    """Bucket bounds as prometheus_client writes them (``0.005``, ``1.0``, ``60.0``)."""
    return repr(float(value))


def _gauge(name: str) -> GaugeMetricFamily:
    spec = _SPECS[name]
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


# --------------------------------------------------------------------------- the object


class Metrics:
    """The metrics of one engine, in a registry of their own.

    Create it, :meth:`attach` it to the engine (health, probe and config observers), and wire
    the proxy's hooks to :meth:`request_done`, :meth:`retry` and :meth:`decision`; the reload
    path calls :meth:`reload`.  Scrape with
    ``prometheus_client.generate_latest(metrics.registry)``.

    The registry also gets prometheus_client's process collector (``process_*``: CPU, memory,
    open files, start time; Linux only) and platform collector (``python_info``).

    Args:
        registry: the registry to register in; a new private one by default.
        wall: Unix-time clock for the reload and state-change timestamps (injected for tests).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._wall = wall
        self._engine: Engine | None = None
        self._config_at: float | None = None
        self.requests = _Counter("lb_requests_total")
        self.request_duration = _Histogram("lb_request_duration_seconds", DURATION_BUCKETS)
        self.retries = _Counter("lb_retries_total")
        self.budget_refusals = _Counter("lb_retry_budget_refusals_total")
        self.upstream_errors = _Counter("lb_upstream_errors_total")
        self.fallback = _Counter("lb_fallback_requests_total")
        self.decisions = _Counter("lb_steering_decisions_total")
        self.affinity = _Counter("lb_affinity_total")
        self.probes = _Counter("lb_probes_total")
        self.member_probes = _Counter("lb_monitor_group_probes_total")
        self.probe_duration = _Histogram("lb_probe_duration_seconds", DURATION_BUCKETS)
        self.transitions = _Counter("lb_health_transitions_total")
        self.ejections = _Counter("lb_passive_ejections_total")
        self.reloads = _Counter("lb_config_reloads_total")
        self.upgrades = _Counter("lb_websocket_upgrades_total")
        self.websocket_bytes = _Counter("lb_websocket_bytes_total")
        self.websockets_open: dict[str, int] = {}
        self.tls_failures = _Counter("lb_client_tls_failures_total")
        self.slow_bodies = _Counter("lb_slow_request_bodies_total")
        self.slow_reads = _Counter("lb_slow_response_reads_total")
        # ---- proxy: upstream timing, bytes, active requests (see exchange_done)
        self.connect_duration = _Histogram("lb_upstream_connect_duration_seconds", DURATION_BUCKETS)
        self.first_byte = _Histogram("lb_upstream_first_byte_seconds", DURATION_BUCKETS)
        self.client_bytes = _Counter("lb_client_bytes_total")
        self.endpoint_bytes = _Counter("lb_endpoint_bytes_total")
        self.requests_active = 0
        """Requests this process has started and not finished (:meth:`request_started`)."""
        self.worker_requests_active: dict[int, int] = {}
        """The same, as each child worker last reported it (the parent's view)."""
        self._endpoint_keys: dict[
            str, tuple[tuple[str, str], tuple[str, str, str], tuple[str, str, str]]
        ] = {}
        self.client_connections = 0
        """Client connections this process has open (:meth:`connection`)."""
        self.worker_client_connections: dict[int, int] = {}
        """The same, as each child worker last reported it (the parent's view)."""
        self.events: Mapping[str, _Counter | _Histogram] = {
            store.spec.name: store
            for store in (
                self.requests,
                self.request_duration,
                self.retries,
                self.budget_refusals,
                self.upstream_errors,
                self.fallback,
                self.decisions,
                self.affinity,
                self.probes,
                self.member_probes,
                self.probe_duration,
                self.transitions,
                self.ejections,
                self.reloads,
                self.upgrades,
                self.websocket_bytes,
                self.tls_failures,
                self.slow_bodies,
                self.slow_reads,
                # proxy: upstream timing and bytes
                self.connect_duration,
                self.first_byte,
                self.client_bytes,
                self.endpoint_bytes,
            )
        }
        """Every counter and histogram by metric name, in exposition order: what
        :meth:`collect` exposes and what a worker process reports to its parent."""
        # When each endpoint's and pool's state last changed (Unix time), and the states.
        self._endpoint_state: dict[tuple[str, str], tuple[str, float]] = {}
        self._pool_state: dict[str, tuple[str, float]] = {}
        # Status codes as label strings, so a request does not format an int every time.
        self._status_text = {code: str(code) for code in range(100, 600)}
        self._build = (__version__, platform.python_version())
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # ------------------------------------------------------------------ wiring

    @property
    def engine(self) -> Engine | None:
        """The attached engine, if any."""
        return self._engine

    def attach(self, engine: Engine) -> None:
        """Subscribe to ``engine``'s observers and read its state at scrape time.

        Attaching to a second engine detaches from the first.

        Args:
            engine: the engine whose health, probes and configuration swaps are counted.
        """
        if self._engine is not None:
            self.detach()
        self._engine = engine
        engine.observers.health.append(self.health_event)
        engine.observers.probes.append(self.probe_result)
        engine.observers.config.append(self.config_applied)
        self._config_at = self._wall()
        self._endpoint_state.clear()
        self._pool_state.clear()
        self._track_states()

    def detach(self) -> None:
        """Unsubscribe from the attached engine; counters keep their values."""
        engine = self._engine
        if engine is None:
            return
        engine.observers.health.remove(self.health_event)
        engine.observers.probes.remove(self.probe_result)
        engine.observers.config.remove(self.config_applied)
        self._engine = None

    # ------------------------------------------------------------------ engine observers

    def probe_result(self, result: ProbeResult) -> None:
        """Observer of ``engine.observers.probes``: count one check and its round trip."""
        self.probes.inc(
            (
                result.pool,
                result.endpoint,
                result.vantage,
                "success" if result.ok else "failure",
                result.reason,
            )
        )
        if result.member:  # R16: the member behind the result, which lb_probes_total sums
            outcome = "success" if result.ok else "failure"
            key = (result.pool, result.endpoint, result.vantage, result.member, outcome)
            self.member_probes.inc(key)
        if result.rtt is not None:
            self.probe_duration.observe((result.pool, result.endpoint, result.vantage), result.rtt)

    def health_event(self, event: HealthEvent) -> None:
        """Observer of ``engine.observers.health``: count one transition."""
        self.transitions.inc((event.pool, event.endpoint, event.vantage, event.after.value))
        if event.vantage == PASSIVE and event.after is Health.UNHEALTHY:
            self.ejections.inc((event.pool, event.endpoint))
        self._track_states()

    def config_applied(self, config: Config) -> None:
        """Observer of ``engine.observers.config``: remember when the swap happened."""
        del config
        self._config_at = self._wall()
        self._endpoint_keys.clear()  # renamed or removed endpoints leave no entry behind
        self._track_states()

    def _track_states(self) -> None:
        """Stamp every endpoint and pool whose state differs from the one last seen.

        Called on every health event and configuration swap, the only moments a state can
        change, so a flap between two scrapes is still stamped.  Endpoints and pools a
        reload removed are forgotten; new ones are stamped now.
        """
        engine = self._engine
        if engine is None:
            return
        now = self._wall()
        endpoints: dict[tuple[str, str], tuple[str, float]] = {}
        pools: dict[str, tuple[str, float]] = {}
        for pool in engine.book.snapshot().pools.values():
            before = self._pool_state.get(pool.name)
            pools[pool.name] = before if before and before[0] == pool.state else (pool.state, now)
            for ep in pool.endpoints:
                key = (pool.name, ep.name)
                state = ep.health.value if ep.enabled else "disabled"
                seen = self._endpoint_state.get(key)
                endpoints[key] = seen if seen and seen[0] == state else (state, now)
        self._endpoint_state, self._pool_state = endpoints, pools

    # ------------------------------------------------------------------ proxy hooks

    def request_done(
        self,
        load_balancer: str,
        pool: str | None,
        endpoint: str | None,
        status: int,
        duration: float,
    ) -> None:
        """Count one answered request (one per client request, retries included once).

        Args:
            load_balancer: the load balancer's name ("" for a request no LB answers).
            pool: the pool that served it, None when none was chosen.
            endpoint: the endpoint's name in that pool, None when none was chosen.
            status: the HTTP status sent to the client.
            duration: seconds from the request head to the end of the response.
        """
        text = self._status_text.get(status)
        if text is None:
            text = str(status)
        pool = pool or ""
        endpoint = endpoint or ""
        self.requests.inc((load_balancer, pool, endpoint, text))
        self.request_duration.observe((load_balancer, pool, endpoint), duration)

    def retry(self, load_balancer: str, reason: str, pool: str | None = None) -> None:
        """Count one second attempt: a zero-downtime failover (R42) or a stale connection.

        Args:
            load_balancer: the load balancer's name.
            reason: the status that failed the first attempt (``"522"``), or
                ``"stale_connection"``.
            pool: the pool of the failed first attempt; ``""`` in the label when not given.
        """
        self.retries.inc((load_balancer, pool or "", reason))

    def retry_budget_refused(self, load_balancer: str) -> None:
        """Count one ``retry_on`` retry the load balancer's retry budget refused."""
        self.budget_refusals.inc((load_balancer,))

    def upstream_error(self, pool: str, endpoint: str, kind: str) -> None:
        """Count one failed attempt at an endpoint.

        Args:
            pool: the endpoint's pool.
            endpoint: the endpoint's name in that pool.
            kind: the attempt's error; one of :data:`UPSTREAM_ERROR_KINDS`, else ``other``.
        """
        if kind not in UPSTREAM_ERROR_KINDS:
            kind = "other"
        self.upstream_errors.inc((pool, endpoint, kind))

    def decision(self, decision: Decision) -> None:
        """Count one steering decision, its affinity outcome and fallback use.

        Call it for every decision the proxy acts on.  For the retry decision
        (``reason == "retry"``) only the decision is counted: its affinity outcome and pool
        were already counted with the first decision.

        Args:
            decision: what :meth:`steering.Router.decide` (or ``retry``) returned.
        """
        lb = decision.load_balancer
        name = lb.name if lb is not None else ""
        reason = decision.reason
        self.decisions.inc((name, decision.policy, reason))
        if reason == "retry":
            return
        if reason == "fallback":
            self.fallback.inc((name,))
        if decision.affinity != Affinity.NONE:
            self.affinity.inc((name, decision.affinity))

    def websocket_opened(self, load_balancer: str, pool: str | None, endpoint: str | None) -> None:
        """Count one relayed 101; the WebSocket is open until :meth:`websocket_closed`.

        Args:
            load_balancer: the load balancer's name.
            pool: the pool of the endpoint that accepted the upgrade.
            endpoint: that endpoint's name in the pool.
        """
        self.upgrades.inc((load_balancer, pool or "", endpoint or ""))
        self.websockets_open[load_balancer] = self.websockets_open.get(load_balancer, 0) + 1

    def websocket_closed(self, load_balancer: str, bytes_in: int, bytes_out: int) -> None:
        """One WebSocket counted by :meth:`websocket_opened` ended, having carried these bytes.

        Args:
            load_balancer: the load balancer's name.
            bytes_in: bytes carried from the client to the tunnel after the 101.
            bytes_out: bytes carried from the tunnel to the client after the 101.
        """
        self.websockets_open[load_balancer] = self.websockets_open.get(load_balancer, 0) - 1
        self.websocket_bytes.inc((load_balancer, "in"), bytes_in)
        self.websocket_bytes.inc((load_balancer, "out"), bytes_out)

    def connection(self, delta: int) -> None:
        """A client connection was accepted (``+1``) or closed (``-1``): the proxy's
        ``on_connection`` hook."""
        self.client_connections += delta

    def tls_failed(self, reason: str) -> None:
        """A client TLS handshake failed: the proxy's ``on_tls_failed`` hook.

        Args:
            reason: a :class:`lb.proxy.hooks.TlsFailure` (a closed set of words).
        """
        self.tls_failures.inc((reason,))

    def slow_body(self, closed_by: str) -> None:
        """A connection was closed for a request body too slow: the proxy's
        ``on_slow_body`` hook.

        Args:
            closed_by: a :class:`lb.proxy.hooks.SlowBody` (``min_body_rate`` or
                ``connection_cap``).
        """
        self.slow_bodies.inc((closed_by,))

    def slow_read(self, closed_by: str) -> None:
        """A connection was cut for a response its client took too slowly: the proxy's
        ``on_slow_read`` hook.

        Args:
            closed_by: a :class:`lb.proxy.hooks.SlowRead` (``min_response_rate`` or
                ``connection_cap``).
        """
        self.slow_reads.inc((closed_by,))

    # ------------------------------------------------------------------ proxy hooks: upstream
    # timing, bytes and active requests, from the records the proxy reports.

    def request_started(self, record: RequestRecord) -> None:
        """``ProxyHooks.on_request_start``: one more active request until :meth:`exchange_done`."""
        del record
        self.requests_active += 1

    def exchange_done(self, record: RequestRecord) -> None:
        """Count what one finished request's record says beyond :meth:`request_done`: its
        attempts' connect time and time to first byte, and its bytes (failed attempts are
        :meth:`upstream_error`'s).

        Labels come only from the configuration (the record's load balancer, pool and
        endpoint keys) and fixed enums, never from the request.

        Args:
            record: what ``ProxyHooks.on_request_done`` received.
        """
        self.requests_active -= 1
        keys = self._endpoint_keys
        for attempt in record.attempts:
            k = keys.get(attempt.endpoint)
            if k is None:
                k = self._endpoint_key(attempt.pool, attempt.endpoint)
            if attempt.connect_time is not None:
                self.connect_duration.observe(k[0], attempt.connect_time)
            if attempt.first_byte is not None:
                self.first_byte.observe(k[0], attempt.first_byte)
        lb = record.load_balancer or ""
        bytes_in = record.bytes_in
        bytes_out = record.bytes_out
        if bytes_in:
            self.client_bytes.inc((lb, "received"), bytes_in)
        if bytes_out:
            self.client_bytes.inc((lb, "sent"), bytes_out)
        if record.upstream_status is not None and record.pool and record.endpoint:
            k = keys.get(record.endpoint)
            if k is None:
                k = self._endpoint_key(record.pool, record.endpoint)
            values = self.endpoint_bytes.values
            if bytes_in:
                values[k[1]] = values.get(k[1], 0.0) + bytes_in
            if bytes_out:
                values[k[2]] = values.get(k[2], 0.0) + bytes_out

    def _endpoint_key(
        self, pool: str, endpoint_key: str
    ) -> tuple[tuple[str, str], tuple[str, str, str], tuple[str, str, str]]:
        """The label tuples of one ``pool/endpoint`` key, made once: the endpoint's, and its
        ``sent`` and ``received`` byte series.  The cache holds configured names only and is
        emptied when a configuration is applied."""
        name = endpoint_key.partition("/")[2]
        k = ((pool, name), (pool, name, "sent"), (pool, name, "received"))
        self._endpoint_keys[endpoint_key] = k
        return k

    def reload(self, ok: bool) -> None:
        """Count one configuration reload attempt.

        Args:
            ok: whether the new configuration was applied.
        """
        self.reloads.inc(("success" if ok else "failure",))

    # ------------------------------------------------------------------ reading back

    def request_counts(self) -> dict[tuple[str, str, str, str], float]:
        """Requests so far by (load balancer, pool, endpoint, status), for ``/status``."""
        return {(k[0], k[1], k[2], k[3]): v for k, v in self.requests.values.items()}

    # ------------------------------------------------------------------ Collector protocol

    def describe(self) -> Iterable[Metric]:
        """Every family, without samples, so the registry can check names once."""
        for spec in METRICS:
            if spec.kind == "counter":
                yield CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            elif spec.kind == "histogram":
                yield HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
            else:
                yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterable[Metric]:
        """Every family with its current samples (called by the registry on a scrape)."""
        self._zero_proxy_timings()
        for store in self.events.values():
            yield store.family()
        open_ = _gauge("lb_websockets_open")
        for name, count in sorted(self.websockets_open.items()):
            open_.add_metric([name], count)
        yield open_
        stamp = _gauge("lb_config_last_reload_success_timestamp_seconds")
        if self._config_at is not None:
            stamp.add_metric([], self._config_at)
        yield stamp
        clients = _gauge("lb_client_connections")
        clients.add_metric(
            [], self.client_connections + sum(self.worker_client_connections.values())
        )
        yield clients
        active = _gauge("lb_requests_active")
        active.add_metric([], self.requests_active + sum(self.worker_requests_active.values()))
        yield active
        build = _gauge("lb_build_info")
        build.add_metric(list(self._build), 1.0)
        yield build
        yield from self._engine_families()

    def _zero_proxy_timings(self) -> None:
        """Give every configured endpoint its timing series, at zero, before a scrape:
        connects are rare on keep-alive connections, and a series born with its first
        observation shows no increase, so ``rate()`` and the quantiles would stay empty."""
        engine = self._engine
        if engine is None:
            return
        width = len(DURATION_BUCKETS) + 2
        for pool in engine.book.snapshot().pools.values():
            for ep in pool.endpoints:
                for histogram in (self.connect_duration, self.first_byte):
                    if (pool.name, ep.name) not in histogram.data:
                        histogram.data[(pool.name, ep.name)] = [0.0] * width

    def _engine_families(self) -> Iterator[Metric]:
        engine = self._engine
        names = (
            "lb_config_generation",
            "lb_ready",
            "lb_endpoint_health",
            "lb_endpoint_last_change_timestamp_seconds",
            "lb_endpoint_weight",
            "lb_endpoint_in_flight_requests",
            "lb_endpoint_connections",
            "lb_pool_health",
            "lb_pool_last_change_timestamp_seconds",
            "lb_pool_eligible",
            "lb_pool_healthy_endpoints",
            "lb_pool_ejected_endpoints",
            "lb_pool_minimum_endpoints",
            "lb_pool_probe_rtt_seconds",
            "lb_load_balancer_state",
            "lb_affinity_header_sessions",
        )
        fam = {name: _gauge(name) for name in names}
        if engine is not None:
            self._fill_engine(engine, fam)
        yield from fam.values()

    def _fill_engine(self, engine: Engine, fam: dict[str, GaugeMetricFamily]) -> None:
        """Add the scrape-time samples of ``engine`` to the gauge families in ``fam``."""
        _fill_engine(engine, fam)
        since = self._config_at if self._config_at is not None else self._wall()
        changed = fam["lb_endpoint_last_change_timestamp_seconds"]
        weight = fam["lb_endpoint_weight"]
        for pool in engine.book.snapshot().pools.values():
            seen = self._pool_state.get(pool.name)
            fam["lb_pool_last_change_timestamp_seconds"].add_metric(
                [pool.name], seen[1] if seen else since
            )
            for ep in pool.endpoints:
                state = self._endpoint_state.get((pool.name, ep.name))
                changed.add_metric([pool.name, ep.name], state[1] if state else since)
                weight.add_metric([pool.name, ep.name], ep.weight)


def _fill_engine(engine: Engine, fam: dict[str, GaugeMetricFamily]) -> None:
    """Add the scrape-time samples of ``engine`` to the gauge families in ``fam``."""
    snapshot = engine.book.snapshot()
    live = engine.live_totals()
    fam["lb_config_generation"].add_metric([], engine.generation)
    fam["lb_ready"].add_metric([], 1.0 if engine.ready else 0.0)
    fam["lb_affinity_header_sessions"].add_metric([], len(engine.sessions))
    health = fam["lb_endpoint_health"]
    in_flight = fam["lb_endpoint_in_flight_requests"]
    connections = fam["lb_endpoint_connections"]
    for pool in snapshot.pools.values():
        p = pool.name
        for ep in pool.endpoints:
            state = ep.health.value if ep.enabled else "disabled"
            for s in ENDPOINT_STATES:
                health.add_metric([p, ep.name, "*", s], 1.0 if s == state else 0.0)
            for vantage, vh in sorted(ep.vantage_health.items()):
                for s in VANTAGE_STATES:
                    health.add_metric([p, ep.name, vantage, s], 1.0 if s == vh.value else 0.0)
            key = ep.key
            in_flight.add_metric([p, ep.name], live.in_flight.get(key, 0))
            connections.add_metric([p, ep.name], live.connections.get(key, 0))
        for s in POOL_STATES:
            fam["lb_pool_health"].add_metric([p, s], 1.0 if s == pool.state else 0.0)
        fam["lb_pool_eligible"].add_metric([p], 1.0 if pool.eligible else 0.0)
        fam["lb_pool_healthy_endpoints"].add_metric([p], pool.healthy_count)
        if snapshot.config.passive(pool.config) is not None:
            ejectors = [engine.book.passive(p, ep.name) for ep in pool.endpoints]
            out = sum(1 for e in ejectors if e is not None and e.ejected)
            fam["lb_pool_ejected_endpoints"].add_metric([p], out)
        fam["lb_pool_minimum_endpoints"].add_metric([p], pool.config.minimum_origins)
        for vantage, rtt in sorted(pool.rtt.items()):
            fam["lb_pool_probe_rtt_seconds"].add_metric([p, vantage], rtt)
    for lb in snapshot.config.load_balancers:
        state = load_balancer_state(lb, snapshot)
        for s in LoadBalancerState:
            fam["lb_load_balancer_state"].add_metric([lb.name, s], 1.0 if s == state else 0.0)
