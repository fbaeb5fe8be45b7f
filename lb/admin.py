"""The admin listener: metrics, status, explain, health and reload over a small HTTP/1.1 server.

Theory of operation
===================

A separate listener (``engine.admin``, 127.0.0.1:9100 by default) so that operators and
Prometheus never share a socket, limits or access log with client traffic.  It is trio + h11,
like the proxy, and deliberately small:

* one task per connection, keep-alive, one request at a time (no pipelining is needed by
  Prometheus, curl or httpx);
* request bodies are read and dropped (``POST /reload`` takes none), with a size cap;
* every handler is synchronous except reload, and reads the engine on the trio thread, so a
  reply is always one consistent snapshot;
* nothing a client sends can take the server down: malformed HTTP gets 400, an unknown path
  404, a wrong method 405 with ``Allow``, a failing handler 500, and the connection task
  always closes its socket;
* nor a client that stops reading: each reply must be written within
  :data:`SEND_TIMEOUT`, else the connection is closed.

Endpoints (see ``docs/metrics.md`` for examples):

====================  ====================================================================
``GET /``             the live status page (:mod:`lb.status_page`), HTML that polls /status
``GET /metrics``      Prometheus text exposition of :class:`lb.metrics.Metrics`
``GET /status``       JSON: every load balancer, pool and endpoint with health, the last
                      probe result per vantage point, live counters and request counts,
                      and the recent activity (transitions, traffic over the last minute)
``GET /explain``      JSON: the steering decision with its trace for ``?host=`` (and
                      ``client_ip``, ``datacenter``, ``cookie``, ``header=Name:value``,
                      ``seed``); it never changes live counters or affinity sessions
``GET /healthz``      200 ``ok`` while the process serves
``GET /readyz``       200 once the engine is ready (every endpoint probed), else 503; 503
                      from the first moment of a drain, so a fronting balancer moves away
``POST /reload``      calls the reload callable: 200 ``{"ok": true}``, 400 with the errors
                      of a rejected configuration, 500 if reloading itself failed;
                      ``?force=1`` also applies a configuration without load balancers
====================  ====================================================================

``HEAD`` is accepted wherever ``GET`` is.  Every request first passes
:class:`lb.admin_guard.Guard`: ``Host`` and ``Origin`` must name this listener, ``/explain``
and every call other than GET/HEAD need the bearer token when one is configured, and calls
that change state need ``X-Tunnel-LB`` (or a non-form content type), so that a web page in
a browser on this machine can neither read nor reload anything.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lb.admin_guard import Guard, guard_for
from lb.config.hosts import LOOPBACK, is_loopback, split_host_port
from lb.core.health import HealthEvent, ProbeResult
from lb.core.passive import Ejector
from lb.core.snapshot import PoolView
from lb.engine import Engine, LiveTotals
from lb.metrics import Metrics, load_balancer_state
from lb.proxy.headers import parse_cookies
from lb.status_page import SAMPLE_INTERVAL, Activity, page
from steering import Request, Router
from steering.geo import client_country
from steering.whatif import client_ip_problem, datacenter_code, datacenter_problem

__all__ = ["ReloadResult", "serve_admin", "status_json"]

log = logging.getLogger("lb.admin")

MAX_HEADER_BYTES = 16 * 1024
"""Largest request head accepted, request line and blank line included; past it, 431.

h11's ``max_incomplete_event_size`` only bounds a head still incomplete, so a head that
arrives whole in fewer reads than it takes to pass the bound got through; :func:`_read_head`
also measures every head it parses."""
MAX_BODY_BYTES = 64 * 1024
"""Largest request body read and discarded; past it the answer is 413 and the socket closes."""
IDLE_TIMEOUT = 30.0
"""Seconds a connection may sit between requests (or dribble one request) before closing."""
SEND_TIMEOUT = 10.0
"""Seconds one reply may take to be written; a client that does not read is dropped."""
LINGER_TIME = 1.0
"""Seconds a closing connection keeps reading, so an error reply is not lost to a reset."""
_READ_SIZE = 16 * 1024
_TEXT = "text/plain; charset=utf-8"


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """What the reload callable reports back to ``POST /reload``.

    Attributes:
        ok: the new configuration was loaded and is in force.
        errors: why not, one message per problem (file, path and line where known).
        generation: the engine generation after the reload, when it is known.
        detail: extra JSON-able facts for the reply (changed pools, files read...).
    """

    ok: bool
    errors: tuple[str, ...] = ()
    generation: int | None = None
    detail: Mapping[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The JSON body of the ``POST /reload`` reply."""
        body: dict[str, object] = {"ok": self.ok, "errors": list(self.errors)}
        if self.generation is not None:
            body["generation"] = self.generation
        body.update(self.detail)
        return body


