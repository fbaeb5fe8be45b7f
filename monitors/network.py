"""The real transport: a lean HTTP/1.1 prober on trio sockets, ``trio.SSLStream`` and h11.

Why not httpx
=============

Measured in ``docs/monitors.md`` (``bench/probes.py``): one shared ``httpx.AsyncClient``
collapses under many concurrent probes (pool scanning), one client per endpoint costs several
times the CPU of this prober and far more memory per endpoint.  A probe needs little of HTTP:
one request, the status, at most 10 KB of body, redirects.  So each session owns at most ONE
connection (a socket, an ``SSLStream`` over a context shared by all sessions, an
``h11.Connection``) and reopens it after any failure.

Every check sees a new connection
=================================

A check must see what a new traffic connection would see: an endpoint whose certificate
became invalid, or that stopped completing TLS handshakes (or accepting connections), fails
every new connection while an old keep-alive one goes on answering.  Cloudflare's monitors
probe from many data centers and connect for their checks; a prober that kept one keep-alive
connection forever would report such an endpoint healthy for as long as the connection
lives.  So by default (``reuse=0``) every attempt opens a new connection with a full TLS
handshake (no session resumption: the certificate is verified each time).  ``reuse`` (seconds)
lets a connection carry further checks for that long after its handshake, trading how late a
broken handshake is noticed (at most ``reuse`` plus one interval) for fewer handshakes;
redirect hops inside one attempt always reuse it.

Rules of a session
==================

* **Keep-alive**: after a complete response that both sides may continue, the connection stays
  open for the next check if it is younger than ``reuse`` seconds (never, by default).  A
  response longer than the 10 KB body window, ``Connection: close``, or any error drops it;
  so a 50 MB body costs one window, not 50 MB.
* **Stale keep-alive**: servers close idle connections (nginx after 75 s).  When a *reused*
  connection fails before a single response byte arrived, the request is sent once more on a
  fresh connection within the same attempt; this is not a retry in the R8 sense.
* **Cancellation**: the caller's ``move_on_after`` may cut an attempt anywhere; the
  connection in use is then closed synchronously (no await in cleanup), never reused.
* **Redirects** (``follow_redirects``, R3): up to 10 hops.  A hop to the probe's own scheme,
  Host and port reuses the keep-alive connection and its dial address (``connect_to``); any
  other authority is resolved by DNS on a one-off connection.  303 turns the method into GET.
* **TLS**: SNI and certificate name are the probe's Host (:mod:`monitors.spec`); with
  ``allow_insecure`` the certificate is not checked (SNI is still sent).
"""

from __future__ import annotations

import ssl
from urllib.parse import urljoin, urlsplit

import h11
import trio

from monitors.judge import BODY_WINDOW
from monitors.reasons import Reason
from monitors.spec import Probe
from monitors.transport import Exchange

__all__ = ["NetworkSession", "NetworkTransport"]

MAX_REDIRECTS = 10
_RECEIVE = 16384
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _StaleError(Exception):
    """A reused keep-alive connection was found dead before any response byte."""


