"""The downstream side: accept clients, read HTTP/1.1 requests with h11, steer, forward.

Theory of operation
===================

One trio task per client connection runs a keep-alive loop: read a request head, steer it
(:meth:`steering.Router.decide`), forward it over a pooled upstream connection
(:mod:`lb.proxy.upstream`), relay the response, repeat.  Bodies are streamed both ways in the
chunks they arrive in; only a request body of at most ``REPLAY_BODY_BYTES`` is read whole
before it goes upstream, so that it can be sent again on a fresh connection.  A request body
that is still arriving when the head goes upstream is pumped by a task of its own (in the
connection's nursery, under its watchdog) while the exchange waits for the response head, as
Go's transport does: an upstream that answers before it has read the body (a 413, a 401) and
then closes or stops reading is relayed, and the client connection closes afterwards with the
rest of the body unread.  Requests whose body is complete on arrival (and bodiless ones) take
no task.

Per request the hot path is: one ``scan_request`` pass over the headers, one steering
decision, one header rewrite, one write upstream (head and small body together), one write
downstream (head and small body together), and three deadline updates.  Metrics and logs
happen in the caller's :class:`~lb.proxy.hooks.ProxyHooks`, fed one record per request.

Timeouts (``engine.limits``), all as inactivity deadlines on one watchdog cancel scope per
request, so they cost a deadline update rather than a new scope per I/O call:

* waiting for a request head, reading a request body and writing to the client:
  ``idle_timeout`` (idle connections close, a stalled body gets 408);
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
* an upstream response head h11 refuses to relay gets 502 (the connection closes); a failure
  no handler answers is logged at warning level, as it leaves the client without a status.

Shutdown: :meth:`ProxyServer.shutdown` stops accepting, closes connections that wait for a
next request, lets in-flight requests finish (their responses carry ``Connection: close``),
and after ``engine.drain_timeout`` ends what is left: a request whose response has not
started gets a 503 with ``Connection: close``, anything else is cut (those records get
error ``shutdown``); ``DRAIN_GRACE`` later every connection left is cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import random
import re
import secrets
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypedDict, cast

import h11
import trio

from lb.config.hosts import normalise_host
from lb.config.model import Engine as EngineSettings
from lb.config.model import FixedResponse, Limits
from lb.core.attempts import Action, Body, Retry, next_step
from lb.core.snapshot import EndpointView
from lb.engine import Engine
from lb.proxy import errors
from lb.proxy.capacity import default_max_connections, raise_fd_limit
from lb.proxy.errors import UpstreamError, error_body, failure_of, public_status, reason_phrase
from lb.proxy.headers import (
    RequestFacts,
    affinity_cookie,
    client_address,
    colo_from_ray,
    cookie_value,
    parse_cookies,
    replayable,
    response_headers,
    safe_header_name,
    safe_header_value,
    scan_request,
    upstream_headers,
)
from lb.proxy.hooks import Attempt, ProxyHooks, RequestRecord
from lb.proxy.listeners import AnyListener, bound_address, is_https, open_listeners
from lb.proxy.upstream import UpstreamConnection, UpstreamPool, target_for
from lb.proxy.urls import BadTargetError, origin_form
from steering.affinity import COOKIE_NAME, expires_of
from steering.geo import client_country
from steering.types import Decision, Request

__all__ = ["ProxyServer", "serve_proxy"]

log = logging.getLogger("lb.proxy")

RECEIVE_SIZE = 65536
REPLAY_BODY_BYTES = 65536
"""A request body with a Content-Length up to this is read whole before the first attempt, so
that the request can be sent again if a reused connection breaks (``lb/core/attempts.py``);
larger bodies, chunked ones still arriving and ``Expect: 100-continue`` ones are streamed."""
LINGER_SECONDS = 2.0
"""How long a connection closed with an unread request body is drained first, so that the
client reads our 4xx instead of a TCP reset."""
SWEEP_INTERVAL = 5.0
DRAIN_GRACE = 1.0
"""Seconds after ``engine.drain_timeout`` for the 503s of requests still in flight to be
written; then every connection left is cut."""
_CONTENT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
_EOM = h11.EndOfMessage()
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_VERSIONS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_NOT_PROXIED = frozenset({b"CONNECT", b"TRACE"})
"""Methods a reverse proxy does not forward: 501 and close (docs/proxy.md, "Refused")."""
_HEAD_END = re.compile(rb"\n\r?\n")
"""The blank line that ends a request head (h11 accepts bare LF line ends too)."""
MAX_CHUNK_SIZE = (1 << 63) - 1
"""A larger chunk size is malformed (it overflows a signed 64-bit length): 400."""


class _Parsed(TypedDict, total=False):
    _parsed: bool


def _pre_validated() -> _Parsed:
    """``{"_parsed": True}`` if this h11 takes it, else ``{}``.

    ``_parsed`` is h11's private switch (0.14 to 0.16 at least) for events built from values
    it already validated; it saves ~9 us per request.  An h11 without it gets the public
    constructor, which validates again: slower, never broken.
    """
    try:
        h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")], _parsed=True)
    except TypeError:  # pragma: no cover - an h11 without the switch
        return {}
    return {"_parsed": True}


_PRE_VALIDATED = _pre_validated()


class _ClientError(Exception):
    """The client side of an exchange failed; ``status`` 0 means no answer is possible."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_TOO_MANY_HEADERS = h11.RemoteProtocolError("too many header lines", error_status_hint=431)


class _HeadLines:
    """Counts the lines of a request head as its bytes arrive (see ``_read_head``)."""

    __slots__ = ("done", "limit", "lines", "tail")

    def __init__(self, max_headers: int) -> None:
        self.limit = max_headers + 1  # the request line
        self.lines = 0
        self.tail = b""
        self.done = False

    def feed(self, data: bytes) -> bool:
        """Count the head lines in ``data``; True once there are too many."""
        if self.done or not data:
            return False
        buf = self.tail + data
        m = _HEAD_END.search(buf)
        stop = len(buf) if m is None else m.start() + 1
        if stop > len(self.tail):
            self.lines += buf.count(b"\n", len(self.tail), stop)
        self.done = m is not None
        self.tail = buf[-2:]
        return self.lines > self.limit


