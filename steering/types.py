"""What goes into a steering decision and what comes out of it."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from lb.config.model import FixedResponse, LoadBalancer
from lb.core.snapshot import EndpointView, PoolView
from steering.affinity import HeaderSession

__all__ = [
    "NO_TRACE",
    "Affinity",
    "Counts",
    "Decision",
    "DecisionReason",
    "Live",
    "Request",
    "Trace",
]


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
    country: str = ""
    """The client's country (ISO code from a trusted proxy's ``CF-IPCountry``; "" when
    unknown): ``country_pools`` and pool-set ``countries`` use it before the data center's."""
    cookie: str | None = None
    """The ``__cflb`` value the client sent, if any."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers with lowercase names, for header affinity."""
    cookies: Mapping[str, str] = field(default_factory=dict)
    """All request cookies, for header affinity on ``cookie`` / ``cookie:a,b``."""
    now: float = 0.0
    wall: float = 0.0
    method: str = "GET"
    uri: str = "/"
    """The request target (path and query), for custom rules (R32)."""
    version: str = "HTTP/1.1"


class Affinity(StrEnum):
    """What session affinity did with a request (R35-R40).

    A ``StrEnum``: each member is its value, so traces, JSON and metric labels show the same
    plain strings as before the type existed.
    """

    NONE = "none"
    NEW = "new"
    HIT = "hit"
    REMAPPED = "remapped"
    EXPIRED = "expired"
    INVALID = "invalid"


class DecisionReason(StrEnum):
    """Why a :class:`Decision` is what it is (``Decision.reason``); the values are the strings
    traces, JSON, access logs and metric labels show."""

    POLICY = "policy"
    """The pool and endpoint policies chose (R25-R29, R19-R21)."""
    AFFINITY = "affinity"
    """An existing session was honoured (R35-R40)."""
    FALLBACK = "fallback"
    """No eligible pool: the fallback pool, health ignored (R30)."""
    RETRY = "retry"
    """The zero-downtime failover retry (R42-R45)."""
    FIXED_RESPONSE = "fixed_response"
    """A pool set's or custom rule's direct answer (R31, R32)."""
    UNKNOWN_HOST = "unknown_host"
    """No load balancer answers for the Host (404)."""
    NO_POOL = "no_pool"
    """Nothing can serve, not even the fallback pool (530 / error 1016, R30)."""


class Trace:
    """The steps of one traced decision, in words (``decide(trace=True)``: ``/explain`` and
    ``tunnel-lb explain``), which become ``Decision.trace``.

    Steering code always takes a Trace; an untraced call gets :data:`NO_TRACE`, which is off
    and keeps nothing.  A line that costs something to build (an f-string) is built only
    under ``if tr.on``, so an untraced request formats no text; a constant line is added as
    it is.
    """

    __slots__ = ("_lines", "on")

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self._lines = list(lines)
        self.on = True
        """Whether lines are kept (False only for :data:`NO_TRACE`).  An instance slot, not a
        class attribute: CPython 3.11 reads a slot faster, and untraced steering reads it a
        few times per request."""

    def add(self, line: str) -> None:
        """Record one step."""
        self._lines.append(line)

    @property
    def lines(self) -> list[str] | None:
        """The steps so far, for ``Decision.trace`` (None when off)."""
        return self._lines


