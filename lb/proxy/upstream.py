"""Upstream connections: where an endpoint is dialled, and a small keep-alive pool.

Why not httpx: with 50 requests in flight its connection pool costs about 7x the whole
request path of a bare h11 forwarder (perf-anchors.md §2).  This pool is a LIFO stack of idle
h11 connections per key, nothing more: a checkout is a ``dict`` lookup and a ``list.pop``.

Where to dial (docs/proxy.md, "Upstream"):

* a tunnel endpoint (``<uuid>.cfargotunnel.com``) is HTTPS on ``port`` or 443;
* any other endpoint is plain HTTP when its port is 80, else HTTPS on ``port`` or 443;
* ``connect_to`` maps the ``address:port`` to the ``host:port`` actually dialled (the local
  stand-in for a tunnel), while Host and SNI stay what they would be without it; the lookup is
  :func:`lb.config.hosts.dial_address`, the one the monitors use too;
* Host is the endpoint's ``header.Host`` when set, else the client's Host (R47); SNI is that
  Host normalised (port and trailing dot removed).  A Host that cannot be a TLS server name
  fails the attempt with 525, the socket closed.

The pool lesson (perf-anchors.md §2): an idle upstream connection may have been closed by the
server meanwhile, and we do not poll idle sockets to find out (that is what makes httpcore
slow).  Instead connections idle longer than ``idle_timeout`` (30 s, below the 60-75 s of
common servers) are dropped on checkout and by a periodic sweep, and the caller retries once
on a *fresh* connection when a reused one fails before any response byte.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import trio

from lb.config.hosts import dial_address, normalise_host
from lb.core.snapshot import EndpointView
from lb.proxy.errors import (
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    TLS_BAD_CERT,
    TLS_HANDSHAKE,
    UNREACHABLE,
    UpstreamError,
)
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
    """Host header and SNI server name."""

    @property
    def key(self) -> tuple[str, str, int, bool, str]:
        """The pool key: one stack of idle connections per endpoint and identity."""
        return (self.endpoint.key, self.dial_host, self.dial_port, self.tls, self.host)


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
    return Target(endpoint, dial_host, dial_port, tls, host)


class UpstreamConnection:
    """One upstream HTTP/1.1 connection with its h11 state machine."""

    __slots__ = ("closed", "endpoint", "h11", "idle_since", "key", "reused", "stream")

    def __init__(self, stream: trio.abc.Stream, target: Target) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.key = target.key
        self.endpoint = target.endpoint
        self.idle_since = 0.0
        self.reused = False
        self.closed = False


class UpstreamPool:
    """Keep-alive upstream connections, LIFO per :attr:`Target.key`.

    Args:
        live: counters fed with every opened and closed connection (least_connections).
        ssl_context: verifies upstream certificates (the caller's CA bundle in tests).
        connect_timeout: seconds for TCP connect plus TLS handshake (522 past it).
        idle_timeout: idle connections older than this are never reused.
        max_idle: idle connections kept per key; extra ones are closed on release.
    """

    def __init__(
        self,
        live: Live,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        max_idle: int = 128,
    ) -> None:
        self.live = live
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int, bool, str], list[UpstreamConnection]] = {}
        self.opened = 0
        """Connections opened so far (tests and the benchmark check reuse with it)."""

    def checkout(self, target: Target) -> UpstreamConnection | None:
        """A reusable idle connection for ``target``, or None; stale ones are closed."""
        stack = self._idle.get(target.key)
        if not stack:
            return None
        limit = trio.current_time() - self.idle_timeout
        while stack:
            conn = stack.pop()
            if conn.idle_since >= limit:
                conn.reused = True
                return conn
            self._close_now(conn)
        return None

    async def connect(self, target: Target) -> UpstreamConnection:
        """A fresh connection; raises :class:`UpstreamError` with the 52x code on failure."""
        stream = await self._dial(target)
        self.opened += 1
        self.live.connection_opened(target.endpoint)
        return UpstreamConnection(stream, target)

    def release(self, conn: UpstreamConnection) -> None:
        """Return ``conn`` after a complete exchange: back to the pool, or closed."""
        h = conn.h11
        if conn.closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            self._close_now(conn)
            return
        try:
            h.start_next_cycle()
        except h11.LocalProtocolError:  # pragma: no cover - states were checked above
            self._close_now(conn)
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self.max_idle:
            self._close_now(conn)
            return
        conn.idle_since = trio.current_time()
        stack.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close ``conn`` at once (broken, aborted or not reusable)."""
        self._close_now(conn)

    def sweep(self) -> int:
        """Close idle connections older than ``idle_timeout``; returns how many."""
        limit = trio.current_time() - self.idle_timeout
        closed = 0
        for key, stack in list(self._idle.items()):
            keep = [c for c in stack if c.idle_since >= limit]
            for c in stack:
                if c.idle_since < limit:
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

    # ------------------------------------------------------------------ internals

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
                except trio.BrokenResourceError as exc:
                    _close_stream(stream)
                    cause = exc.__cause__
                    if isinstance(cause, ssl.SSLCertVerificationError):
                        raise UpstreamError(TLS_BAD_CERT, "tls_certificate") from exc
                    if isinstance(cause, ConnectionError | ssl.SSLEOFError):
                        # Reset or closed before the handshake could start: a tunnel whose
                        # process is dying accepted in the kernel, then went away. That is
                        # "down" (521, and a zero-downtime retry), not a TLS problem (525).
                        raise UpstreamError(CONNECT_REFUSED, "refused") from exc
                    raise UpstreamError(TLS_HANDSHAKE, "tls_handshake") from exc
                stream = tls
        if scope.cancelled_caught or stream is None:
            if stream is not None:
                _close_stream(stream)
            raise UpstreamError(CONNECT_TIMEOUT, "connect_timeout")
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
        raise UpstreamError(TLS_HANDSHAKE, "tls_server_name") from exc


async def _connect(host: str, port: int) -> trio.socket.SocketType:
    """TCP connect to the first address that answers; errors become 52x codes.

    trio.open_tcp_stream would fold every failure into one errno-less OSError, and the 52x
    distinction (refused vs unreachable) is exactly what zero-downtime failover needs.
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror included
        raise UpstreamError(UNREACHABLE, "dns") from exc
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
        raise UpstreamError(CONNECT_REFUSED, "refused") from last
    if last is not None and last.errno in _TIMEOUT:
        raise UpstreamError(CONNECT_TIMEOUT, "connect_timeout") from last
    raise UpstreamError(UNREACHABLE, "unreachable") from last


def _close_stream(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` synchronously (SocketStream or SSLStream)."""
    inner: object = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        inner.socket.close()
