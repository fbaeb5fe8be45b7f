"""What one request carries through the proxy, and its lifecycle as a state machine.

Why one object: the steps of an exchange (steer, buffer the body, dial, send, relay, splice,
answer) live in different modules (docs/proxy.md, "Modules"), and each needs the client
connection, the parsed head and what happened so far.  They take one :class:`Exchange`
instead of ten parameters, and the timeout handler reads the same object to tell what the
request was waiting for when its deadline fired.

Why an explicit lifecycle: one watchdog deadline per request guards whatever the exchange
waits for next (docs/proxy.md, "Timeouts"), and what a timeout means (408, 524, a cut
connection, an idle WebSocket) depends on where the request is.  :data:`TRANSITIONS` is the
whole machine, in one table: a :class:`Phase` and a :class:`Move` give the next phase, and a
move the table does not list raises :class:`LifecycleError` (a bug, never a client's doing).
The body pump runs beside the wait for the response head, so ``BODY`` and ``UPSTREAM`` (and
``SEND`` and ``RELAY`` once the response started) alternate: the last move wins, as the last
deadline does.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network

import trio

from lb.config.model import Config
from lb.core.attempts import Body
from lb.core.budget import RetryBudget
from lb.core.snapshot import EndpointView
from lb.engine import Engine
from lb.proxy import http1
from lb.proxy.capacity import default_max_connections
from lb.proxy.errors import RequestError
from lb.proxy.headers import RequestFacts
from lb.proxy.hooks import ProxyHooks, RequestRecord
from lb.proxy.upstream import Target, UpstreamConnection, UpstreamPool
from lb.proxy.watchdog import RateClock, Watchdog

__all__ = [
    "RECEIVE_SIZE",
    "RESPONDED",
    "TRANSITIONS",
    "BodyPump",
    "Client",
    "ClientError",
    "Exchange",
    "LifecycleError",
    "Move",
    "Phase",
    "Shared",
]

RECEIVE_SIZE = 65536


class Phase(StrEnum):
    """Where a request is; what its watchdog deadline guards."""

    NEW = "new"
    """The head is read: refusals and steering, no wait of its own."""
    BODY = "body"
    """Reading the request body (or writing ``100 Continue``) before any response:
    ``idle_timeout``, then 408."""
    CONNECT = "connect"
    """Dialing an endpoint: the pool's ``connect_timeout`` applies, the watchdog is off."""
    UPSTREAM = "upstream"
    """Sending the request, waiting for the response head: ``request_timeout``, then 524."""
    SEND = "send"
    """The response started; writing to the client (or reading the rest of its body):
    ``idle_timeout``, then the connection is cut."""
    RELAY = "relay"
    """The response started; waiting for more of it from upstream: ``request_timeout``, then
    the connection is cut."""
    WEBSOCKET = "websocket"
    """Spliced after a 101: ``idle_timeout`` of silence both ways, then both are cut."""


class Move(StrEnum):
    """What an exchange is about to do; with the current phase it gives the next one."""

    CLIENT = "client"
    """Wait on the client: read its body, or write to it."""
    DIAL = "dial"
    """Open a fresh upstream connection."""
    UPSTREAM = "upstream"
    """Wait on the upstream: write the request, or read the response."""
    RESPOND = "respond"
    """Commit the response head to the client (relayed, or one of the proxy's own)."""
    UPGRADE = "upgrade"
    """Relay a 101 and splice the two connections."""


_BEFORE = {Move.CLIENT: Phase.BODY, Move.DIAL: Phase.CONNECT, Move.UPSTREAM: Phase.UPSTREAM}
_AFTER = {Move.CLIENT: Phase.SEND, Move.UPSTREAM: Phase.RELAY}

TRANSITIONS: dict[Phase, dict[Move, Phase]] = {
    Phase.NEW: {**_BEFORE, Move.RESPOND: Phase.SEND},
    Phase.BODY: {**_BEFORE, Move.RESPOND: Phase.SEND},
    Phase.CONNECT: {**_BEFORE, Move.RESPOND: Phase.SEND},
    # A response head read while the deadline guards the upstream keeps guarding it: the
    # relay's last write runs under that deadline (lb/proxy/exchange.py, ``relay``).
    Phase.UPSTREAM: {**_BEFORE, Move.RESPOND: Phase.RELAY, Move.UPGRADE: Phase.WEBSOCKET},
    Phase.SEND: dict(_AFTER),
    Phase.RELAY: dict(_AFTER),
    Phase.WEBSOCKET: {},
}
"""The lifecycle, whole: ``TRANSITIONS[phase][move]`` is the next phase.  Once a response has
started there is no going back to ``BODY``, ``CONNECT`` or ``UPSTREAM`` (no new attempt, no
second answer), and a spliced connection only ends."""