class _NoTrace(Trace):
    """See :data:`NO_TRACE`."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def add(self, line: str) -> None:
        del line

    @property
    def lines(self) -> list[str] | None:
        return None


NO_TRACE: Trace = _NoTrace()
"""The trace of an untraced decision: off, and keeps nothing."""


MOVED_LIMIT = 64
"""Most count writes :class:`Counts` remembers for readers that catch up (see ``moved``)."""


class Counts:
    """One pool's live counts of one kind (requests in flight, or open connections), by slot.

    Slot ``i`` counts the endpoint called ``names[i]``; slots are added in the order endpoints
    are first counted and never move, so a reader may remember where an endpoint's count is
    for as long as the number of slots stays the same.  A writer finds its slot through
    ``EndpointView.index`` (the endpoint's position in the pool's ``origins``) when the slots
    happen to be in that order (a list index and a name comparison), else by name.

    ``version`` moves whenever a count does: a reader may keep what it derived from the counts
    (the router keeps R21's cumulative table) while the version stays the same, and bring it up
    to date from :attr:`moved` when it is not too far behind.  Readers never write.
    """

    __slots__ = ("counts", "moved", "names", "seen", "slots", "version")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.counts: list[int] = []
        self.seen: list[bool] = []
        """Whether the slot was ever written (only those show in :class:`Live`'s mappings)."""
        self.slots: dict[str, int] = {}
        """Endpoint name -> slot."""
        self.version = 0
        self.moved: deque[int] = deque(maxlen=MOVED_LIMIT)
        """The slots of the last count writes, oldest first: a reader at version ``v`` finds
        what changed since in the last ``version - v`` entries, if there are that many (a
        reader further behind starts over)."""

    def add(self, endpoint: EndpointView, delta: int) -> None:
        """Move the count of ``endpoint`` by ``delta``."""
        i, names = endpoint.index, self.names
        if i >= len(names) or names[i] != endpoint.name:
            i = self.slot(endpoint.name)
        self.counts[i] += delta
        self.seen[i] = True
        self.moved.append(i)
        self.version += 1

    def slot(self, name: str) -> int:
        """The slot of endpoint ``name``, added after the others if it has none."""
        i = self.slots.get(name)
        if i is None:
            i = self.slots[name] = len(self.names)
            self.names.append(name)
            self.counts.append(0)
            self.seen.append(False)
        return i


class _CountsView(Mapping[str, int]):
    """Per-pool :class:`Counts` seen as one read-only ``pool/endpoint`` -> count mapping."""

    __slots__ = ("_pools",)

    def __init__(self, pools: dict[str, Counts]) -> None:
        self._pools = pools

    def __getitem__(self, key: str) -> int:
        pool, _, name = key.partition("/")
        counts = self._pools.get(pool)
        i = counts.slots.get(name) if counts is not None else None
        if counts is None or i is None or not counts.seen[i]:
            raise KeyError(key)
        return counts.counts[i]

    def __iter__(self) -> Iterator[str]:
        for pool, counts in self._pools.items():
            for name, seen in zip(counts.names, counts.seen, strict=True):
                if seen:
                    yield f"{pool}/{name}"

    def __len__(self) -> int:
        return sum(sum(c.seen) for c in self._pools.values())

    def __repr__(self) -> str:
        return repr(dict(self))


class Live:
    """Live request and connection counts, written by the proxy or simulator, read by steering.

    These feed ``least_outstanding_requests`` and ``least_connections`` (R21) at endpoint and
    pool level.  Per endpoint they are kept per pool in :class:`Counts` (``in_flight_by_pool``,
    ``connections_by_pool``), which steering reads by position; ``in_flight`` and
    ``connections`` show them as read-only ``pool/endpoint`` -> count mappings (an endpoint
    appears once it was counted) for admin, metrics and tests.  ``pool_in_flight`` and
    ``pool_connections`` are plain dictionaries by pool name.

    The constructor takes initial counts in the mapping form; afterwards the counts move only
    through :meth:`started`, :meth:`finished`, :meth:`connection_opened` and
    :meth:`connection_closed`.
    """

    __slots__ = (
        "connections_by_pool",
        "in_flight_by_pool",
        "pool_connections",
        "pool_in_flight",
    )

    def __init__(
        self,
        in_flight: Mapping[str, int] | None = None,
        connections: Mapping[str, int] | None = None,
        pool_in_flight: dict[str, int] | None = None,
        pool_connections: dict[str, int] | None = None,
    ) -> None:
        self.in_flight_by_pool: dict[str, Counts] = _by_pool(in_flight or {})
        self.connections_by_pool: dict[str, Counts] = _by_pool(connections or {})
        self.pool_in_flight: dict[str, int] = pool_in_flight if pool_in_flight is not None else {}
        self.pool_connections: dict[str, int] = (
            pool_connections if pool_connections is not None else {}
        )

    @property
    def in_flight(self) -> Mapping[str, int]:
        """Requests in flight per endpoint key (``pool/endpoint``)."""
        return _CountsView(self.in_flight_by_pool)

    @property
    def connections(self) -> Mapping[str, int]:
        """Open upstream connections per endpoint key (``pool/endpoint``)."""
        return _CountsView(self.connections_by_pool)

    def __repr__(self) -> str:
        return (
            f"Live(in_flight={self.in_flight!r}, connections={self.connections!r}, "
            f"pool_in_flight={self.pool_in_flight!r}, "
            f"pool_connections={self.pool_connections!r})"
        )

    def started(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` went out."""
        _add(endpoint, 1, self.pool_in_flight, self.in_flight_by_pool)

    def finished(self, endpoint: EndpointView) -> None:
        """A request to ``endpoint`` completed, successfully or not."""
        _add(endpoint, -1, self.pool_in_flight, self.in_flight_by_pool)

    def connection_opened(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` opened."""
        _add(endpoint, 1, self.pool_connections, self.connections_by_pool)

    def connection_closed(self, endpoint: EndpointView) -> None:
        """An upstream connection to ``endpoint`` closed."""
        _add(endpoint, -1, self.pool_connections, self.connections_by_pool)


def _add(
    endpoint: EndpointView, delta: int, totals: dict[str, int], by_pool: dict[str, Counts]
) -> None:
    """Move the count of ``endpoint`` and its pool's total by ``delta``."""
    pool = endpoint.pool
    totals[pool] = totals.get(pool, 0) + delta
    counts = by_pool.get(pool)
    if counts is None:
        counts = by_pool[pool] = Counts()
    counts.add(endpoint, delta)


def _by_pool(initial: Mapping[str, int]) -> dict[str, Counts]:
    """Per-pool :class:`Counts` from ``pool/endpoint`` -> count."""
    pools: dict[str, Counts] = {}
    for key, n in initial.items():
        pool, _, name = key.partition("/")
        counts = pools.get(pool)
        if counts is None:
            counts = pools[pool] = Counts()
        i = counts.slot(name)
        counts.counts[i] = n
        counts.seen[i] = True
    return pools


class Decision(NamedTuple):
    """Where one request goes, and why.

    ``status`` is 0 when an endpoint was chosen; otherwise the HTTP status to answer with
    (404 for an unknown host, 530 with error 1016 when no pool can serve, R30).

    A decision is a value: the router returns the same object for the same untraced outcome
    (see ``steering.router._Plan.decision``), so nothing may change one after it is made.  It
    is a named tuple rather than a frozen dataclass because the router builds one per request
    where the request shows in it (a new ``__cflb``, a trace): a frozen dataclass costs ~1.4 us
    to build on CPython 3.11 (a setattr through ``object`` per field), a named tuple ~0.2 us.
    Build one with keywords; the field order is not part of the interface.
    """

    load_balancer: LoadBalancer | None
    pool: PoolView | None
    endpoint: EndpointView | None
    reason: DecisionReason
    policy: str = ""
    """The pool policy that chose the pool, and the endpoint policy, e.g. ``geo/random``."""
    affinity: Affinity = Affinity.NONE
    set_cookie: str | None = None
    """A new ``__cflb`` value the response must set, if any."""
    status: int = 0
    trace: list[str] | None = None
    pinned: str | None = None
    """The endpoint key an affinity session is pinned to, when one was honoured."""
    tried: tuple[str, ...] = ()
    """Endpoint keys of the attempts so far (for the zero-downtime retry)."""
    fixed: FixedResponse | None = None
    """A custom rule's direct answer (reason ``fixed_response``, R32)."""
    remember: HeaderSession | None = None
    """A header-affinity session the engine must store once it acts on this decision (R39):
    the router only reads the session table."""

    def with_affinity(
        self,
        affinity: Affinity,
        set_cookie: str | None = None,
        remember: HeaderSession | None = None,
    ) -> Decision:
        """This decision for a session that is not a hit (``affinity`` says why), with the new
        ``__cflb`` it sets and the header session to store, if any.

        Built by copying the fields and setting three by name: about a third of the cost of
        ``_replace`` or of the keyword constructor, and every new affinity session pays it.
        """
        fields = list(self)
        fields[_AFFINITY] = affinity
        fields[_SET_COOKIE] = set_cookie
        fields[_REMEMBER] = remember
        return Decision._make(fields)

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
            "fixed_response": None if self.fixed is None else dataclasses.asdict(self.fixed),
            "trace": list(self.trace or ()),
        }


_AFFINITY = Decision._fields.index("affinity")
_SET_COOKIE = Decision._fields.index("set_cookie")
_REMEMBER = Decision._fields.index("remember")
