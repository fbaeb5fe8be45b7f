"""The proxy's public entry: :class:`ProxyServer` and :func:`serve_proxy`.

The work is done by modules with one job each (docs/proxy.md, "Modules"):
:mod:`lb.proxy.connection` (accept, the connection cap, keep-alive, drain),
:mod:`lb.proxy.exchange` (one request: steer, attempts, relay), :mod:`lb.proxy.body` (the
request body: buffer or pump), :mod:`lb.proxy.splice` (WebSocket), :mod:`lb.proxy.replies`
(the proxy's own answers), all around one :class:`~lb.proxy.state.Exchange` per request
whose lifecycle is the state machine of :mod:`lb.proxy.state`.

Theory of operation
===================

One trio task per client connection runs a keep-alive loop: read a request head, steer it
(:meth:`steering.Router.decide`), forward it over a pooled upstream connection
(:mod:`lb.proxy.upstream`), relay the response, repeat.  Bodies are streamed both ways in the
chunks they arrive in; only a request body of at most ``REPLAY_BODY_BYTES`` (lb/proxy/body.py)
is read whole before it goes upstream, so that it can be sent again on a fresh connection.
A request body that is still arriving when the head goes upstream is pumped by a task of its
own (in the connection's nursery, under its watchdog) while the exchange waits for the
response head, as Go's transport does: an upstream that answers before it has read the body
(a 413, a 401) and then closes or stops reading is relayed, and the client connection closes
afterwards with the rest of the body unread.  Requests whose body is complete on arrival (and
bodiless ones) take no task.

Per request the hot path is: one ``scan_request`` pass over the headers, one steering
decision, one header rewrite, one write upstream (head and small body together), one write
downstream (head and small body together), and two deadline moves (float stores:
lb/proxy/watchdog.py).  Metrics and logs happen in the caller's
:class:`~lb.proxy.hooks.ProxyHooks`, fed one record per request.

Timeouts (``engine.limits``), all as inactivity deadlines on one watchdog cancel scope per
connection (lb/proxy/watchdog.py), so they cost a float store rather than a new scope per
I/O call, and fire about one watchdog tick late; the request's phase
(:class:`~lb.proxy.state.Phase`) says which one fired:

* waiting for a request head, reading a request body and writing to the client:
  ``idle_timeout`` (idle connections close, a stalled body gets 408); a body that trickles
  in below ``min_body_rate`` (judged only at the connection cap when 0) gets 408 too, and
  a client taking a response write below ``min_response_rate`` (the same) is cut;
* TCP connect plus TLS handshake: ``connect_timeout`` (522);
* waiting for the response head, reading the response body and writing upstream:
  ``request_timeout`` (524 before the response head; the connection is cut after it).
* a WebSocket (after a 101): ``idle_timeout`` of silence in both directions, the deadline
  pushed ahead on every chunk either way; then both connections are cut.

The Host header is normalised before steering (:func:`lb.config.hosts.normalise_host`:
lowercase, no port, no trailing dot); a Host that is not a host name or IP address gets 400,
since it could otherwise become the upstream TLS server name.

Failures and retries (docs/proxy.md, "Failures"): the attempt policy decides, the one the
simulator follows too (:func:`lb.core.attempts.next_step`):

* a connect failure is classified 521/522/523/525/526 and, for a failover code, handed to
  :meth:`steering.Router.retry`; when it answers with a decision, one more attempt goes there
  (R42, R43).  Nothing of the request has been sent at that point, so this is safe for any
  method;
* a *reused* pooled connection that breaks before any response byte is retried once on a
  fresh connection to the same endpoint when the request can be sent again: its whole body
  was buffered (small bodies are read whole first, ``REPLAY_BODY_BYTES``; bodiless requests
  count), or no body byte was taken yet and the method is idempotent (or carries an
  Idempotency-Key) or nothing was written (Go's net/http rule).  It can only come first: a
  zero-downtime failover is always the last retry, on a fresh connection;
  ``record.retry_status`` is the status that triggered the last retry;
* anything else is answered as it is, with the status mapped by ``error_style``.
* an upstream response head the writer refuses to relay gets 502 (the connection closes); a failure
  no handler answers is logged at warning level, as it leaves the client without a status.

Shutdown: :meth:`ProxyServer.shutdown` stops accepting, closes connections that wait for a
next request, lets in-flight requests finish (their responses carry ``Connection: close``),
and after ``engine.drain_timeout`` ends what is left: a request whose response has not
started gets a 503 with ``Connection: close``, anything else is cut (those records get
error ``shutdown``); ``DRAIN_GRACE`` later every connection left is cancelled.
"""

