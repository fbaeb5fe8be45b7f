"""What goes into a steering decision and what comes out of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lb.config.model import LoadBalancer
from lb.core.snapshot import EndpointView, PoolView

__all__ = ["Affinity", "Counts", "Decision", "Live", "Request"]


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


class Counts:
    """One pool's live counts of one kind, by endpoint position: what R21 reads per request.

    ``by_index[i]`` is the count of the endpoint called ``names[i]`` (``EndpointView.index`` is
    its position in the pool's ``origins``), so a reader walks two lists instead of formatting
    and hashing a ``pool/endpoint`` key per endpoint.  ``version`` moves on every change: a
    reader may keep what it derived from the counts (the router keeps R21's cumulative table)
    for as long as the version and the :class:`Counts` object are the same.
    """

    __slots__ = ("by_index", "names", "version")

    def __init__(self, names: tuple[str, ...], by_index: list[int]) -> None:
        self.names = names
        """The layout: endpoint names in ``origins`` order; ``()`` once it is out of date."""
        self.by_index = by_index
        self.version = 0

    def add(self, endpoint: EndpointView, delta: int) -> None:
        """Move the count of ``endpoint`` by ``delta``."""
        i, names = endpoint.index, self.names
        if i < len(names) and names[i] == endpoint.name:
            self.by_index[i] += delta
        else:
            # ``endpoint`` comes from a snapshot with another layout (a reload reordered the
            # pool while it was in use): give up the mirror; the next reader rebuilds it.
            self.names = ()
        self.version += 1


@dataclass(slots=True)
class Live:
    """Live request and connection counts, written by the proxy or simulator, read by steering.

    These feed ``least_outstanding_requests`` and ``least_connections`` (R21) at endpoint and
    pool level.  The dictionaries are the record, keyed by endpoint key (``pool/endpoint``) and
    pool name; admin, metrics and tests read them, and they may be given to the constructor.
    After that, write only through :meth:`started`, :meth:`finished`,
    :meth:`connection_opened` and :meth:`connection_closed`: they also keep the per-pool
    :class:`Counts` mirrors that steering reads (:meth:`counts`) in step.
    """

    in_flight: dict[str, int] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    pool_in_flight: dict[str, int] = field(default_factory=dict)
    pool_connections: dict[str, int] = field(default_factory=dict)
    in_flight_mirrors: dict[str, Counts] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    connection_mirrors: dict[str, Counts] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    # The four writers are spelled out rather than sharing a helper: they run twice per
    # request (and per connection), and a call is a large share of their cost.

    def started(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` went out."""
        key, pool = endpoint.key, endpoint.pool
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.pool_in_flight[pool] = self.pool_in_flight.get(pool, 0) + 1
        mirror = self.in_flight_mirrors.get(pool)
        if mirror is not None:
            mirror.add(endpoint, 1)

    def finished(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` completed, successfully or not."""
        key, pool = endpoint.key, endpoint.pool
        self.in_flight[key] = self.in_flight.get(key, 0) - 1
        self.pool_in_flight[pool] = self.pool_in_flight.get(pool, 0) - 1
        mirror = self.in_flight_mirrors.get(pool)
        if mirror is not None:
            mirror.add(endpoint, -1)

    def connection_opened(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` opened."""
        key, pool = endpoint.key, endpoint.pool
        self.connections[key] = self.connections.get(key, 0) + 1
        self.pool_connections[pool] = self.pool_connections.get(pool, 0) + 1
        mirror = self.connection_mirrors.get(pool)
        if mirror is not None:
            mirror.add(endpoint, 1)

    def connection_closed(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` closed."""
        key, pool = endpoint.key, endpoint.pool
        self.connections[key] = self.connections.get(key, 0) - 1
        self.pool_connections[pool] = self.pool_connections.get(pool, 0) - 1
        mirror = self.connection_mirrors.get(pool)
        if mirror is not None:
            mirror.add(endpoint, -1)

    def counts(self, pool: str, names: tuple[str, ...], *, connections: bool) -> Counts:
        """The in-flight (or, with ``connections``, connection) counts of ``pool`` by position.

        ``names`` is the pool's layout in the reader's snapshot (endpoint names in ``origins``
        order).  The mirror is built from the dictionaries on first use and whenever the layout
        differs, then kept in step by the writers; passing the same tuple object every time
        makes the layout check an identity test.
        """
        mirrors = self.connection_mirrors if connections else self.in_flight_mirrors
        mirror = mirrors.get(pool)
        if mirror is not None and mirror.names is names:
            return mirror
        if mirror is None or mirror.names != names:
            record = self.connections if connections else self.in_flight
            mirror = Counts(names, [record.get(f"{pool}/{name}", 0) for name in names])
            mirrors[pool] = mirror
        else:
            mirror.names = names  # the same layout from another snapshot
        return mirror


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