class _BodyPump:
    """The task that streams the rest of a request body upstream (:meth:`ProxyServer._forward`)."""

    __slots__ = ("done", "error", "head_wait", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.error: Exception | None = None
        self.head_wait: trio.CancelScope | None = None
        """The exchange's wait for the response head, while it lasts."""


class _Flow:
    """Mutable state of one request, shared between the exchange and its timeout handler."""

    __slots__ = (
        "body",
        "body_buffered",
        "body_consumed",
        "endpoint",
        "phase",
        "pump",
        "record",
        "req_done",
        "responded",
        "sent_any",
        "started",
        "target",
        "tasks",
        "trusted",
        "up",
        "watchdog",
    )

    def __init__(
        self,
        record: RequestRecord,
        watchdog: trio.CancelScope,
        started: float,
        tasks: trio.Nursery | None = None,
    ) -> None:
        self.record = record
        self.started = started
        self.watchdog = watchdog
        self.tasks = tasks
        """Where a body pump runs: the connection's nursery, inside its watchdog."""
        self.pump: _BodyPump | None = None
        self.phase = ""
        """What the watchdog deadline currently guards: ``client`` or ``upstream``."""
        self.up: UpstreamConnection | None = None
        self.endpoint: EndpointView | None = None
        """Set while ``live.started`` is unmatched by ``live.finished``."""
        self.body: list[h11.Data] = []
        """Body events taken from the client and not sent yet, or, when ``body_buffered``,
        the whole body, kept to send it again."""
        self.body_buffered = False
        """The whole body was in hand before the first attempt (a bodiless request too)."""
        self.body_consumed = False
        self.req_done = False
        self.sent_any = False
        self.responded = False
        self.trusted = False
        self.target = b""
        """The origin-form target sent upstream; empty when the request-target is refused."""

    def arm(self, phase: str, seconds: float) -> None:
        """Push the inactivity deadline ``seconds`` ahead for an operation on ``phase``."""
        self.phase = phase
        self.watchdog.deadline = trio.current_time() + seconds


class _Client:
    """One client connection: its watchdog (the only cancel scope per connection) and the
    request in progress, which the connection loop reports when it is over.  While it waits
    for the first byte of a request it is in ``ProxyServer._idle`` (shutdown and the
    connection cap close those)."""

    __slots__ = ("flow", "tasks", "watchdog")

    def __init__(self) -> None:
        self.watchdog = trio.CancelScope()
        self.tasks: trio.Nursery | None = None
        """The connection's nursery (inside the watchdog), for request body pumps."""
        self.flow: _Flow | None = None


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
        self.engine = engine
        self.hooks = hooks if hooks is not None else ProxyHooks()
        self.rng = rng if rng is not None else random.Random()
        if upstream_ssl is None:
            upstream_ssl = ssl.create_default_context()
            upstream_ssl.set_alpn_protocols(["http/1.1"])
        limits = engine.config.engine.limits
        self.pool = UpstreamPool(
            engine.live,
            upstream_ssl,
            connect_timeout=limits.connect_timeout,
            idle_timeout=engine.config.engine.upstream_idle_timeout,
        )
        self.addresses: list[tuple[str, int]] = []
        self.draining = False
        self._stop = trio.Event()
        self._drained = trio.Event()
        """Set when the drain finds no client connection left."""
        self._expired = False
        """The drain deadline passed: what is still in flight is answered 503 and closed."""
        self._clients: set[_Client] = set()
        self._idle: dict[_Client, None] = {}
        """Clients waiting for the first byte of a request, longest-waiting first."""
        self._default_cap = default_max_connections(0)
        self.shed = 0
        """Idle connections closed to make room for a new one (connection cap)."""
        self.refused = 0
        """New connections closed at once: the cap was reached and no connection was idle."""
        self._cap_logged = -math.inf
        self._rid_prefix = secrets.token_hex(6)
        self._rid_counter = itertools.count(1)
        self._trust_key: object = None
        self._trusted_nets: tuple[IPv4Network | IPv6Network, ...] = ()
        self._trusted_cache: dict[str, bool] = {}
        self._names_key: object = None
        self._names: tuple[bytes, bytes] = (b"", b"")

    @property
    def connections(self) -> int:
        """Client connections open (counted against ``limits.max_connections``)."""
        return len(self._clients)

    @property
    def idle_connections(self) -> int:
        """Client connections waiting for the first byte of a request."""
        return len(self._idle)

    @property
    def max_connections(self) -> int:
        """The connection cap in force: ``limits.max_connections``, else derived from the
        file-descriptor limit (:func:`lb.proxy.capacity.default_max_connections`)."""
        return self.engine.config.engine.limits.max_connections or self._default_cap

    @property
    def active_requests(self) -> int:
        """Requests read and not yet settled (drain progress; tests wait for 0)."""
        return sum(1 for c in self._clients if c.flow is not None)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Stop accepting and drain (see the module docstring).  Safe to call twice."""
        self.draining = True
        self._stop.set()
        self._close_idle_clients()

    def _close_idle_clients(self) -> None:
        for client in list(self._idle):
            client.watchdog.cancel()

    async def serve(
        self,
        listeners: Sequence[AnyListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve until :meth:`shutdown`; then drain and return."""
        settings = self.engine.config.engine
        self._default_cap = default_max_connections(raise_fd_limit())
        if listeners is None:
            listeners = await open_listeners(settings.listen, reuse_port=settings.workers > 1)
        self.addresses = [bound_address(listener) for listener in listeners]
        try:
            async with trio.open_nursery() as clients:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept_loop, listener, clients)
                    acceptors.start_soon(self._sweep_loop)
                    task_status.started(list(self.addresses))
                    await self._stop.wait()
                    acceptors.cancel_scope.cancel()
                for listener in listeners:
                    _close_listener(listener)
                self._close_idle_clients()
                drain = self.engine.config.engine.drain_timeout
                clients.start_soon(self._drain_deadline, drain)
                # The last resort, should a 503 not get out within the grace period.
                clients.cancel_scope.deadline = trio.current_time() + drain + DRAIN_GRACE
        finally:
            # Synchronous on purpose: under cancellation every await would raise at once.
            self.draining = True
            self.pool.close_all()
            for listener in listeners:
                _close_listener(listener)

    async def _drain_deadline(self, seconds: float) -> None:
        """At the drain deadline, end every request still in flight with a 503 (where no
        response has started) and ``Connection: close``, rather than a bare close: a client
        can tell "shutting down, try again" from a crash."""
        if self._clients:
            with trio.move_on_after(seconds):
                await self._drained.wait()
        if not self._clients:
            return
        self._expired = True
        for client in list(self._clients):
            client.watchdog.cancel()

    async def _accept_loop(self, listener: AnyListener, clients: trio.Nursery) -> None:
        https = is_https(listener)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("accept failed (%s); pausing 0.1 s", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            if len(self._clients) >= self.max_connections and not self._shed_idlest():
                self.refused += 1
                self._log_cap()
                _close_now(stream)
                continue
            client = _Client()
            self._clients.add(client)  # now, so that the next accept already counts it
            clients.start_soon(self._serve_client, stream, https, client)

    def _shed_idlest(self) -> bool:
        """Close the client connection idle the longest to make room; False if none is."""
        client = next(iter(self._idle), None)
        if client is None:
            return False
        del self._idle[client]
        self._clients.discard(client)
        client.watchdog.cancel()
        self.shed += 1
        self._log_cap()
        return True

    def _log_cap(self) -> None:
        now = trio.current_time()
        if now - self._cap_logged >= SWEEP_INTERVAL:
            self._cap_logged = now
            log.warning(
                "connection_cap_reached max_connections=%d shed=%d refused=%d",
                self.max_connections,
                self.shed,
                self.refused,
            )

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            self.pool.sweep()

    # ------------------------------------------------------------------ one client

    async def _serve_client(self, stream: trio.abc.Stream, https: bool, client: _Client) -> None:
        """The keep-alive loop of one client connection; never raises.

        Every timeout of the connection is one deadline on ``client.watchdog``: pushed ahead
        before each wait (see the module docstring), handled here when it fires.
        """
        self.hooks.connection(1)
        linger = False
        conn: h11.Connection | None = None
        try:
            peer = _peer_ip(stream)
            limits = self.engine.config.engine.limits
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
            watchdog = client.watchdog
            with watchdog:
                async with trio.open_nursery() as client.tasks:
                    while not self.draining or conn.their_state is not h11.IDLE:
                        watchdog.deadline = trio.current_time() + limits.idle_timeout
                        event = await self._read_head(stream, conn, peer, client)
                        if event is None:
                            # Unread input after an answer of ours (a 400, a 431): drain it
                            # first, or the kernel's reset may destroy the answer.
                            linger = conn.their_state is h11.ERROR or conn.our_state not in (
                                h11.IDLE,
                                h11.CLOSED,
                            )
                            break
                        keep = await self._exchange(stream, conn, event, peer, https, client)
                        self._finish(client)
                        if not keep or conn.our_state is not h11.DONE:
                            linger = conn.their_state is h11.SEND_BODY
                            break
                        if conn.their_state is not h11.DONE:
                            linger = True
                            break
                        conn.start_next_cycle()
            if watchdog.cancelled_caught and client.flow is not None:
                await self._timed_out(stream, conn, client.flow)
        except Exception as exc:  # hostile input must never become a traceback to the client
            # Reaching this means a failure no handler above answered (the client saw a closed
            # connection, not a status): a bug or a degraded mode, so it is logged loudly.
            log.warning("client connection ended with %r", exc, exc_info=True)
        except BaseException:
            # A Cancelled (maybe in a group from the connection's nursery): only the
            # clients nursery cancels from outside, so the drain deadline passed.
            if client.flow is not None:
                client.flow.record.error = "shutdown"
            raise
        finally:
            self._finish(client)
            self._clients.discard(client)
            self._idle.pop(client, None)
            if self.draining and not self._clients:
                self._drained.set()
            try:
                await _close_client(stream, linger=linger)
            finally:
                # Under cancellation the await above raises at once (after closing the socket);
                # the count must still go down.
                self.hooks.connection(-1)

    def _finish(self, client: _Client) -> None:
        """Settle the request in progress: counters, upstream connection, report.

        Synchronous, so that it also runs under cancellation (shutdown past the drain
        deadline) and nothing leaks.
        """
        flow = client.flow
        if flow is None:
            return
        client.flow = None
        if flow.endpoint is not None:
            self.engine.live.finished(flow.endpoint)
            flow.endpoint = None
        if flow.up is not None:
            self.pool.discard(flow.up)
            flow.up = None
        record = flow.record
        record.duration = trio.current_time() - flow.started
        self.hooks.request_done(record)

    async def _read_head(
        self, stream: trio.abc.Stream, conn: h11.Connection, peer: str, client: _Client
    ) -> h11.Request | None:
        """The next request head, or None when the connection should close.

        Header lines are counted as the bytes arrive, before h11 parses the head, so that a
        head of thousands of tiny headers is refused (431) without the cost of parsing it.
        """
        first = True
        counter = _HeadLines(self.engine.config.engine.limits.max_headers)
        pipelined = conn.trailing_data[0] if conn.their_state is h11.IDLE else b""
        if pipelined and counter.feed(pipelined):
            await self._reject(stream, conn, _TOO_MANY_HEADERS, peer)
            return None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._reject(stream, conn, exc, peer)
                return None
            if event is h11.NEED_DATA:
                if first:
                    if self.draining and conn.their_state is h11.IDLE:
                        return None
                    self._idle[client] = None
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                finally:
                    self._idle.pop(client, None)
                first = False
                if counter.feed(cast(bytes, data)):
                    await self._reject(stream, conn, _TOO_MANY_HEADERS, peer)
                    return None
                conn.receive_data(cast(bytes, data))
                if not data and conn.their_state is not h11.IDLE:
                    return None  # EOF inside a head: nobody left to answer
                continue
            if type(event) is h11.Request:
                return event
            return None  # ConnectionClosed or PAUSED

    async def _reject(
        self, stream: trio.abc.Stream, conn: h11.Connection, exc: h11.RemoteProtocolError, peer: str
    ) -> None:
        """Answer a request h11 could not parse (400, 431 for a too-large head...).

        h11's only 501 for a request is a Transfer-Encoding other than ``chunked``; RFC 9112
        §6.3 makes a request whose last coding is not chunked a 400, and the proxy answers
        every such request 400 (docs/proxy.md, "Refused").
        """
        status = exc.error_status_hint
        if status == 501:
            status = 400
        record = RequestRecord(
            method="", host="", target="", client_ip=peer, datacenter="", request_id=""
        )
        record.error = "headers_too_large" if status == 431 else "bad_request"
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = b"%d %s\n" % (status, reason_phrase(status))
            try:
                data = _simple_response(conn, status, body, close=True)
                with trio.move_on_after(self.engine.config.engine.limits.idle_timeout):
                    await stream.send_all(data)
                record.status = status
            except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self.hooks.request_done(record)

    # ------------------------------------------------------------------ one request

    async def _exchange(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        event: h11.Request,
        peer: str,
        https: bool,
        client: _Client,
    ) -> bool:
        """Serve one request; True when the connection may carry another one.

        The request's state goes to ``client.flow``; the caller settles and reports it.
        """
        t0 = trio.current_time()
        engine = self.engine
        settings = engine.config.engine
        ip_name, dc_name = self._header_names(settings)
        facts = scan_request(event.headers, ip_name, dc_name)
        trusted = self._is_trusted(peer, settings)
        if trusted:
            client_ip = client_address(facts.client_ip, peer)
            datacenter = colo_from_ray(facts.ray) or settings.datacenter
        else:
            client_ip, datacenter = peer, settings.datacenter
        rid = facts.request_id or f"{self._rid_prefix}{next(self._rid_counter):x}".encode()
        try:
            target, authority = origin_form(event.target)
        except BadTargetError:
            target, authority = b"", None
        if authority is not None:
            # RFC 9112 §3.2.2: the URL's authority replaces the Host header, for steering,
            # the endpoint's Host (unless it sets one) and X-Forwarded-Host alike.
            facts.host = authority
        host = facts.host.decode("latin-1")
        record = RequestRecord(
            method=event.method.decode("latin-1"),
            host=host,
            target=(target or event.target).decode("latin-1"),
            client_ip=client_ip,
            datacenter=datacenter,
            request_id=rid.decode("latin-1"),
        )
        flow = _Flow(record, client.watchdog, t0, client.tasks)
        client.flow = flow
        flow.trusted = trusted
        flow.target = target
        if not facts.has_body:
            # h11 reports the end of a bodiless request as a separate event: take it now, so
            # that every later step sees the request as complete.
            flow.req_done = type(conn.next_event()) is h11.EndOfMessage
        try:
            keep = await self._steer_and_forward(
                stream, conn, event, facts, flow, peer, https, client_ip, datacenter, rid
            )
        except _ClientError as abort:
            keep = await self._client_abort(stream, conn, flow, abort)
        finally:
            if flow.pump is not None:
                await self._stop_pump(flow)
        return keep

    async def _steer_and_forward(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        event: h11.Request,
        facts: RequestFacts,
        flow: _Flow,
        peer: str,
        https: bool,
        client_ip: str,
        datacenter: str,
        rid: bytes,
    ) -> bool:
        engine = self.engine
        settings = engine.config.engine
        record = flow.record
        style = settings.error_style
        limits = settings.limits
        if event.method in _NOT_PROXIED:
            # CONNECT would turn the proxy into an open tunnel, TRACE would reflect headers
            # added on the way (a 200 with an affinity cookie for CONNECT, before).
            record.error = "method_not_supported"
            return await self._reply(stream, conn, flow, 501, error_body(501, "plain"), close=True)
        if facts.ambiguous_framing:
            record.error = "ambiguous_framing"
            body = b"400 Bad Request: both Content-Length and Transfer-Encoding\n"
            return await self._reply(stream, conn, flow, 400, body, close=True)
        if not flow.target:
            record.error = "bad_target"
            body = b"400 Bad Request: request-target is not a path or an http(s) URL\n"
            return await self._reply(stream, conn, flow, 400, body, close=True)
        if (
            facts.head_bytes + len(event.target) > limits.max_header_bytes
            or len(event.headers) > limits.max_headers
        ):
            # h11 enforces its limit only on a head still incomplete in its buffer.
            record.error = "headers_too_large"
            body = error_body(431, "plain")
            return await self._reply(stream, conn, flow, 431, body, close=True)
        if facts.chunked and not flow.req_done:
            problem = _first_chunk_problem(conn, limits.max_body_bytes)
            if problem is not None:
                record.error = problem.reason
                return await self._reply(
                    stream, conn, flow, problem.status, error_body(problem.status, "plain")
                )
        if (
            facts.content_length is not None
            and facts.content_length > settings.limits.max_body_bytes
        ):
            record.error = "body_too_large"
            return await self._reply(stream, conn, flow, 413, error_body(413, "plain"))
        router = engine.router
        host = record.host
        name = normalise_host(host) if host else ""
        if name is None:
            # Before steering: such a Host could still match a load balancer (the lookup is
            # lenient), then fail as the upstream TLS server name (``a.example..``).
            record.error = "bad_host"
            body = b"400 Bad Request: invalid Host header\n"
            return await self._reply(stream, conn, flow, 400, body, close=True)
        # Header affinity needs every request header and cookie; the router reads them only
        # for a load balancer with ``session_affinity: header``, so they are built on demand.
        req = Request(
            host=name,
            client_ip=client_ip,
            datacenter=datacenter,
            country=_client_country(event.headers, settings) if flow.trusted else "",
            cookie=cookie_value(facts.cookie, COOKIE_NAME) if facts.cookie else None,
            headers=_LazyHeaders(event.headers),
            cookies=_LazyCookies(facts.cookie),
            now=trio.current_time(),
            wall=time.time(),
            method=record.method,
            uri=record.target,  # origin-form; the router normalizes it for rules
            version=_VERSIONS.get(event.http_version, "HTTP/1.1"),
        )
        live = engine.live
        decision = router.decide(req, self.rng, live)
        self.hooks.decision(decision)
        record.load_balancer = decision.load_balancer.name if decision.load_balancer else None
        record.decision = decision.reason
        record.affinity = decision.affinity
        if decision.fixed is not None:
            return await self._fixed_response(stream, conn, flow, decision.fixed)
        if decision.endpoint is None:
            status = decision.status or errors.NO_POOL
            if status == 404:
                record.error = "unknown_host"
                body = b"404 Not Found: no load balancer answers for this host\n"
                return await self._reply(stream, conn, flow, 404, body)
            record.error = "no_pool"
            return await self._reply(
                stream, conn, flow, public_status(status, style), error_body(status, style)
            )

        retries: list[Retry] = []
        fresh = False
        connect_to = engine.config.connect_to
        pool = self.pool
        pool.connect_timeout = settings.limits.connect_timeout  # follows reloads
        pool.idle_timeout = settings.upstream_idle_timeout
        if flow.req_done:
            flow.body_buffered = True  # bodiless: nothing to wait for (the common case)
        else:
            await self._buffer_body(stream, conn, flow, facts)
        while True:
            endpoint = decision.endpoint
            assert endpoint is not None
            target = target_for(endpoint, host, connect_to)
            up = None if fresh else pool.checkout(target)
            attempt = Attempt(
                pool=endpoint.pool, endpoint=endpoint.key, status=0, reused=up is not None
            )
            record.attempts.append(attempt)
            record.pool, record.endpoint = endpoint.pool, endpoint.key
            record.tunnel_id = endpoint.tunnel_id
            live.started(endpoint)
            flow.endpoint = endpoint
            try:
                if up is None:
                    flow.phase = "connect"
                    flow.watchdog.deadline = math.inf
                    up = await pool.connect(target)
                flow.up = up
                response = await self._forward(
                    stream, conn, event, facts, flow, up, target.host, peer, https, client_ip, rid
                )
            except UpstreamError as err:
                await self._stop_pump(flow)  # before the checks: it may have taken more body
                attempt.status, attempt.error = err.status, err.reason
                live.finished(endpoint)
                flow.endpoint = None
                if flow.up is not None:
                    pool.discard(flow.up)
                    flow.up = None
                # What follows is the attempt policy's to say (lb/core/attempts.py; the table
                # is in docs/proxy.md, "Retries"), the simulator's too.
                step = next_step(
                    failure_of(err),
                    reused=attempt.reused,
                    body=_body_state(flow),
                    sent=flow.sent_any,
                    replayable=replayable(event.method, facts),
                    retries=retries,
                    failover_codes=settings.zero_downtime_failover_codes,
                )
                kind = step.retry
                retry = None
                if step.action is Action.FAILOVER:
                    retry = router.retry(decision, req, self.rng, live, status=step.status)
                    if retry is None:
                        kind = None  # no healthy alternate: the failure is the answer
                if kind is not None:
                    retries.append(kind)
                    fresh = True  # every retry goes out on a fresh connection
                    record.retried = kind.value
                    record.retry_status = step.status
                    self.hooks.retry(kind.value, attempt)
                    if retry is not None:
                        decision = retry
                        self.hooks.decision(retry)
                        record.decision = retry.reason
                    continue
                record.error = err.reason
                status = public_status(step.status, style)
                return await self._reply(stream, conn, flow, status, error_body(step.status, style))
            attempt.status = response.status_code
            record.upstream_status = response.status_code
            up.note_response(response.headers)
            try:
                return await self._relay(stream, conn, facts, flow, up, response, decision, https)
            except UpstreamError as err:
                # h11 refused the upstream head (or the 101): nothing reached the client yet
                # unless ``responded``; answer 502 on a connection that closes afterwards.
                attempt.error = err.reason
                record.error = err.reason
                if flow.responded:
                    return False
                return await self._bad_gateway(stream, event, flow)

    # ------------------------------------------------------------------ upstream exchange

    async def _forward(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        event: h11.Request,
        facts: RequestFacts,
        flow: _Flow,
        up: UpstreamConnection,
        host: str,
        peer: str,
        https: bool,
        client_ip: str,
        rid: bytes,
    ) -> h11.Response | h11.InformationalResponse:
        """Send the request (head and streamed body); return the response head, which may
        come while the body is still being sent (see below)."""
        limits = self.engine.config.engine.limits
        ip_name = self._names[0]
        # h11 would run its header regexes over every header again on send (a measurable share
        # of the request cost); the events are built with ``_parsed=True`` instead (see
        # _PRE_VALIDATED), which is safe because every value is either from h11's own parser
        # (client and upstream heads), generated here (IPs, ids, cookies), or from the
        # configuration and checked once here: the endpoint Host and the client-IP header name.
        if not safe_header_value(host) or not safe_header_name(ip_name):
            raise UpstreamError(errors.BAD_GATEWAY, "bad_config")
        out_headers = upstream_headers(
            event.headers,
            facts,
            host=host.encode("latin-1"),
            peer_ip=peer.encode("latin-1"),
            client_ip=client_ip.encode("latin-1"),
            client_ip_name=ip_name,
            proto=b"https" if https else b"http",
            trusted=flow.trusted,
            request_id=rid,
        )
        uh = up.h11
        ustream = up.stream
        try:
            pending = [
                _sent(
                    uh.send(
                        h11.Request(
                            method=event.method,
                            target=flow.target,
                            headers=out_headers,
                            **_PRE_VALIDATED,  # every name and value is checked: see above
                        )
                    )
                )
            ]
        except h11.LocalProtocolError as exc:
            raise _ClientError(400, "bad_request") from exc
        body = flow.body
        if body:
            pending.extend([_up_send(uh, ev) for ev in body])
            if not flow.body_buffered:
                flow.body = []  # streamed from here on: these bytes are gone once sent
        if not flow.req_done:
            more: list[h11.Data] = []
            self._take_body(conn, flow, more, limits.max_body_bytes)
            pending.extend([_up_send(uh, ev) for ev in more])
        if flow.req_done:
            pending.append(_up_send(uh, _EOM))
        await self._send_up(ustream, pending, flow, limits.request_timeout)
        if flow.req_done:
            return await self._response_head(uh, ustream, facts)
        # The rest of the body is still on its way from the client.  It is pumped upstream by
        # a task of its own while this one waits for the response head, as Go's transport
        # does: an upstream may answer before it has read the body (a 413, a 401, a redirect)
        # and then stop reading or close, and that answer is relayed rather than turned into
        # a 524 or a 502.  The client is told to continue first (Expect: 100-continue), so
        # that the pump never writes to the client while the response may be relayed.
        if conn.they_are_waiting_for_100_continue:
            flow.arm("client", limits.idle_timeout)
            continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            try:
                await stream.send_all(_sent(conn.send(continue_)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientError(0, "client_disconnected") from exc
        assert flow.tasks is not None
        pump = _BodyPump()
        flow.pump = pump
        flow.tasks.start_soon(self._pump_body, stream, conn, flow, up, pump)
        with trio.CancelScope() as pump.head_wait:
            head = await self._response_head(uh, ustream, facts)
            pump.head_wait = None
            if not isinstance(pump.error, _ClientError):
                return head
        pump.head_wait = None
        assert isinstance(pump.error, _ClientError)
        raise pump.error  # the client's body failed first: answer that (400, 413...)

    async def _buffer_body(
        self, stream: trio.abc.Stream, conn: h11.Connection, flow: _Flow, facts: RequestFacts
    ) -> None:
        """Take the request body before the first attempt when it is small, so that it can be
        sent again (``REPLAY_BODY_BYTES``; HAProxy buffers a request for ``retry-on`` the
        same way, and Go's transport retries only a body it can rewind).

        Whatever part of any body h11 already holds is taken too (it goes out with the head).
        An upgrade request or one that expects ``100 Continue`` is never waited for.
        """
        if not flow.req_done:
            limits = self.engine.config.engine.limits
            done = self._take_body(conn, flow, flow.body, limits.max_body_bytes)
            length = facts.content_length
            if (
                not done
                and length is not None
                and length <= REPLAY_BODY_BYTES
                and not facts.websocket
                and not conn.they_are_waiting_for_100_continue
            ):
                while not done:
                    flow.arm("client", limits.idle_timeout)
                    try:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise _ClientError(0, "client_disconnected") from exc
                    if not data:
                        raise _ClientError(0, "client_disconnected")
                    conn.receive_data(cast(bytes, data))
                    done = self._take_body(conn, flow, flow.body, limits.max_body_bytes)
        flow.body_buffered = flow.req_done

    def _take_body(
        self,
        conn: h11.Connection,
        flow: _Flow,
        out: list[h11.Data],
        max_body: int,
    ) -> bool:
        """Move the request body events h11 already has to ``out``; at the end of the body,
        set ``flow.req_done`` (the caller sends the EndOfMessage).  Returns ``req_done``."""
        record = flow.record
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _ClientError(400, "bad_request") from exc
            kind = type(ev)
            if kind is h11.Data:
                assert isinstance(ev, h11.Data)
                flow.body_consumed = True
                record.bytes_in += len(ev.data)
                if record.bytes_in + _chunk_left(conn) > max_body:
                    raise _chunk_error(_chunk_left(conn), max_body)
                out.append(ev)
            elif kind is h11.EndOfMessage:
                flow.req_done = True
                return True
            elif ev is h11.NEED_DATA:
                if record.bytes_in + _chunk_left(conn) > max_body:
                    # A chunk announced larger than the body may be: no need to wait for it.
                    raise _chunk_error(_chunk_left(conn), max_body)
                return False
            else:  # pragma: no cover - h11 gives nothing else while the body is open
                raise _ClientError(400, "bad_request")

    async def _pump_body(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        flow: _Flow,
        up: UpstreamConnection,
        pump: _BodyPump,
    ) -> None:
        """Read the rest of the request body from the client and send it upstream (a task
        beside the response; see :meth:`_forward`).  Never raises: a client failure is kept
        in ``pump.error`` and, before the response started, interrupts the wait for its head
        (the exchange answers it); an upstream failure is kept, and the wait for the head
        tells whether the upstream answered anyway."""
        limits = self.engine.config.engine.limits
        try:
            with pump.scope:
                while not flow.req_done:
                    flow.arm("client", limits.idle_timeout)
                    try:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise _ClientError(0, "client_disconnected") from exc
                    if not data:
                        raise _ClientError(0, "client_disconnected")
                    conn.receive_data(cast(bytes, data))
                    events: list[h11.Data] = []
                    done = self._take_body(conn, flow, events, limits.max_body_bytes)
                    pending = [_up_send(up.h11, ev) for ev in events]
                    if done:
                        pending.append(_up_send(up.h11, _EOM))
                    if pending:
                        await self._send_up(up.stream, pending, flow, limits.request_timeout)
        except _ClientError as exc:
            pump.error = exc
            if pump.head_wait is not None:
                pump.head_wait.cancel()
        except UpstreamError as exc:
            pump.error = exc
        except Exception as exc:  # a bug here must cost this request, not the connection
            log.warning("request body pump failed with %r", exc, exc_info=True)
            pump.error = exc
        finally:
            pump.done.set()

    async def _stop_pump(self, flow: _Flow) -> None:
        """End the body pump of ``flow``, if any, before the exchange is settled: the rest of
        the body is not wanted once the response is over (the client connection closes, its
        body unread, and the upstream connection with our request unfinished is not reused)."""
        pump = flow.pump
        if pump is None:
            return
        flow.pump = None
        pump.scope.cancel()
        with trio.CancelScope(shield=True):  # it ends at its next checkpoint
            await pump.done.wait()
        if isinstance(pump.error, _ClientError) and not flow.record.error:
            flow.record.error = pump.error.reason

    async def _response_head(
        self, uh: h11.Connection, ustream: trio.abc.Stream, facts: RequestFacts
    ) -> h11.Response | h11.InformationalResponse:
        """Read the upstream response head (1xx other than a WebSocket 101 are skipped)."""
        got = False
        while True:
            try:
                ev = uh.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol") from exc
            if ev is h11.NEED_DATA:
                # The deadline armed by _send_up covers the wait for the whole head.
                try:
                    data = await ustream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise UpstreamError(
                        errors.BAD_GATEWAY, "upstream_closed", before_response=not got
                    ) from exc
                if not data:
                    raise UpstreamError(
                        errors.BAD_GATEWAY, "upstream_closed", before_response=not got
                    )
                got = True
                uh.receive_data(cast(bytes, data))
                continue
            if type(ev) is h11.Response:
                assert isinstance(ev, h11.Response)
                return ev
            if type(ev) is h11.InformationalResponse:
                assert isinstance(ev, h11.InformationalResponse)
                if ev.status_code == 101 and facts.websocket:
                    return ev
                if ev.status_code == 101:
                    raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol")
                continue  # 100 Continue, 103 Early Hints: not relayed
            raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol")

    async def _send_up(
        self, ustream: trio.abc.Stream, pending: list[bytes], flow: _Flow, seconds: float
    ) -> None:
        flow.arm("upstream", seconds)
        try:
            await ustream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(errors.BAD_GATEWAY, "upstream_closed") from exc
        flow.sent_any = True

    async def _relay(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        facts: RequestFacts,
        flow: _Flow,
        up: UpstreamConnection,
        response: h11.Response | h11.InformationalResponse,
        decision: Decision,
        https: bool,
    ) -> bool:
        """Send the response downstream, streaming its body; True to keep the connection."""
        limits = self.engine.config.engine.limits
        record = flow.record
        set_cookie = None
        if decision.set_cookie is not None and decision.load_balancer is not None:
            lb = decision.load_balancer
            attrs = lb.session_affinity_attributes
            value = decision.set_cookie
            ttl = float(lb.effective_affinity_ttl)
            expires = expires_of(value)
            if expires is not None:
                # A rewritten (sticky) cookie keeps its expiry: Max-Age must not extend it.
                ttl = max(0.0, min(ttl, math.ceil(expires - time.time())))
            set_cookie = affinity_cookie(
                value,
                ttl,
                samesite=attrs.samesite,
                secure=attrs.secure,
                https=https,
            )
        status = response.status_code
        reason = response.reason or reason_phrase(status)
        if type(response) is h11.InformationalResponse:
            pump = flow.pump
            if pump is not None and not pump.done.is_set():
                # A 101 before the upgrade request's body is through: splicing would read the
                # client and write upstream beside the pump.  Refused as a bad upstream answer.
                raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol")
            return await self._splice(stream, conn, flow, up, response, set_cookie, limits)
        headers = response_headers(response.headers, set_cookie=set_cookie, close=self.draining)
        try:
            pending = [
                _sent(
                    conn.send(
                        h11.Response(
                            status_code=status,
                            headers=headers,
                            reason=reason,
                            **_PRE_VALIDATED,  # upstream's parsed headers plus our own
                        )
                    )
                )
            ]
        except h11.LocalProtocolError as exc:
            raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol") from exc
        flow.responded = True
        record.status = status
        uh = up.h11
        ustream = up.stream
        while True:
            try:
                ev = uh.next_event()
            except h11.RemoteProtocolError:
                record.error = "upstream_aborted"
                await self._flush_down(stream, pending, flow, limits.idle_timeout)
                return False
            kind = type(ev)
            if kind is h11.Data:
                assert isinstance(ev, h11.Data)
                record.bytes_out += len(ev.data)
                pending.append(_sent(conn.send(ev)))
            elif kind is h11.EndOfMessage:
                pending.append(_sent(conn.send(_EOM)))
                break
            elif ev is h11.NEED_DATA:
                if pending:
                    await self._flush_down(stream, pending, flow, limits.idle_timeout)
                    pending = []
                flow.arm("upstream", limits.request_timeout)
                try:
                    data = await ustream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    record.error = "upstream_aborted"
                    return False
                uh.receive_data(cast(bytes, data))
            else:
                record.error = "upstream_aborted"
                break
        # The upstream exchange is over: free the connection before the last write, which
        # runs under the deadline already armed (no extra deadline update on the hot path).
        self.engine.live.finished(up.endpoint)
        flow.endpoint = None
        flow.up = None
        pump = flow.pump
        if pump is not None and (not pump.done.is_set() or pump.error is not None):
            # The upstream answered before taking the whole body (the rest is not wanted, and
            # the connection must not go back to the pool while the pump may write on it), or
            # the pump's last write failed after h11 had marked the request complete.
            pump.scope.cancel()
            self.pool.discard(up)
        else:
            self.pool.release(up)
        await self._flush_down(stream, pending, flow, 0.0)
        return not record.error

    async def _flush_down(
        self, stream: trio.abc.Stream, pending: list[bytes], flow: _Flow, seconds: float
    ) -> None:
        """Write to the client; ``seconds`` > 0 pushes the deadline, 0 keeps the current one."""
        if seconds:
            flow.arm("client", seconds)
        try:
            await stream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientError(0, "client_disconnected") from exc

    async def _splice(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        flow: _Flow,
        up: UpstreamConnection,
        response: h11.InformationalResponse,
        set_cookie: bytes | None,
        limits: Limits,
    ) -> bool:
        """After a 101 from upstream: relay it, then copy bytes both ways until one side ends.

        The watchdog guards the tunnel as an inactivity timeout: ``idle_timeout`` after the
        last chunk in either direction, the connection is cut (phase ``websocket``).
        """
        record = flow.record
        record.websocket = True
        headers = response_headers(response.headers, set_cookie=set_cookie, upgrade=True)
        try:
            head = _sent(
                conn.send(
                    h11.InformationalResponse(
                        status_code=101, headers=headers, reason=b"Switching Protocols"
                    )
                )
            )
        except h11.LocalProtocolError as exc:
            raise UpstreamError(errors.BAD_GATEWAY, "upstream_protocol") from exc
        record.status = 101
        flow.responded = True
        self.hooks.upgrade(record)
        from_client, _ = conn.trailing_data
        from_upstream, _ = up.h11.trailing_data
        idle = limits.idle_timeout
        flow.arm("websocket", idle)
        try:
            await stream.send_all(head + from_upstream)
            record.bytes_out += len(from_upstream)
            if from_client:
                await up.stream.send_all(from_client)
                record.bytes_in += len(from_client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            record.error = "client_disconnected"
            return False
        async with trio.open_nursery() as nursery:
            scope, watchdog = nursery.cancel_scope, flow.watchdog
            nursery.start_soon(_pipe, stream, up.stream, scope, watchdog, idle, record, True)
            nursery.start_soon(_pipe, up.stream, stream, scope, watchdog, idle, record, False)
        return False  # the upstream connection is discarded by the caller

    # ------------------------------------------------------------------ answers

    async def _reply(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        flow: _Flow,
        status: int,
        body: bytes,
        *,
        close: bool = False,
    ) -> bool:
        """A proxy-generated answer; closes the connection when the request body is unread."""
        # An unread request body cannot be skipped by h11: the connection must close then.
        close = close or self.draining or conn.their_state is not h11.DONE
        extra: list[tuple[bytes, bytes]] = []
        if status == errors.NO_POOL:
            extra.append((b"retry-after", b"120"))
        head = flow.record.method == "HEAD"
        data = _simple_response(conn, status, body, close=close, extra=extra, head=head)
        flow.responded = True
        flow.record.status = status
        await self._flush_down(stream, [data], flow, self.engine.config.engine.limits.idle_timeout)
        return not close

    async def _fixed_response(
        self, stream: trio.abc.Stream, conn: h11.Connection, flow: _Flow, fixed: FixedResponse
    ) -> bool:
        """A custom rule's direct answer (R32): its status, Content-Type, Location and body."""
        close = self.draining or conn.their_state is not h11.DONE
        extra = [(b"location", fixed.location.encode())] if fixed.location else []
        content_type = (b"content-type", (fixed.content_type or "text/plain").encode())
        data = _simple_response(
            conn,
            fixed.status_code,
            fixed.message_body.encode(),
            close=close,
            extra=extra,
            head=flow.record.method == "HEAD",
            content_type=content_type,
        )
        flow.responded = True
        flow.record.status = fixed.status_code
        await self._flush_down(stream, [data], flow, self.engine.config.engine.limits.idle_timeout)
        return not close

    async def _bad_gateway(self, stream: trio.abc.Stream, event: h11.Request, flow: _Flow) -> bool:
        """A 502 after h11 refused to send the upstream response head; closes the connection.

        h11's server connection is in its ERROR state then and cannot frame an answer, so the
        response is written by hand.
        """
        status = errors.BAD_GATEWAY
        body = error_body(status, self.engine.config.engine.error_style)
        head = b"HTTP/1.1 %d %s\r\n%s: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
            status,
            reason_phrase(status),
            *_CONTENT_TYPE,
            len(body),
        )
        flow.responded = True
        flow.record.status = status
        data = head if event.method == b"HEAD" else head + body
        await self._flush_down(stream, [data], flow, self.engine.config.engine.limits.idle_timeout)
        return False

    async def _client_abort(
        self, stream: trio.abc.Stream, conn: h11.Connection, flow: _Flow, abort: _ClientError
    ) -> bool:
        record = flow.record
        record.error = abort.reason
        if flow.up is not None:
            self.pool.discard(flow.up)
            flow.up = None
        if abort.status and not flow.responded and conn.our_state is h11.SEND_RESPONSE:
            data = _simple_response(
                conn,
                abort.status,
                b"%d %s\n" % (abort.status, reason_phrase(abort.status)),
                close=True,
                head=record.method == "HEAD",
            )
            record.status = abort.status
            with trio.move_on_after(self.engine.config.engine.limits.idle_timeout):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(data)
        return False

    async def _timed_out(self, stream: trio.abc.Stream, conn: h11.Connection, flow: _Flow) -> bool:
        """The watchdog fired: 524 (or 408) when no response was started, else cut; at the
        drain deadline, 503 (see :meth:`_drain_deadline`)."""
        record = flow.record
        if flow.up is not None:
            self.pool.discard(flow.up)
            flow.up = None
        if self._expired:
            record.error = "shutdown"
            if record.attempts and not flow.responded:
                record.attempts[-1].error = "shutdown"
            if not flow.responded and conn.our_state is h11.SEND_RESPONSE:
                data = _simple_response(
                    conn,
                    503,
                    b"503 Service Unavailable: shutting down\n",
                    close=True,
                    head=record.method == "HEAD",
                )
                record.status = 503
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(data)
            return False
        if flow.phase == "websocket":
            record.error = "websocket_idle"
            return False
        if flow.phase == "upstream":
            status = errors.RESPONSE_TIMEOUT
            record.error = "response_timeout"
            if record.attempts and not flow.responded:
                record.attempts[-1].status = status
                record.attempts[-1].error = "response_timeout"
        else:
            status = 408
            record.error = "client_timeout"
        if flow.responded or conn.our_state is not h11.SEND_RESPONSE:
            return False
        style = self.engine.config.engine.error_style
        shown = public_status(status, style)
        body = error_body(status, style) if status != 408 else b"408 Request Timeout\n"
        data = _simple_response(conn, shown, body, close=True, head=record.method == "HEAD")
        record.status = shown
        with trio.move_on_after(self.engine.config.engine.limits.idle_timeout):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(data)
        return False

    # ------------------------------------------------------------------ cached settings

    def _header_names(self, settings: EngineSettings) -> tuple[bytes, bytes]:
        if self._names_key is not settings:
            self._names_key = settings
            self._names = (
                settings.client_ip_header.lower().encode("latin-1"),
                settings.datacenter_header.lower().encode("latin-1"),
            )
        return self._names

    def _is_trusted(self, peer: str, settings: EngineSettings) -> bool:
        """Whether ``peer`` is in ``engine.trusted_proxies`` (cached per peer and config)."""
        if self._trust_key is not settings.trusted_proxies:
            self._trust_key = settings.trusted_proxies
            self._trusted_nets = tuple(
                ip_network(c, strict=False) for c in settings.trusted_proxies
            )
            self._trusted_cache = {}
        if not self._trusted_nets:
            return False
        found = self._trusted_cache.get(peer)
        if found is None:
            try:
                addr = ip_address(peer)
                found = any(addr in net for net in self._trusted_nets)
            except ValueError:
                found = False
            if len(self._trusted_cache) > 4096:
                self._trusted_cache.clear()
            self._trusted_cache[peer] = found
        return found


def _client_country(headers: Sequence[tuple[bytes, bytes]], settings: EngineSettings) -> str:
    """The client country a trusted proxy sent (``engine.client_country_header``), or ""."""
    name = settings.client_country_header.lower().encode("latin-1")
    for key, value in headers:
        if key == name:
            return client_country(value.decode("latin-1"))
    return ""


async def serve_proxy(
    engine: Engine,
    listeners: Sequence[AnyListener] | None = None,
    *,
    hooks: ProxyHooks | None = None,
    rng: random.Random | None = None,
    upstream_ssl: ssl.SSLContext | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until ``shutdown`` is set (or the task is cancelled).

    With ``listeners`` None, listeners are opened from ``engine.config.engine.listen`` (port
    0 allowed).  ``task_status.started`` receives the bound ``(host, port)`` pairs.  Setting
    ``shutdown`` stops accepting and drains in-flight requests for up to
    ``engine.drain_timeout`` seconds; then this returns.  For more control (shutdown from a
    signal handler, pool statistics), use :class:`ProxyServer` directly.
    """
    server = ProxyServer(engine, hooks=hooks, rng=rng, upstream_ssl=upstream_ssl)
    async with trio.open_nursery() as nursery:
        if shutdown is not None:

            async def watch(event: trio.Event) -> None:
                await event.wait()
                server.shutdown()

            nursery.start_soon(watch, shutdown)
        await server.serve(listeners, task_status=task_status)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- helpers


class _Lazy(Mapping[str, str]):
    """A mapping built on first use: steering reads headers and cookies only for header
    affinity, so most requests never pay for building them."""

    __slots__ = ("_built", "_raw")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._built: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        raise NotImplementedError

    def _dict(self) -> dict[str, str]:
        built = self._built
        if built is None:
            built = self._built = self._build()
        return built

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class _LazyHeaders(_Lazy):
    """The request headers by name, for header affinity and custom rules, built on first use.

    Only a load balancer with ``session_affinity: header`` or custom rules reads them, so the
    dict costs nothing on every other request.  Names are h11's, already lowercase; of a
    repeated header the last value counts, except Cookie, whose values are joined with "; "
    as one header would carry them (``http.cookie``).
    """

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for n, v in self._raw:
            name, value = n.decode("latin-1"), v.decode("latin-1")
            if name == "cookie" and name in out:
                value = f"{out[name]}; {value}"
            out[name] = value
        return out


class _LazyCookies(_Lazy):
    """Every cookie of the request, for header affinity, parsed on first use."""

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        return parse_cookies(self._raw)


def _sent(data: bytes | None) -> bytes:
    """h11's ``send`` returns None only for ConnectionClosed, which we never send."""
    assert data is not None
    return data


def _body_state(flow: _Flow) -> Body:
    """Where the request body of ``flow`` stands, for the attempt policy."""
    if flow.body_buffered:
        return Body.BUFFERED
    return Body.STREAMED if flow.body_consumed else Body.UNTOUCHED


def _up_send(uh: h11.Connection, event: h11.Data | h11.EndOfMessage) -> bytes:
    """Frame a request body event for upstream; a body h11 refuses is the client's fault.

    The request was framed by the client's own Content-Length or chunking, so a mismatch here
    means a request head that says one thing and a body that does another: 400, not a crash.
    """
    try:
        return _sent(uh.send(event))
    except h11.LocalProtocolError as exc:
        raise _ClientError(400, "bad_request") from exc


_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")


def _chunk_left(conn: h11.Connection) -> int:
    """Bytes still to come of the request body chunk h11 is reading (0 if none or unknown).

    Read from h11's private chunk reader (0.14 to 0.16 at least), so that a chunk announced
    larger than the body may be is refused at once instead of waited for; an h11 without it
    gives 0, and the size limits then apply as the bytes arrive: slower, never broken.
    """
    reader = getattr(conn, "_reader", None)
    left = getattr(reader, "_bytes_in_chunk", 0)
    return left if type(left) is int else 0


def _chunk_error(size: int, max_body: int) -> _ClientError:
    if size > MAX_CHUNK_SIZE:
        return _ClientError(400, "bad_chunk")
    return _ClientError(413, "body_too_large")


def _first_chunk_problem(conn: h11.Connection, max_body: int) -> _ClientError | None:
    """A malformed or oversized first chunk header already received with the head, if any.

    Checked before steering, so that such a request costs no upstream connection; later
    chunks are checked as h11 reads them (:meth:`ProxyServer._take_body`).
    """
    buf = conn.trailing_data[0]
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    m = _CHUNK_LINE.match(buf, 0, end + 2)
    if m is None:
        return _ClientError(400, "bad_chunk")
    size = int(m.group(1), 16)
    if size > max_body:
        return _chunk_error(size, max_body)
    return None


def _simple_response(
    conn: h11.Connection,
    status: int,
    body: bytes,
    *,
    close: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
    head: bool = False,
    content_type: tuple[bytes, bytes] = _CONTENT_TYPE,
) -> bytes:
    """A whole response of ours; ``head`` (the request was HEAD) leaves the body out, as h11
    requires, keeping its Content-Length."""
    headers: list[tuple[bytes, bytes]] = [
        content_type,
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    if close:
        headers.append((b"connection", b"close"))
    response = h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
    parts = [_sent(conn.send(response))]
    if not head:
        parts.append(_sent(conn.send(h11.Data(data=body))))
    parts.append(_sent(conn.send(_EOM)))
    return b"".join(parts)


def _peer_ip(stream: trio.abc.Stream) -> str:
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        try:
            name = inner.socket.getpeername()
        except OSError:
            return ""
        if isinstance(name, tuple):
            return str(name[0])
    return ""


def _close_now(stream: trio.abc.Stream) -> None:
    """Close a connection just accepted, without a TLS close_notify (no handshake was made)."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        inner.socket.close()


def _close_listener(listener: AnyListener) -> None:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    if isinstance(inner, trio.SocketListener):
        inner.socket.close()


async def _pipe(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    scope: trio.CancelScope,
    watchdog: trio.CancelScope,
    idle: float,
    record: RequestRecord,
    inbound: bool,
) -> None:
    """Copy bytes from ``src`` to ``dst`` until EOF or an error, then end the splice.

    Every chunk pushes the ``watchdog`` deadline ``idle`` seconds ahead, so traffic in either
    direction keeps the tunnel open and silence both ways ends it.  Bytes are counted in
    ``record.bytes_in`` (client to upstream, ``inbound``) or ``record.bytes_out``.
    """
    try:
        while True:
            data = await src.receive_some(RECEIVE_SIZE)
            if not data:
                break
            watchdog.deadline = trio.current_time() + idle
            await dst.send_all(data)
            watchdog.deadline = trio.current_time() + idle
            if inbound:
                record.bytes_in += len(data)
            else:
                record.bytes_out += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


async def _close_client(stream: trio.abc.Stream, *, linger: bool) -> None:
    """Close a client connection; with ``linger``, half-close and drain unread input first.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    4xx we just wrote before the client reads it.
    """
    try:
        if linger and isinstance(stream, trio.SocketStream):
            with trio.move_on_after(LINGER_SECONDS):
                await stream.send_eof()
                total = 0
                while total < (4 << 20):
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    total += len(data)
        with trio.move_on_after(1.0):
            await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