from __future__ import annotations

import random
import secrets
import ssl
from collections.abc import Sequence

import trio

from lb.engine import Engine
from lb.proxy.capacity import default_max_connections, raise_fd_limit
from lb.proxy.connection import (
    accept_loop,
    close_idle_clients,
    close_listener,
    drain_deadline,
    sweep_loop,
    watch_loop,
)
from lb.proxy.hooks import ProxyHooks
from lb.proxy.listeners import AnyListener, bound_address, open_listeners
from lb.proxy.state import Shared
from lb.proxy.upstream import UpstreamPool

__all__ = ["ProxyServer", "serve_proxy"]

DRAIN_GRACE = 1.0
"""Seconds after ``engine.drain_timeout`` for the 503s of requests still in flight to be
written; then every connection left is cut."""


class ProxyServer:
    """The proxy data path for one :class:`~lb.engine.Engine`.

    Args:
        engine: health, steering and live counters; its configuration is re-read per request,
            so a reload (``engine.reconfigure``) applies to the next request.
        hooks: callbacks for records, retries and connection counts.
        rng: randomness for steering (seed it for repeatable tests).
        upstream_ssl: verifies upstream certificates; default
            ``ssl.create_default_context()`` (system CA bundle).

    Pooled connections idle longer than ``engine.upstream_idle_timeout`` are not reused.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        hooks: ProxyHooks | None = None,
        rng: random.Random | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        if upstream_ssl is None:
            upstream_ssl = ssl.create_default_context()
            upstream_ssl.set_alpn_protocols(["http/1.1"])
        pool = UpstreamPool(
            engine.live,
            upstream_ssl,
            connect_timeout=engine.config.engine.limits.connect_timeout,
            idle_timeout=engine.config.engine.upstream_idle_timeout,
        )
        self._shared = Shared(
            engine,
            hooks if hooks is not None else ProxyHooks(),
            rng if rng is not None else random.Random(),
            pool,
            secrets.token_hex(6),
        )
        self.addresses: list[tuple[str, int]] = []
        self._stop = trio.Event()

    @property
    def engine(self) -> Engine:
        return self._shared.engine

    @property
    def hooks(self) -> ProxyHooks:
        return self._shared.hooks

    @property
    def rng(self) -> random.Random:
        return self._shared.rng

    @property
    def pool(self) -> UpstreamPool:
        """The pooled upstream connections (``pool.opened`` counts dials)."""
        return self._shared.pool

    @property
    def draining(self) -> bool:
        """True from :meth:`shutdown` on (responses carry ``Connection: close``)."""
        return self._shared.draining

    @property
    def shed(self) -> int:
        """Idle connections, connections stuck in a head past the grace, with a request
        body too slow, or blocked on a client taking its response too slowly, closed to
        make room for a new one (connection cap)."""
        return self._shared.shed

    @property
    def refused(self) -> int:
        """New connections closed at once: the cap was reached and none could be shed."""
        return self._shared.refused

    @property
    def partial_heads(self) -> int:
        """Client connections holding part of a request head."""
        return len(self._shared.heads)

    @property
    def request_bodies(self) -> int:
        """Requests with a request body rate clock: from the first wait for the body's
        bytes until the body pump ends or the request is settled (the watch loop judges
        those whose body is not whole yet)."""
        return len(self._shared.bodies)

    @property
    def slow_candidates(self) -> int:
        """Requests whose body the last watchdog tick found slower than the minimum rate
        and that are still open: the connection cap closes them after idle connections and
        overdue heads (only with ``limits.min_body_rate`` 0; else they are closed at once)."""
        return len(self._shared.slow)

    @property
    def slow_bodies(self) -> int:
        """Connections closed because their request body came too slowly, by
        ``limits.min_body_rate`` or at the connection cap."""
        return self._shared.slow_bodies

    @property
    def slow_readers(self) -> int:
        """Responses the last watchdog tick found blocked on a client taking them slower
        than the minimum rate: the connection cap closes them after slow bodies (only with
        ``limits.min_response_rate`` 0; else they are cut at once)."""
        return len(self._shared.readers)

    @property
    def slow_reads(self) -> int:
        """Connections cut because their client took the response too slowly, by
        ``limits.min_response_rate`` or at the connection cap."""
        return self._shared.slow_reads

    @property
    def tls_failed(self) -> int:
        """Client TLS handshakes that failed, plain HTTP sent to an HTTPS listener included."""
        return self._shared.tls_failed

    @property
    def plain_http_on_tls(self) -> int:
        """Plain HTTP requests sent to an HTTPS listener (answered 400)."""
        return self._shared.tls_plain

    @property
    def connections(self) -> int:
        """Client connections open (counted against ``limits.max_connections``)."""
        return len(self._shared.clients)

    @property
    def idle_connections(self) -> int:
        """Client connections waiting for the first byte of a request."""
        return len(self._shared.idle)

    @property
    def max_connections(self) -> int:
        """The connection cap in force: ``limits.max_connections``, else derived from the
        file-descriptor limit (:func:`lb.proxy.capacity.default_max_connections`)."""
        return self._shared.max_connections

    @property
    def active_requests(self) -> int:
        """Requests read and not yet settled (drain progress; tests wait for 0)."""
        return sum(1 for c in self._shared.clients if c.exchange is not None)

    def shutdown(self) -> None:
        """Stop accepting and drain (see the module docstring).  Safe to call twice."""
        self._shared.draining = True
        self._stop.set()
        close_idle_clients(self._shared)

    async def serve(
        self,
        listeners: Sequence[AnyListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve until :meth:`shutdown`; then drain and return."""
        shared = self._shared
        settings = shared.engine.config.engine
        shared.default_cap = default_max_connections(raise_fd_limit())
        if listeners is None:
            listeners = await open_listeners(settings.listen, reuse_port=settings.workers > 1)
        self.addresses = [bound_address(listener) for listener in listeners]
        try:
            async with trio.open_nursery() as clients:
                clients.start_soon(watch_loop, shared)
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(accept_loop, shared, listener, clients)
                    acceptors.start_soon(sweep_loop, shared)
                    task_status.started(list(self.addresses))
                    await self._stop.wait()
                    acceptors.cancel_scope.cancel()
                for listener in listeners:
                    close_listener(listener)
                close_idle_clients(shared)
                if not shared.clients:
                    shared.drained.set()  # nothing to drain: watch_loop ends too
                drain = shared.engine.config.engine.drain_timeout
                clients.start_soon(drain_deadline, shared, drain)
                # The last resort, should a 503 not get out within the grace period.
                clients.cancel_scope.deadline = trio.current_time() + drain + DRAIN_GRACE
        finally:
            # Synchronous on purpose: under cancellation every await would raise at once.
            shared.draining = True
            shared.pool.close_all()
            for listener in listeners:
                close_listener(listener)