class ReloadFn(Protocol):
    """Re-reads the configuration; ``force`` applies one without load balancers too."""

    def __call__(self, *, force: bool = ...) -> Awaitable[ReloadResult]: ...


# --------------------------------------------------------------------------- the server


async def serve_admin(
    engine: Engine,
    metrics: Metrics,
    *,
    host: str | None = None,
    port: int | None = None,
    reload: ReloadFn | None = None,
    guard: Guard | Callable[[], Guard] | None = None,
    draining: trio.Event | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints until cancelled.

    Args:
        engine: the engine to report on.
        metrics: the metrics object whose registry ``/metrics`` exposes.
        host: bind address; defaults to the host of ``engine.config.engine.admin``.
        port: bind port, 0 for any free one; defaults to the port of ``engine.admin``.
        reload: called by ``POST /reload``; None answers 501 there.  Calls are serialised.
        guard: who may call what; by default :func:`lb.admin_guard.guard_for` the
            configuration and ``host`` (which raises ConfigError for a non-loopback ``host``
            without a token, before anything listens).  A callable is asked at every
            request, so that a reload can rotate the token (:class:`lb.service.Swappable`).
        draining: set when the process starts draining: ``/readyz`` answers 503 from then.
        task_status: ``started((host, port))`` with the bound address once listening.
    """
    if host is None or port is None:
        cfg_host, cfg_port = split_host_port(engine.config.engine.admin, default_host=LOOPBACK)
        host = cfg_host if host is None else host
        port = cfg_port if port is None else port
    given = guard() if callable(guard) else guard
    source: Guard | Callable[[], Guard]
    if guard is None or given is None or (given.token is None and not is_loopback(host)):
        # Also over a given guard: whoever chose ``host`` (a command-line override, say), a
        # listener beyond loopback never starts without a token (guard_for raises).
        source = guard_for(engine.config, host)
    else:
        source = guard
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    bound = (str(sockname[0]), int(sockname[1]))
    app = _Admin(engine, metrics, reload, source, draining)
    log.info("admin_listening", extra={"fields": {"addr": f"{bound[0]}:{bound[1]}"}})

    def on_health(event: HealthEvent) -> None:
        app.activity.on_health(event, wall=time.time() - (trio.current_time() - event.at))

    engine.observers.health.append(on_health)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.sample_traffic)
            await nursery.start(trio.serve_listeners, app.connection, listeners)
            task_status.started(bound)
    finally:
        engine.observers.health.remove(on_health)


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, obj: object) -> _Reply:
    return _Reply(status, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _error(status: int, message: str, **extra: object) -> _Reply:
    return _json(status, {"error": message, **extra})


def _fixed(guard: Guard) -> Callable[[], Guard]:
    """Always ``guard`` (a caller that never swaps it)."""
    return lambda: guard


def _jsonable(obj: object) -> object:
    if isinstance(obj, frozenset | set | tuple):
        return sorted(obj, key=str)
    return str(obj)


class _Admin:
    """Routes and connection handling; one instance per :func:`serve_admin` call."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        reload: ReloadFn | None,
        guard: Guard | Callable[[], Guard],
        draining: trio.Event | None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.reload_fn = reload
        self.guard: Callable[[], Guard] = guard if callable(guard) else _fixed(guard)
        """The guard in force, asked at each request (a reload may swap the token)."""
        self.draining = draining
        self.activity = Activity()
        self.reload_lock = trio.Lock()
        self.routes: dict[str, tuple[tuple[str, ...], Callable[[_Query], Awaitable[_Reply]]]] = {
            "/": (("GET", "HEAD"), self.get_page),
            "/metrics": (("GET", "HEAD"), self.get_metrics),
            "/status": (("GET", "HEAD"), self.get_status),
            "/explain": (("GET", "HEAD"), self.get_explain),
            "/healthz": (("GET", "HEAD"), self.get_healthz),
            "/readyz": (("GET", "HEAD"), self.get_readyz),
            "/reload": (("POST",), self.post_reload),
        }

    # ------------------------------------------------------------------ HTTP

    async def connection(self, stream: trio.SocketStream) -> None:
        """Serve one client connection until it closes, errs or idles out."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while await self._one_request(conn, stream):
                conn.start_next_cycle()
            await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away
        except _SendTimeoutError:
            log.warning("admin_send_timeout", extra={"fields": {"seconds": SEND_TIMEOUT}})
            return  # closed below: a stuck reply must not hold the connection task forever
        except Exception:  # never let one connection take the listener down
            log.exception("admin_connection_failed")
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _one_request(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Read one request, answer it; False when the connection must close."""
        event: object = None
        body_ok = False
        try:
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                event = await _read_head(conn, stream)
                if isinstance(event, h11.Request):
                    body_ok = await self._drain_body(conn, stream)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                reply = _error(status, f"bad request: {exc}")
                await self._send(conn, stream, "GET", reply, close=True)
            return False
        if not isinstance(event, h11.Request):
            return False  # idle timeout, ConnectionClosed, or EOF before a request
        method = event.method.decode("ascii", "replace").upper()
        if idle.cancelled_caught:  # the body dribbled in slower than the idle timeout
            await self._send(conn, stream, method, _error(408, "request body timed out"))
            return False
        if not body_ok:
            await self._send(conn, stream, method, _error(413, "request body too large"))
            return False
        reply = await self._dispatch(method, event, stream)
        await self._send(conn, stream, method, reply)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _refusal(
        self, method: str, path: str, event: h11.Request, stream: trio.SocketStream, found: bool
    ) -> _Reply | None:
        """The guard's answer when this request is refused (see :mod:`lb.admin_guard`).

        ``found``: the path and method name a handler.  Otherwise only ``Host`` and ``Origin``
        are checked, so that a wrong method or path still gets its 405 or 404.
        """
        headers: dict[str, list[str]] = {}
        for name, value in event.headers:
            headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
        try:
            local = str(stream.socket.getsockname()[0])
        except OSError:
            local = ""
        refusal = self.guard().refusal(
            headers=headers,
            local_address=local,
            http10=event.http_version == b"1.0",
            protected=found and path in _PROTECTED,
            changes_state=found and method not in ("GET", "HEAD"),
        )
        if refusal is None:
            return None
        log.info(
            "admin_refused",
            extra={"fields": {"status": refusal.status, "method": method, "path": path[:100]}},
        )
        reply = _error(refusal.status, refusal.message)
        reply.headers = refusal.headers
        return reply

    async def _drain_body(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Read the request body up to :data:`MAX_BODY_BYTES`; False when it was larger."""
        size = 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    return False
            elif isinstance(event, h11.EndOfMessage):
                return True
            else:  # ConnectionClosed mid-body
                raise trio.BrokenResourceError("client closed during the request body")

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        method: str,
        reply: _Reply,
        *,
        close: bool = False,
    ) -> None:
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            *reply.headers,
        ]
        if close or conn.their_state is not h11.DONE:
            headers.append(("Connection", "close"))
        out = conn.send(h11.Response(status_code=reply.status, headers=headers))
        if method != "HEAD" and reply.body:
            out = (out or b"") + (conn.send(h11.Data(data=reply.body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            await stream.send_all(out)
        if scope.cancelled_caught:
            raise _SendTimeoutError

    async def _dispatch(self, method: str, event: h11.Request, stream: trio.SocketStream) -> _Reply:
        try:
            parts = urlsplit(event.target.decode("ascii"))
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return _error(400, "malformed request target")
        path = parts.path.rstrip("/") or "/"
        route = self.routes.get(path)
        found = route is not None and method in route[0]
        if refusal := self._refusal(method, path, event, stream, found):
            return refusal
        if route is None:
            return _error(404, f"no such endpoint: {parts.path}", endpoints=sorted(self.routes))
        methods, handler = route
        if method not in methods:
            reply = _error(405, f"{method} not allowed; use {', '.join(methods)}")
            reply.headers = (("Allow", ", ".join(methods)),)
            return reply
        try:
            return await handler(query)
        except Exception as exc:
            log.exception("admin_handler_failed", extra={"fields": {"path": parts.path}})
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def sample_traffic(self) -> None:
        """Sample the request counters for the status page's traffic share, forever."""
        while True:
            self.activity.sample(trio.current_time(), _endpoint_counts(self.metrics))
            await trio.sleep(SAMPLE_INTERVAL)

    # ------------------------------------------------------------------ handlers

    async def get_page(self, query: _Query) -> _Reply:
        """The live status page: static HTML whose script polls ``/status``."""
        del query
        status_page = page()
        return _Reply(200, status_page.body, "text/html; charset=utf-8", status_page.headers)

    async def get_metrics(self, query: _Query) -> _Reply:
        """The Prometheus exposition of the metrics registry."""
        del query
        return _Reply(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    async def get_status(self, query: _Query) -> _Reply:
        """Health of every load balancer, pool and endpoint, as JSON."""
        del query
        now = trio.current_time()
        return _json(200, status_json(self.engine, self.metrics, now=now, activity=self.activity))

    async def get_healthz(self, query: _Query) -> _Reply:
        """The process is up."""
        del query
        return _Reply(200, b"ok\n", _TEXT)

    async def get_readyz(self, query: _Query) -> _Reply:
        """200 once every monitored endpoint has been probed, else 503."""
        del query
        if self.draining is not None and self.draining.is_set():
            return _Reply(503, b"not ready: draining\n", _TEXT)
        if self.engine.ready:
            return _Reply(200, b"ready\n", _TEXT)
        return _Reply(503, b"not ready: endpoints still waiting for a first probe\n", _TEXT)

    async def get_explain(self, query: _Query) -> _Reply:
        """A what-if steering decision with its trace; changes no state."""
        host = _one(query, "host")
        if not host:
            return _error(400, "missing query parameter: host")
        headers: dict[str, str] = {}
        for item in query.get("header", []):
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                return _error(400, f"header={item!r}: expected Name:value")
            headers[name.strip().lower()] = value.strip()
        seed_text = _one(query, "seed") or "0"
        try:
            seed = int(seed_text) if len(seed_text) <= 20 else None
        except ValueError:
            seed = None
        if seed is None:
            return _error(400, f"seed={seed_text[:40]!r}: expected an integer")
        engine = self.engine
        client_ip = _one(query, "client_ip")
        if problem := client_ip_problem(client_ip):
            return _error(400, f"client_ip={client_ip[:100]!r}: {problem}")
        datacenter_text = _one(query, "datacenter")
        datacenter = datacenter_code(datacenter_text)
        if problem := datacenter_problem(datacenter, engine.config.datacenters):
            return _error(400, f"datacenter={datacenter_text[:100]!r}: {problem}")
        request = Request(
            host=host,
            client_ip=client_ip,
            datacenter=datacenter,
            country=client_country(_one(query, "country")),
            cookie=_one(query, "cookie") or None,
            headers=headers,
            cookies=parse_cookies(headers.get("cookie", "").encode("latin-1")),
            now=trio.current_time(),
            wall=time.time(),
            method=(_one(query, "method") or "GET").upper(),
            uri=_one(query, "path") or "/",
        )
        # A router of our own over the current snapshot (decide() only reads the header
        # sessions and the live counters), and what the decision asks to remember is not
        # stored: explaining must not pin or refresh anyone's session.
        router = Router(engine.book.snapshot(), secret=engine.secret, sessions=engine.sessions)
        decision = router.decide(request, random.Random(seed), engine.live, trace=True)
        if decision.status == 404 and decision.load_balancer is None:
            known = sorted(lb.name for lb in engine.config.load_balancers if lb.enabled)
            return _error(404, f"no load balancer answers for host {host!r}", known=known)
        return _json(200, decision.as_json())

    async def post_reload(self, query: _Query) -> _Reply:
        """Re-read the configuration through the reload callable (``?force=1``: apply even
        a configuration without load balancers)."""
        force = _one(query, "force").lower() in ("1", "true", "yes")
        if self.reload_fn is None:
            return _json(501, {"ok": False, "errors": ["reload is not available here"]})
        async with self.reload_lock:
            try:
                result = await (self.reload_fn(force=True) if force else self.reload_fn())
            except Exception as exc:
                log.exception("reload_failed")
                return _json(500, {"ok": False, "errors": [f"{type(exc).__name__}: {exc}"]})
        return _json(200 if result.ok else 400, result.as_json())


_Query = dict[str, list[str]]
_PROTECTED = frozenset({"/explain"})
"""GET paths that show configuration: the token is required when one is set."""


class _SendTimeoutError(Exception):
    """A reply was not taken by the client within :data:`SEND_TIMEOUT`."""


async def _read_head(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    """The next request head (or whatever h11 says instead), refusing what the proxy refuses.

    A head over :data:`MAX_HEADER_BYTES` is 431 whatever the read sizes: its size is what h11
    took from its buffer to parse it.  Content-Length with Transfer-Encoding is 400 (RFC 9112
    §6.1 lets a server refuse it; h11 would frame by Transfer-Encoding), as in the proxy
    (docs/proxy.md, "Refused requests"): one framing for every listener of the process.
    """
    buffered = len(conn.trailing_data[0])  # a pipelined head already received
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            break
        data = await stream.receive_some(_READ_SIZE)
        buffered += len(data)
        conn.receive_data(data)  # b"" marks EOF
    if isinstance(event, h11.Request):
        if buffered - len(conn.trailing_data[0]) > MAX_HEADER_BYTES:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        names = {name for name, _ in event.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise h11.RemoteProtocolError("Content-Length with Transfer-Encoding")
    return event


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    """The next h11 event, reading from ``stream`` as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(_READ_SIZE)
        conn.receive_data(data)  # b"" marks EOF


async def _linger(stream: trio.SocketStream) -> None:
    """Close our side first and read what the client still sends, briefly.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    error reply (400, 413, 431) before the client reads it.  Half-closing and draining for up
    to :data:`LINGER_TIME` (and :data:`MAX_BODY_BYTES`) lets the reply arrive.
    """
    with trio.move_on_after(LINGER_TIME):
        try:
            await stream.send_eof()
            drained = 0
            while drained <= MAX_BODY_BYTES and (chunk := await stream.receive_some(_READ_SIZE)):
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _one(query: _Query, name: str) -> str:
    values = query.get(name)
    return values[-1].strip() if values else ""


# --------------------------------------------------------------------------- /status


def status_json(
    engine: Engine,
    metrics: Metrics | None = None,
    *,
    now: float,
    activity: Activity | None = None,
) -> dict[str, Any]:
    """The ``/status`` document: health of every load balancer, pool and endpoint.

    Args:
        engine: the engine to describe.
        metrics: when given, request counts per endpoint and load balancer are included.
        now: the engine clock, to turn probe stamps into ages.
        activity: when given, an ``activity`` section: recent transitions, the last one of
            each endpoint, and requests per endpoint over the last minute.

    Returns:
        A JSON-able dictionary (see ``docs/metrics.md`` for an example).
    """
    snapshot = engine.book.snapshot()
    config = snapshot.config
    counts = metrics.request_counts() if metrics is not None else {}
    by_endpoint: dict[tuple[str, str], int] = {}
    by_lb: dict[str, dict[str, int]] = {}
    for (lb_name, pool, endpoint, status), value in counts.items():
        if pool:
            key = (pool, endpoint)
            by_endpoint[key] = by_endpoint.get(key, 0) + int(value)
        statuses = by_lb.setdefault(lb_name, {})
        statuses[status] = statuses.get(status, 0) + int(value)
    load_balancers = []
    for lb in config.load_balancers:
        statuses = by_lb.get(lb.name, {})
        load_balancers.append(
            {
                "name": lb.name,
                "enabled": lb.enabled,
                "state": load_balancer_state(lb, snapshot),
                "policy": lb.effective_policy,
                "default_pools": list(lb.default_pools),
                "fallback_pool": lb.fallback_pool,
                "session_affinity": lb.affinity,
                "requests": sum(statuses.values()),
                "responses": dict(sorted(statuses.items())),
            }
        )
    live = engine.live_totals()
    pools = [_pool_json(engine, live, p, now, by_endpoint) for p in snapshot.pools.values()]
    document = {
        "ready": engine.ready,
        "generation": engine.generation,
        "snapshot_version": snapshot.version,
        "now": now,
        "vantage_points": list(config.engine.vantage_points),
        "sources": list(config.source),
        "listening": engine.listening,
        "load_balancers": load_balancers,
        "pools": pools,
        "traffic": {
            "in_flight": sum(live.in_flight.values()),
            "connections": sum(live.connections.values()),
            "requests": int(sum(counts.values())),
            "header_sessions": len(engine.sessions),
        },
        **{name: section() for name, section in engine.status_sections.items()},
    }
    if activity is not None:
        document["activity"] = activity.as_json(now, time.time(), by_endpoint)
    return document


def _endpoint_counts(metrics: Metrics) -> dict[tuple[str, str], int]:
    """Requests so far by (pool, endpoint), over every load balancer and status."""
    counts: dict[tuple[str, str], int] = {}
    for (_, pool, endpoint, _), value in metrics.request_counts().items():
        if pool:
            counts[(pool, endpoint)] = counts.get((pool, endpoint), 0) + int(value)
    return counts


def _pool_json(
    engine: Engine,
    live: LiveTotals,
    pool: PoolView,
    now: float,
    requests: Mapping[tuple[str, str], int],
) -> dict[str, Any]:
    book = engine.book
    endpoints = []
    for ep in pool.endpoints:
        last = book.last_results(pool.name, ep.name)
        vantages = {
            v: {"health": h.value, "last_probe": _probe_json(last.get(v), now)}
            for v, h in sorted(ep.vantage_health.items())
        }
        member_last = book.member_results(pool.name, ep.name)
        for v, states in book.member_states(pool.name, ep.name).items():
            if v in vantages:  # R16: each group member's own state and latest result
                vantages[v]["members"] = {
                    m: {"health": h.value, "last_probe": _probe_json(member_last.get((v, m)), now)}
                    for m, h in states.items()
                }
        endpoints.append(
            {
                "name": ep.name,
                "address": ep.address,
                "port": ep.port,
                "host": ep.host,
                "tunnel_id": ep.tunnel_id,
                "weight": ep.weight,
                "enabled": ep.enabled,
                "health": ep.health.value if ep.enabled else "disabled",
                "selectable": ep.selectable,
                "damping": _damping_json(book.damping(pool.name, ep.name, now)),
                "passive": _passive_json(book.passive(pool.name, ep.name), now),
                "vantages": vantages,
                "datacenters": sorted(ep.datacenters),
                "in_flight": live.in_flight.get(ep.key, 0),
                "connections": live.connections.get(ep.key, 0),
                "requests": requests.get((pool.name, ep.name), 0),
            }
        )
    return {
        "name": pool.name,
        "enabled": pool.config.enabled,
        "monitor": pool.config.monitor,
        "monitor_group": pool.config.monitor_group,
        "state": pool.state,
        "eligible": pool.eligible,
        "healthy_count": pool.healthy_count,
        "minimum_origins": pool.config.minimum_origins,
        "endpoint_steering": pool.config.origin_steering.policy,
        "probe_rtt": {v: _finite(r) for v, r in sorted(pool.rtt.items())},
        "in_flight": live.pool_in_flight.get(pool.name, 0),
        "connections": live.pool_connections.get(pool.name, 0),
        "endpoints": endpoints,
    }


def _damping_json(state: tuple[float, bool] | None) -> dict[str, Any] | None:
    """Flap damping of one endpoint (``engine.flap_damping``), None when it is off."""
    if state is None:
        return None
    return {"penalty": round(state[0], 3), "suppressed": state[1]}


def _passive_json(ejector: Ejector | None, now: float) -> dict[str, Any] | None:
    """Passive health of one endpoint (``passive_health``), None when it is off."""
    if ejector is None:
        return None
    return {
        "ejected": ejector.ejected,
        "remaining": round(max(0.0, ejector.until - now), 3) if ejector.ejected else None,
        "ejections": ejector.ejections,
        "reason": ejector.reason,
        "consecutive_5xx": ejector.error_run,
        "consecutive_connect_failures": ejector.connect_run,
    }


def _probe_json(result: ProbeResult | None, now: float) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "ok": result.ok,
        "reason": result.reason,
        "status": result.status,
        "rtt": _finite(result.rtt) if result.rtt is not None else None,
        "at": result.at,
        "age": round(max(0.0, now - result.at), 3),
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