RESPONDED = frozenset({Phase.SEND, Phase.RELAY, Phase.WEBSOCKET})
"""The phases after a response started: a failure then cuts the connection."""


class LifecycleError(RuntimeError):
    """A move :data:`TRANSITIONS` does not allow: a bug in the proxy."""


class ClientError(Exception):
    """The client side of an exchange failed; ``status`` 0 means no answer is possible."""

    def __init__(self, status: int, reason: RequestError) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BodyPump:
    """The task that streams the rest of a request body upstream (lb/proxy/body.py)."""

    __slots__ = ("done", "error", "head_wait", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.error: Exception | None = None
        self.head_wait: trio.CancelScope | None = None
        """The exchange's wait for the response head, while it lasts."""


@dataclass(slots=True, eq=False)
class Exchange:
    """One request, from its head to its report: what every step of it needs.

    The connection loop (lb/proxy/connection.py) makes it, the exchange and its helpers fill
    it in, and the loop settles it (counters, upstream connection, ``record``).
    """

    shared: Shared
    client: Client
    """The client connection it came on (the connection cap may close it for being slow)."""
    config: Config
    """The configuration in force when the request arrived (a reload applies to the next)."""
    stream: trio.abc.Stream
    """The client connection."""
    conn: http1.Connection
    """The client connection's parser and state (lb/proxy/http1.py)."""
    event: http1.Request
    facts: RequestFacts
    record: RequestRecord
    watchdog: Watchdog
    """The connection's only cancel scope and its deadline: the request's timeouts."""
    started: float
    tasks: trio.Nursery | None
    """Where a body pump runs: the connection's nursery, inside its watchdog."""
    peer: str
    https: bool
    trusted: bool
    client_ip: str
    request_id: bytes
    target: bytes
    """The origin-form target sent upstream; empty when the request-target is refused."""
    phase: Phase = Phase.NEW
    pump: BodyPump | None = None
    up: UpstreamConnection | None = None
    endpoint: EndpointView | None = None
    """Set while ``live.started`` is unmatched by ``live.finished``."""
    body: list[http1.Data] = field(default_factory=list)
    """Body events taken from the client and not sent yet, or, when ``body_state`` is
    ``BUFFERED``, the whole body, kept to send it again."""
    body_state: Body = Body.UNTOUCHED
    """Where the request body stands, for the attempt policy (lb/core/attempts.py)."""
    req_done: bool = False
    """The client's request is complete (the parser gave its EndOfMessage)."""
    sent_any: bool = False
    """Some of the request reached the current upstream connection."""
    clock: RateClock | None = None
    """The request body's rate clock, from the first wait for its bytes (lb/proxy/body.py);
    the request is in ``Shared.bodies`` from then until its body pump ends or it is
    settled."""

    def advance(self, move: Move, seconds: float | None = None) -> None:
        """Take ``move`` (see :data:`TRANSITIONS`); with ``seconds``, push the inactivity
        deadline that far ahead (``math.inf`` turns it off)."""
        to = TRANSITIONS[self.phase].get(move)
        if to is None:
            raise LifecycleError(f"{move} is not a move from {self.phase}")
        self.phase = to
        if seconds is not None:
            self.watchdog.push(seconds)

    @property
    def responded(self) -> bool:
        """Whether a response to this request has started (no new attempt, no 5xx of ours)."""
        return self.phase in RESPONDED


class Client:
    """One client connection: its stream and peer, its watchdog (the only cancel
    scope per connection) and the request in progress, which the connection loop reports
    when it is over.  While it waits for the first byte of a request it is in
    ``Shared.idle`` (shutdown and the connection cap close those), and while it holds part
    of a head in ``Shared.heads``."""

    __slots__ = ("exchange", "https", "peer", "send_clock", "stream", "tasks", "watchdog")

    def __init__(self, stream: trio.abc.Stream, https: bool) -> None:
        self.stream = stream
        self.https = https
        self.peer = ""
        """The TCP peer's IP address ("" when the socket has none)."""
        self.watchdog = Watchdog()
        self.tasks: trio.Nursery | None = None
        """The connection's nursery (inside the watchdog), for request body pumps."""
        self.exchange: Exchange | None = None
        self.send_clock = RateClock()
        """The rate clock of the response write in progress (lb/proxy/replies.py,
        ``flush_down``): one per connection, reset by each write, and found by the watch
        loop on its pass over the connections, so a response costs no allocation and no
        registration."""


class Throttle:
    """When a log event that can come in floods (one per refused connection, one per failed
    handshake) was last written: it is written again only ``every`` seconds later."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -math.inf

    def due(self, now: float, every: float) -> bool:
        """Whether to write the event at ``now``; if so, ``now`` becomes its last time."""
        if now - self.last < every:
            return False
        self.last = now
        return True


class Shared:
    """What every connection and exchange of one :class:`~lb.proxy.server.ProxyServer`
    shares: the engine, the pool, the hooks, the drain flags and the per-config caches."""

    __slots__ = (
        "blocked_writes",
        "bodies",
        "budgets",
        "cap_log",
        "clients",
        "default_cap",
        "drained",
        "draining",
        "engine",
        "expired",
        "heads",
        "hooks",
        "idle",
        "names",
        "names_key",
        "pool",
        "read_log",
        "readers",
        "refused",
        "retry_key",
        "retry_lbs",
        "rid_counter",
        "rid_prefix",
        "rng",
        "shed",
        "slow",
        "slow_bodies",
        "slow_log",
        "slow_reads",
        "targets",
        "targets_key",
        "tls_failed",
        "tls_log",
        "tls_plain",
        "trust_key",
        "trusted_cache",
        "trusted_nets",
    )

    def __init__(
        self,
        engine: Engine,
        hooks: ProxyHooks,
        rng: random.Random,
        pool: UpstreamPool,
        rid_prefix: str,
    ) -> None:
        self.engine = engine
        self.hooks = hooks
        self.rng = rng
        self.pool = pool
        self.draining = False
        self.drained = trio.Event()
        """Set when the drain finds no client connection left."""
        self.expired = False
        """The drain deadline passed: what is still in flight is answered 503 and closed."""
        self.clients: set[Client] = set()
        self.idle: dict[Client, None] = {}
        """Clients waiting for the first byte of a request, longest-waiting first."""
        self.heads: dict[Client, float] = {}
        """Clients holding part of a request head, with the time its first bytes came,
        oldest first (the connection cap may close those stuck past a grace)."""
        self.default_cap = default_max_connections(0)
        self.shed = 0
        """Connections closed to make room for a new one at the connection cap: idle ones,
        or half heads past the grace (lb/proxy/capacity.py)."""
        self.refused = 0
        """New connections closed at once: the cap was reached and no connection could make
        room (none idle, no half head past the grace)."""
        self.cap_log = Throttle()
        """When ``connection_cap_reached`` was last logged."""
        self.bodies: dict[Client, RateClock] = {}
        """Clients whose request has a body rate clock, oldest first: from the first wait
        for the body's bytes until the body pump ends or the request is settled (the
        watch loop advances the clocks and judges those whose body is not whole yet)."""
        self.slow: dict[Client, None] = {}
        """Of those, the ones the last tick found slower than the minimum rate: the
        connection cap may close them for a new connection (lb/proxy/capacity.py)."""
        self.slow_bodies = 0
        """Connections closed for a request body too slow (``min_body_rate`` or the cap)."""
        self.slow_log = Throttle()
        """When ``request_body_too_slow`` was last logged."""
        self.readers: dict[Client, None] = {}
        """Clients the last tick found blocked on a response they take slower than the
        minimum rate, slowest first: the connection cap may close them
        (lb/proxy/capacity.py)."""
        self.blocked_writes = 0
        """Response writes the last tick found blocked on their client, whose rate clocks it
        judged (the tick grows with them)."""
        self.slow_reads = 0
        """Connections cut for a response taken too slowly (``min_response_rate`` or the
        cap)."""
        self.read_log = Throttle()
        """When ``response_read_too_slow`` was last logged."""
        self.tls_failed = 0
        """Client TLS handshakes that failed (plain HTTP to an HTTPS listener included)."""
        self.tls_plain = 0
        """Of those, plain HTTP requests sent to an HTTPS listener (answered 400)."""
        self.tls_log = Throttle()
        """When ``client_tls_failed`` was last logged."""
        self.rid_prefix = rid_prefix
        self.rid_counter = itertools.count(1)
        self.trust_key: object = None
        self.trusted_nets: tuple[IPv4Network | IPv6Network, ...] = ()
        self.trusted_cache: dict[str, bool] = {}
        self.names_key: object = None
        self.names: tuple[bytes, bytes] = (b"", b"")
        self.budgets: dict[str, RetryBudget] = {}
        """Per load balancer name: its ``retry_on`` budget (``lb/core/budget.py``)."""
        self.retry_key: object = None
        self.retry_lbs: frozenset[str] = frozenset()
        """The load balancers whose requests ``retry_on`` may retry (for ``retry_key``)."""
        self.targets_key: object = None
        self.targets: dict[tuple[str, str, str], Target] = {}
        """Per endpoint key and client Host: where its attempts go, for ``targets_key``
        (the ``connect_to`` mapping in force)."""

    @property
    def max_connections(self) -> int:
        """The connection cap in force: ``limits.max_connections``, else derived from the
        file-descriptor limit (:func:`lb.proxy.capacity.default_max_connections`)."""
        return self.engine.config.engine.limits.max_connections or self.default_cap