class _Conn:
    """One open connection: the TCP socket (for a synchronous close), the stream, h11."""

    __slots__ = ("h11", "stream", "tcp")

    def __init__(self, tcp: trio.SocketStream, stream: trio.abc.Stream) -> None:
        self.tcp = tcp
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    def close_now(self) -> None:
        """Close without awaiting: safe inside cancelled code; TLS close_notify is skipped."""
        self.tcp.socket.close()


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class NetworkTransport:
    """Opens :class:`NetworkSession` s; holds the TLS contexts they all share.

    ``ssl_context`` verifies certificates (default: the system trust store); tests pass one
    that trusts their own CA.  The vantage point is ignored: every vantage point of this
    process sees the same network.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, reuse: float = 0.0) -> None:
        if ssl_context is None:
            ssl_context = ssl.create_default_context()
            ssl_context.set_alpn_protocols(["http/1.1"])
        self.verified = ssl_context
        self.insecure = _insecure_context()
        self.reuse = reuse
        """Seconds after its handshake a connection may carry more checks (module docstring);
        0 = a new connection for every check."""

    def open_session(self, probe: Probe, vantage: str) -> NetworkSession:
        """A session for ``probe``; it connects on its first attempt."""
        return NetworkSession(self, probe)


class NetworkSession:
    """One probe identity's keep-alive connection; see the module docstring."""

    __slots__ = ("_conn", "_opened", "_transport", "phase", "probe")

    def __init__(self, transport: NetworkTransport, probe: Probe) -> None:
        self._transport = transport
        self.probe = probe
        self.phase = "connect"
        self._conn: _Conn | None = None
        self._opened = 0.0
        """When the keep-alive connection's handshake was made (trio clock)."""

    async def aclose(self) -> None:
        """Close the keep-alive connection, if any."""
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close_now()

    async def attempt(self) -> Exchange:
        """One attempt; any exit but a normal return drops the connection.  A connection older
        than ``reuse`` is dropped first, so the attempt makes the handshake a new traffic
        connection would make."""
        if self._conn is not None and trio.current_time() - self._opened >= self._transport.reuse:
            self._drop()
        done = False
        try:
            if self.probe.scheme == "tcp":
                ex = await self._tcp()
            else:
                ex = await self._http()
            done = True
            return ex
        finally:
            if not done:
                self._drop()

    # ------------------------------------------------------------------ tcp

    async def _tcp(self) -> Exchange:
        self.phase = "connect"
        start = trio.current_time()
        tcp = await trio.open_tcp_stream(self.probe.dial_host, self.probe.dial_port)
        rtt = trio.current_time() - start
        tcp.socket.close()
        return Exchange(rtt=rtt)

    # ------------------------------------------------------------------ http(s)

    async def _open(self, scheme: str, host: str, port: int, tls_name: str) -> _Conn:
        self.phase = "connect"
        tcp = await trio.open_tcp_stream(host, port)
        if scheme != "https":
            self.phase = "http"
            return _Conn(tcp, tcp)
        self.phase = "tls"
        t = self._transport
        ctx = t.insecure if self.probe.allow_insecure else t.verified
        try:
            stream = trio.SSLStream(tcp, ctx, server_hostname=tls_name, https_compatible=True)
            await stream.do_handshake()
        except BaseException:
            tcp.socket.close()
            raise
        self.phase = "http"
        return _Conn(tcp, stream)

    async def _http(self) -> Exchange:
        p = self.probe
        scheme, host, port, path, method = p.scheme, p.host, p.port, p.path, p.method
        start: float | None = None
        for _hop in range(MAX_REDIRECTS + 1):
            own = (scheme, host, port) == (p.scheme, p.host, p.port)
            status, location, body, sent, head = await self._request(
                own, scheme, host, port, path, method
            )
            start = sent if start is None else start
            if not (p.follow_redirects and status in _REDIRECTS and location):
                return Exchange(status=status, body=body, rtt=head - start)
            base = f"{scheme}://{_authority(host, port, scheme)}{path}"
            nxt = urlsplit(urljoin(base, location))
            if nxt.scheme not in ("http", "https") or not nxt.hostname:
                return Exchange(failure=Reason.OTHER, status=status, detail=f"redirect {location}")
            scheme, host = nxt.scheme, nxt.hostname
            port = nxt.port or (443 if scheme == "https" else 80)
            path = (nxt.path or "/") + (f"?{nxt.query}" if nxt.query else "")
            if status == 303 and method != "HEAD":
                method = "GET"
        return Exchange(failure=Reason.OTHER, status=status, detail="too many redirects")

    async def _request(
        self, own: bool, scheme: str, host: str, port: int, path: str, method: str
    ) -> tuple[int, str, bytes, float, float]:
        """One request on the keep-alive connection (``own``) or on a one-off connection."""
        tls_name = _strip_port(host)
        if not own:
            conn = await self._open(scheme, host, port, tls_name)
            try:
                return await self._exchange(conn, reused=False, host=host, path=path, method=method)
            finally:
                conn.close_now()
        p = self.probe
        reused = self._conn is not None
        if self._conn is None:
            self._conn = await self._open(p.scheme, p.dial_host, p.dial_port, tls_name)
            self._opened = trio.current_time()
        try:
            out = await self._exchange(
                self._conn, reused=reused, host=host, path=path, method=method
            )
        except _StaleError:
            self._drop()
            self._conn = await self._open(p.scheme, p.dial_host, p.dial_port, tls_name)
            self._opened = trio.current_time()
            out = await self._exchange(
                self._conn, reused=False, host=host, path=path, method=method
            )
        if self._conn.h11.our_state is h11.DONE and self._conn.h11.their_state is h11.DONE:
            self._conn.h11.start_next_cycle()
        else:
            self._drop()
        return out

    async def _exchange(
        self, conn: _Conn, *, reused: bool, host: str, path: str, method: str
    ) -> tuple[int, str, bytes, float, float]:
        """Send, read the head and up to the body window: status, Location, body, times."""
        self.phase = "http"
        p = self.probe
        h = conn.h11
        headers = [("Host", host), ("User-Agent", p.user_agent), *p.headers]
        data = h.send(h11.Request(method=method, target=path, headers=headers))
        data = (data or b"") + (h.send(h11.EndOfMessage()) or b"")
        sent = trio.current_time()
        got = 0
        try:
            await conn.stream.send_all(data)
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.stream.receive_some(_RECEIVE)
                    got += len(chunk)
                    h.receive_data(bytes(chunk))
                elif isinstance(event, h11.Response):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("connection closed before a response")
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            if reused and got == 0:
                raise _StaleError from None
            raise
        head = trio.current_time()
        location = ""
        for name, value in event.headers:
            if name == b"location":
                location = value.decode("latin-1")
        body = bytearray()
        while len(body) < BODY_WINDOW:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                h.receive_data(bytes(await conn.stream.receive_some(_RECEIVE)))
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return event.status_code, location, bytes(body[:BODY_WINDOW]), sent, head


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _authority(host: str, port: int, scheme: str) -> str:
    default = 443 if scheme == "https" else 80
    return host if port == default or ":" in host else f"{host}:{port}"