async def serve_proxy(
    engine: Engine,
    listeners: Sequence[AnyListener] | None = None,
    *,
    hooks: ProxyHooks | None = None,
    rng: random.Random | None = None,
    upstream_ssl: ssl.SSLContext | None = None,
    shutdown: trio.Event | None = None,
    server: ProxyServer | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until ``shutdown`` is set (or the task is cancelled).

    With ``listeners`` None, listeners are opened from ``engine.config.engine.listen`` (port
    0 allowed).  ``task_status.started`` receives the bound ``(host, port)`` pairs.  Setting
    ``shutdown`` stops accepting and drains in-flight requests for up to
    ``engine.drain_timeout`` seconds; then this returns.  For more control (shutdown from a
    signal handler, pool statistics), use :class:`ProxyServer` directly, or pass ``server``
    (made by the caller for ``engine``; ``hooks``, ``rng`` and ``upstream_ssl`` are then its
    own): a reload swaps its ``pool.ssl_context``.
    """
    if server is None:
        server = ProxyServer(engine, hooks=hooks, rng=rng, upstream_ssl=upstream_ssl)
    async with trio.open_nursery() as nursery:
        if shutdown is not None:

            async def watch(event: trio.Event) -> None:
                await event.wait()
                server.shutdown()

            nursery.start_soon(watch, shutdown)
        await server.serve(listeners, task_status=task_status)
        nursery.cancel_scope.cancel()
