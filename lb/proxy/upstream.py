"""Upstream connections: where an endpoint is dialled, and a small keep-alive pool.

Why not httpx: with 50 requests in flight its connection pool costs about 7x the whole
request path of a bare h11 forwarder (docs/bench.md).  This pool is a LIFO stack of idle
HTTP/1.1 connections (lb/proxy/http1.py) per key, nothing more: a checkout is a ``dict``
lookup and a ``list.pop``.

Where to dial (docs/proxy.md, "Upstream"):

* a tunnel endpoint (``<uuid>.cfargotunnel.com``) is HTTPS on ``port`` or 443;
* any other endpoint is plain HTTP when its port is 80, else HTTPS on ``port`` or 443;
* ``connect_to`` maps the ``address:port`` to the ``host:port`` actually dialled (the local
  stand-in for a tunnel), while Host and SNI stay what they would be without it; the lookup is
  :func:`lb.config.hosts.dial_address`, the one the monitors use too;
* Host is the endpoint's ``header.Host`` when set, else the client's Host (R47); SNI is that
  Host normalised (port and trailing dot removed).  A Host that cannot be a TLS server name
  fails the attempt with 525, the socket closed.

The pool lesson (docs/bench.md): an idle upstream connection may have been closed by the
server meanwhile.  We do not poll idle sockets in the background (that is what makes httpcore
slow); instead:

* connections idle longer than ``idle_timeout`` (``engine.upstream_idle_timeout``, 30 s by
  default, below the 60-75 s of common servers), or than ``timeout - 1`` of the last
  response's ``Keep-Alive: timeout=N``, are dropped on checkout and by a periodic sweep (Go's
  transport has ``IdleConnTimeout`` for the same reason);
* on checkout, one zero-timeout ``poll`` on the raw socket drops a connection that became
  readable while idle: an idle HTTP/1.1 connection has nothing to say, so readable means EOF,
  a reset, a TLS close_notify or unsolicited bytes (servers with a keep-alive shorter than
  ours, such as Node's 5 s, close idle connections silently);
* what no check can see is a close that crosses our request on the wire: when a reused
  connection fails before any response byte, the attempt policy (``lb/core/attempts.py``)
  has the caller send the request again once on a *fresh* connection, a buffered POST too.

The pool key uses the normalised TLS server name (:func:`lb.config.hosts.normalise_host`),
not the raw client Host, so ``APP.example:1000`` and ``app.example`` share connections (the
Host header itself is per request).  ``max_idle_total`` caps idle connections over all keys;
past it the connection idle the longest is closed.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import trio

from lb.config.hosts import dial_address, normalise_host
from lb.core.snapshot import EndpointView
from lb.proxy import http1
from lb.proxy.errors import (
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    TLS_BAD_CERT,
    TLS_HANDSHAKE,
    UNREACHABLE,
    RequestError,
    UpstreamError,
)
from lb.streams import readable as _readable
from steering.types import Live

__all__ = ["Target", "UpstreamConnection", "UpstreamPool", "target_for"]

_REFUSED = {errno.ECONNREFUSED}
_TIMEOUT = {errno.ETIMEDOUT}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the endpoint, the address dialled, TLS and the Host/SNI name."""

    endpoint: EndpointView
    dial_host: str
    dial_port: int
    tls: bool
    host: str
    """Host header (as given) and, normalised, the SNI server name."""
    key: tuple[str, str, int, bool, str]
    """The pool key: one stack of idle connections per endpoint and identity (the normalised
    server name, so Host variants in case, port or trailing dot share connections)."""


def target_for(endpoint: EndpointView, client_host: str, connect_to: Mapping[str, str]) -> Target:
    """The :class:`Target` for ``endpoint`` of a request that arrived with ``client_host``."""
    port = endpoint.port
    if endpoint.tunnel_id is not None:
        tls = True
        port = port or 443
    else:
        tls = port != 80
        port = port or 443
    host = endpoint.host or client_host
    dial_host, dial_port = dial_address(endpoint.address, port, connect_to)
    name = normalise_host(host)
    key = (endpoint.key, dial_host, dial_port, tls, host if name is None else name)
    return Target(endpoint, dial_host, dial_port, tls, host, key)


