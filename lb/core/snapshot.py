"""Immutable views of health that steering reads; rebuilt only when health or config changes.

A request-time decision must be a few dictionary and array lookups, so everything that can
be worked out once per change is worked out here: the selectable endpoints of each pool, their
weights and cumulative weights (for ``bisect``), and the pool health of R17.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lb.config.model import Config, LoadBalancer, Pool
from lb.core.health import Health

__all__ = ["EndpointView", "PoolState", "PoolView", "Snapshot"]


class PoolState(StrEnum):
    """Pool health names (R17, docs/cloudflare-rules.md).

    A ``StrEnum``: each member is its string, so JSON, metric labels and comparisons with
    plain strings read exactly as before.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    UNKNOWN = "unknown"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointView:
    """One endpoint of one pool as steering sees it."""

    pool: str
    name: str
    index: int
    """Position in the pool's ``origins`` list."""
    address: str
    port: int
    host: str | None
    """The endpoint's Host override (R47), if any."""
    tunnel_id: str | None
    weight: float
    enabled: bool
    health: Health
    """Aggregate health (R14); ``HEALTHY`` for every enabled endpoint of an unmonitored pool."""
    vantage_health: Mapping[str, Health]
    disabled_at: float | None
    """When a reload disabled it (for drain, R40); None when enabled or disabled from the start."""
    datacenters: frozenset[str]
    """Data centers the endpoint's tunnel replicas hold connections in (empty if unknown)."""
    damped: str = ""
    """Why flap damping holds the endpoint out (``engine.flap_damping``); empty when not."""
    ejected: str = ""
    """Why passive health holds the endpoint out (``passive_health``); empty when not."""
    ramp: tuple[float, float] | None = None
    """``(recovered_at, slow_start)`` while the endpoint ramps up after a recovery
    (``slow_start``, a tunnel-lb extension); None otherwise."""

    @property
    def key(self) -> str:
        """``pool/endpoint``, the name used in metrics, traces and cookies."""
        return f"{self.pool}/{self.name}"

    @property
    def selectable(self) -> bool:
        """R18: enabled, healthy and weight > 0."""
        return self.enabled and self.health is Health.HEALTHY and self.weight > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolView:
    """One pool with its health and precomputed selection tables."""

    name: str
    config: Pool
    monitored: bool
    state: PoolState
    eligible: bool
    """R17: enabled and at least ``minimum_origins`` healthy enabled endpoints."""
    healthy_count: int
    endpoints: tuple[EndpointView, ...]
    selectable: tuple[EndpointView, ...]
    """Endpoints steering may pick (R18), in configuration order."""
    cumulative: tuple[float, ...]
    """Running sums of the selectable endpoints' weights, for ``bisect``."""
    rtt: Mapping[str, float] = field(default_factory=dict)
    """EWMA of monitor RTT in seconds per vantage point, for dynamic_latency (R28)."""
    ramp: tuple[float, float] | None = None
    """``(recovered_at, slow_start)`` while the pool ramps up after it became eligible again
    (``slow_start``); None otherwise."""
    ramping: bool = False
    """Whether any selectable endpoint has a :attr:`EndpointView.ramp`."""

    def endpoint(self, name: str) -> EndpointView | None:
        """The endpoint called ``name`` in this pool."""
        for e in self.endpoints:
            if e.name == name:
                return e
        return None

    @staticmethod
    def tables(endpoints: tuple[EndpointView, ...]) -> tuple[float, ...]:
        """Cumulative weights of ``endpoints``."""
        return tuple(itertools.accumulate(e.weight for e in endpoints))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything a steering decision needs, frozen at one version of health and config."""

    version: int
    config: Config
    pools: Mapping[str, PoolView]
    load_balancers: Mapping[str, LoadBalancer]
    """By lowercase hostname."""

    def load_balancer(self, host: str) -> LoadBalancer | None:
        """The load balancer for a Host header value (port stripped, case-insensitive)."""
        name = host.lower()
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0].rstrip(".")
        return self.load_balancers.get(name)
