"""What goes into a steering decision and what comes out of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lb.config.model import LoadBalancer
from lb.core.snapshot import EndpointView, PoolView

__all__ = ["Affinity", "Decision", "Live", "Request"]


@dataclass(slots=True, kw_only=True)
class Request:
    """The facts about one request that steering may use.

    ``now`` is the engine clock (the one health events are stamped with; drain, R40, compares
    against it); ``wall`` is Unix time for ``__cflb`` expiry, which must mean the same thing on
    every replica that shares the affinity secret.
    """

    host: str
    client_ip: str = ""
    datacenter: str = ""
    """Code of the data center the request entered at ("" when unknown)."""
    cookie: str | None = None
    """The ``__cflb`` value the client sent, if any."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers with lowercase names, for header affinity."""
    cookies: Mapping[str, str] = field(default_factory=dict)
    """All request cookies, for header affinity on ``cookie`` / ``cookie:a,b``."""
    now: float = 0.0
    wall: float = 0.0


class Affinity:
    """Affinity outcomes, as plain strings for traces, JSON and metric labels."""

    NONE = "none"
    NEW = "new"
    HIT = "hit"
    REMAPPED = "remapped"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(slots=True)
class Live:
    """Live request and connection counts, written by the proxy or simulator, read by steering.

    Keys are endpoint keys (``pool/endpoint``) and pool names.  These feed
    ``least_outstanding_requests`` and ``least_connections`` (R21) at endpoint and pool level.
    """

    in_flight: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    pool_in_flight: dict[str, int] = field(default_factory=dict)
    pool_connections: dict[str, int] = field(default_factory=dict)

    def started(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` went out."""
        key = endpoint.key
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.pool_in_flight[endpoint.pool] = self.pool_in_flight.get(endpoint.pool, 0) + 1

    def finished(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` completed, successfully or not."""
        key = endpoint.key
        self.in_flight[key] = self.in_flight.get(key, 0) - 1
        self.pool_in_flight[endpoint.pool] = self.pool_in_flight.get(endpoint.pool, 0) - 1

    def connection_opened(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` opened."""
        key = endpoint.key
        self.connections[key] = self.connections.get(key, 0) + 1
        self.pool_connections[endpoint.pool] = self.pool_connections.get(endpoint.pool, 0) + 1

    def connection_closed(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` closed."""
        key = endpoint.key
        self.connections[key] = self.connections.get(key, 0) - 1
        self.pool_connections[endpoint.pool] = self.pool_connections.get(endpoint.pool, 0) - 1


@dataclass(slots=True, kw_only=True)
class Decision:
    """Where one request goes, and why.

    ``status`` is 0 when an endpoint was chosen; otherwise the HTTP status to answer with
    (404 for an unknown host, 530 with error 1016 when no pool can serve, R30).
    """

    load_balancer: LoadBalancer | None
    pool: PoolView | None
    endpoint: EndpointView | None
    reason: str
    """``policy``, ``affinity``, ``fallback``, ``retry``, ``unknown_host`` or ``no_pool``."""
    policy: str = ""
    """The pool policy that chose the pool, and the endpoint policy, e.g. ``geo/random``."""
    affinity: str = Affinity.NONE
    set_cookie: str | None = None
    """A new ``__cflb`` value the response must set, if any."""
    status: int = 0
    trace: list[str] | None = None
    pinned: str | None = None
    """The endpoint key an affinity session is pinned to, when one was honoured."""
    tried: tuple[str, ...] = ()
    """Endpoint keys of the attempts so far (for the zero-downtime retry)."""

    @property
    def tunnel_id(self) -> str | None:
        """The tunnel UUID of the chosen endpoint, if it is a tunnel."""
        return self.endpoint.tunnel_id if self.endpoint else None

    def as_json(self) -> dict[str, object]:
        """The JSON form used by ``tunnel-lb explain --json`` and ``/explain``."""
        return {
            "load_balancer": self.load_balancer.name if self.load_balancer else None,
            "pool": self.pool.name if self.pool else None,
            "endpoint": self.endpoint.name if self.endpoint else None,
            "tunnel_id": self.tunnel_id,
            "reason": self.reason,
            "policy": self.policy,
            "affinity": self.affinity,
            "set_cookie": self.set_cookie is not None,
            "status": self.status,
            "trace": list(self.trace or ()),
        }