class UpstreamConnection:
    """One upstream HTTP/1.1 connection with its parser and state (lb/proxy/http1.py)."""

    __slots__ = (
        "closed",
        "endpoint",
        "http",
        "idle_since",
        "keep_alive",
        "key",
        "reused",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, target: Target) -> None:
        self.stream = stream
        self.http = http1.Connection(http1.CLIENT)
        self.key = target.key
        self.endpoint = target.endpoint
        self.idle_since = 0.0
        self.keep_alive: float | None = None
        """Seconds the server keeps this connection idle (its last ``Keep-Alive: timeout``)."""
        self.reused = False
        self.closed = False

    def note_response(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Remember the ``Keep-Alive: timeout=N`` of a response head (None without one)."""
        self.keep_alive = keep_alive_timeout(headers)


def keep_alive_timeout(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The ``timeout`` parameter of a Keep-Alive response header, in seconds, or None."""
    found: float | None = None
    for name, value in headers:
        if name != b"keep-alive":
            continue
        for part in value.split(b","):
            key, sep, number = part.partition(b"=")
            if sep and key.strip().lower() == b"timeout":
                try:
                    seconds = float(number.strip().strip(b'"'))
                except ValueError:
                    continue
                if seconds >= 0 and seconds == seconds:  # not NaN
                    found = seconds
    return found


class UpstreamPool:
    """Keep-alive upstream connections, LIFO per :attr:`Target.key`.

    Args:
        live: counters fed with every opened and closed connection (least_connections).
        ssl_context: verifies upstream certificates (the caller's CA bundle in tests).
        connect_timeout: seconds for TCP connect plus TLS handshake (522 past it).
        idle_timeout: idle connections older than this are never reused (nor older than
            ``N - 1`` seconds after a ``Keep-Alive: timeout=N`` response).
        max_idle: idle connections kept per key; extra ones are closed on release.
        max_idle_total: idle connections kept over all keys; past it the oldest is closed.
    """

    def __init__(
        self,
        live: Live,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        max_idle: int = 128,
        max_idle_total: int = 1024,
    ) -> None:
        self.live = live
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_idle_total = max_idle_total
        self._idle: dict[tuple[str, str, int, bool, str], list[UpstreamConnection]] = {}
        self._order: OrderedDict[UpstreamConnection, None] = OrderedDict()
        """Every idle connection, oldest release first (for the global cap)."""
        self.opened = 0
        """Connections opened so far (tests and the benchmark check reuse with it)."""

    def checkout(self, target: Target, now: float | None = None) -> UpstreamConnection | None:
        """A reusable idle connection for ``target``, or None; stale ones are closed.

        ``now``: the trio time, when the caller has just read it (a clock read costs a few
        thousand instructions)."""
        stack = self._idle.get(target.key)
        if not stack:
            return None
        if now is None:
            now = trio.current_time()
        while stack:
            conn = stack.pop()
            del self._order[conn]
            if conn.idle_since >= now - self._limit(conn) and not _readable(conn.stream):
                conn.reused = True
                return conn
            self._close_now(conn)
        del self._idle[target.key]
        return None

    async def connect(self, target: Target) -> UpstreamConnection:
        """A fresh connection; raises :class:`UpstreamError` with the 52x code on failure."""
        stream = await self._dial(target)
        self.opened += 1
        self.live.connection_opened(target.endpoint)
        return UpstreamConnection(stream, target)

    def release(self, conn: UpstreamConnection) -> None:
        """Return ``conn`` after a complete exchange: back to the pool, or closed."""
        h = conn.http
        if conn.closed or h.our_state is not http1.DONE or h.their_state is not http1.DONE:
            self._close_now(conn)
            return
        try:
            h.start_next_cycle()
        except http1.LocalProtocolError:  # pragma: no cover - states were checked above
            self._close_now(conn)
            return
        if h.has_unread() or self._limit(conn) <= 0:
            self._close_now(conn)  # unsolicited bytes after the response, or no idle time left
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self.max_idle:
            self._close_now(conn)
            return
        while len(self._order) >= self.max_idle_total:
            self._evict_oldest()
        conn.idle_since = trio.current_time()
        stack.append(conn)
        self._order[conn] = None

    def discard(self, conn: UpstreamConnection) -> None:
        """Close ``conn`` at once (broken, aborted or not reusable)."""
        self._close_now(conn)

    def sweep(self) -> int:
        """Close idle connections older than ``idle_timeout``; returns how many."""
        now = trio.current_time()
        closed = 0
        for key, stack in list(self._idle.items()):
            keep = [c for c in stack if c.idle_since >= now - self._limit(c)]
            for c in stack:
                if c.idle_since < now - self._limit(c):
                    del self._order[c]
                    self._close_now(c)
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def idle_count(self) -> int:
        """Idle connections held right now."""
        return sum(len(s) for s in self._idle.values())

    def close_all(self) -> None:
        """Close every idle connection (shutdown)."""
        for stack in self._idle.values():
            for c in stack:
                self._close_now(c)
        self._idle.clear()
        self._order.clear()

    # ------------------------------------------------------------------ internals

    def _limit(self, conn: UpstreamConnection) -> float:
        """Seconds ``conn`` may stay idle: ``idle_timeout``, or less after Keep-Alive."""
        if conn.keep_alive is None:
            return self.idle_timeout
        return min(self.idle_timeout, conn.keep_alive - 1.0)

    def _evict_oldest(self) -> None:
        conn, _ = self._order.popitem(last=False)
        stack = self._idle[conn.key]
        stack.remove(conn)
        if not stack:
            del self._idle[conn.key]
        self._close_now(conn)

    def _close_now(self, conn: UpstreamConnection) -> None:
        """Close without awaiting: no TLS close_notify, which a dead peer would never read."""
        if conn.closed:
            return
        conn.closed = True
        self.live.connection_closed(conn.endpoint)
        _close_stream(conn.stream)

    async def _dial(self, target: Target) -> trio.abc.Stream:
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(self.connect_timeout) as scope:
            sock = await _connect(target.dial_host, target.dial_port)
            stream = trio.SocketStream(sock)
            if target.tls:
                tls = _tls_stream(stream, self.ssl_context, target.host)
                try:
                    await tls.do_handshake()
                except BaseException as exc:
                    if not isinstance(exc, trio.BrokenResourceError):
                        _close_stream(stream)  # cancelled from outside: no socket left open
                        raise
                    _close_stream(stream)
                    cause = exc.__cause__
                    if isinstance(cause, ssl.SSLCertVerificationError):
                        raise UpstreamError(TLS_BAD_CERT, RequestError.TLS_CERTIFICATE) from exc
                    if isinstance(cause, ConnectionError | ssl.SSLEOFError):
                        # Reset or closed before the handshake could start: a tunnel whose
                        # process is dying accepted in the kernel, then went away. That is
                        # "down" (521, and a zero-downtime retry), not a TLS problem (525).
                        raise UpstreamError(CONNECT_REFUSED, RequestError.REFUSED) from exc
                    raise UpstreamError(TLS_HANDSHAKE, RequestError.TLS_HANDSHAKE) from exc
                stream = tls
        if scope.cancelled_caught or stream is None:
            if stream is not None:
                _close_stream(stream)
            raise UpstreamError(CONNECT_TIMEOUT, RequestError.CONNECT_TIMEOUT)
        return stream


def _tls_stream(
    stream: trio.SocketStream, context: ssl.SSLContext, host: str
) -> trio.SSLStream[trio.SocketStream]:
    """The TLS stream over ``stream`` for Host ``host``; any failure closes the socket.

    The Host may be the client's: ``ssl`` rejects names such as ``a..example`` (UnicodeError)
    or with a NUL (ValueError) right here, before any handshake, and that must become a 525
    rather than a leaked socket and a dropped client connection.
    """
    server_name = normalise_host(host)
    try:
        if server_name is None:
            raise ValueError(f"not a TLS server name: {host!r}")
        return trio.SSLStream(stream, context, server_hostname=server_name, https_compatible=True)
    except Exception as exc:
        stream.socket.close()
        raise UpstreamError(TLS_HANDSHAKE, RequestError.TLS_SERVER_NAME) from exc


async def _connect(host: str, port: int) -> trio.socket.SocketType:
    """TCP connect to the first address that answers; errors become 52x codes.

    trio.open_tcp_stream would fold every failure into one errno-less OSError, and the 52x
    distinction (refused vs unreachable) is exactly what zero-downtime failover needs.
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror included
        raise UpstreamError(UNREACHABLE, RequestError.DNS) from exc
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            await sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if last is not None and last.errno in _REFUSED:
        raise UpstreamError(CONNECT_REFUSED, RequestError.REFUSED) from last
    if last is not None and last.errno in _TIMEOUT:
        raise UpstreamError(CONNECT_TIMEOUT, RequestError.CONNECT_TIMEOUT) from last
    raise UpstreamError(UNREACHABLE, RequestError.UNREACHABLE) from last


def _close_stream(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` synchronously (SocketStream or SSLStream)."""
    inner: object = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        inner.socket.close()
