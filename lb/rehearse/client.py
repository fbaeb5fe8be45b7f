"""The rehearsal's own HTTP/1.1 client: the traffic driver's and the edge stand-in's.

Why not httpx
=============

A rehearsal sends a few hundred requests a second from one Python process, on a machine
whose cores it shares with the LB, the connectors and the edge stand-ins (each a process of
its own, forwarding with this client too); when the sending process falls behind its
schedule, the run cannot be judged (:attr:`lb.rehearse.Rehearsal.inconclusive`).  Profiled
on a two-core machine under load with httpx (the edge stand-ins then ran in that process
too), the process spent about half its time in httpcore's connection pool, which matches
every waiting request against every connection on each change (quadratic in the requests
in flight), and most of the rest in httpx's per-request models, cookies and URL handling.

This client does what a rehearsal needs and nothing else: one origin per :class:`Pool`,
its idle connections on a stack (the most recently used first, O(1) to take or give back),
a new connection when none is idle, up to a cap.  h11 parses and frames, through the
connector's :class:`lb.connector.h11io.H11Stream`, so no HTTP is parsed by hand.  Bodies
are buffered: a rehearsal's are small.

What the edge stand-in must tell apart (a replica that refused, one that broke before its
answer, one whose body broke off) are three exceptions, :class:`RefusedError`,
:class:`BrokenError` and :class:`CutError`; every other failure of the exchange is a
:class:`BrokenError`.

A reused connection the peer closed just as the request went out (after the idle check of
:meth:`Pool._take`, before the request arrived) breaks before any byte of an answer: the
request is then sent once more, on a new connection, as Go's HTTP transport does for a
request it can send again (here every request: bodies are buffered) and as the LB does for
its own pooled connections (docs/proxy.md).  Without it, the edge stand-in would reset the
LB's connection for a race no real edge passes on.  A timeout is not retried: the peer may
be working on the request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import h11
import trio

from lb.connector.h11io import H11Stream
from lb.streams import readable as _readable

__all__ = ["Answer", "BrokenError", "ClientError", "CutError", "Pool", "RefusedError"]

_FAILED = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    h11.ProtocolError,
    ssl.SSLError,
    OSError,
)
_EMPTY = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})
"""Methods sent without ``Content-Length`` when they carry no body (as httpx does)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One response, its body read to the end."""

    status: int
    headers: list[tuple[bytes, bytes]]
    """As received (names lower-cased by h11), framing headers included."""
    body: bytes

    def cookie(self, name: str) -> str | None:
        """The value a ``Set-Cookie`` of this response gives ``name`` (None: none)."""
        wanted = name.encode("ascii") + b"="
        for n, v in self.headers:
            if n == b"set-cookie" and v.startswith(wanted):
                return v[len(wanted) :].split(b";", 1)[0].decode("latin-1")
        return None


class ClientError(Exception):
    """The exchange failed (the subclasses say where)."""


class RefusedError(ClientError):
    """No connection: refused, or closed before its TLS handshake completed."""


class BrokenError(ClientError):
    """The connection failed or timed out before the response's head."""


class _StaleError(BrokenError):
    """A reused connection broke before any byte of its answer (:meth:`Pool._exchange`
    sends the request again, on a new connection)."""


class CutError(ClientError):
    """The response's body broke off: its head and the bytes that came."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"the body of a {answer.status} broke off")
        self.answer = answer


class Pool:
    """Keep-alive connections to one ``host:port``, plain or TLS."""

    def __init__(
        self,
        address: str,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float | None = None,
        limit: int | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._tls = tls
        self._server_hostname = server_hostname or host
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[H11Stream] = []
        self._slots = trio.CapacityLimiter(limit) if limit else None

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> Answer:
        """Send one request and read its answer (raises a :class:`ClientError`)."""
        if self._slots is None:
            return await self._exchange(method, target, headers, body)
        async with self._slots:
            return await self._exchange(method, target, headers, body)

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for http in idle:
            await trio.aclose_forcefully(http.stream)

    async def _exchange(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Answer:
        if body or method not in _EMPTY:
            headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
        http = await self._take()
        if http is not None:
            try:
                return await self._over(http, method, target, headers, body, reused=True)
            except _StaleError:
                pass  # once more, on a new connection (the module docstring says why)
        http = await self._connect()
        return await self._over(http, method, target, headers, body, reused=False)

    async def _over(
        self,
        http: H11Stream,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        reused: bool,
    ) -> Answer:
        """One exchange over ``http``; a :class:`_StaleError` when ``reused`` and it broke
        before any byte of an answer (not a timeout: then the peer may be working on it)."""
        head: h11.Response | None = None
        chunks: list[bytes] = []
        try:
            await http.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                await http.send(h11.Data(data=body))
            await http.send(h11.EndOfMessage())
            while True:
                event = await http.next_event()
                if isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif not isinstance(event, h11.InformationalResponse):  # closed, or PAUSED
                    raise h11.RemoteProtocolError("the connection closed mid-answer", 502)
        except (*_FAILED, trio.TooSlowError) as exc:
            await trio.aclose_forcefully(http.stream)
            if head is None:
                why = str(exc) or type(exc).__name__
                if reused and not isinstance(exc, trio.TooSlowError):
                    raise _StaleError(why) from None
                raise BrokenError(why) from None
            raise CutError(Answer(head.status_code, list(head.headers), b"".join(chunks))) from None
        except BaseException:  # cancelled mid-exchange: the connection is in no known state
            await trio.aclose_forcefully(http.stream)
            raise
        assert head is not None  # h11 gives a Response before any body or its end
        await self._give_back(http)
        return Answer(head.status_code, list(head.headers), b"".join(chunks))

    async def _take(self) -> H11Stream | None:
        """The most recently used idle connection the peer has not closed meanwhile."""
        while self._idle:
            http = self._idle.pop()
            if not _readable(http.stream):
                return http
            # Readable while idle: the peer closed it (or sent what no request asked for).
            await trio.aclose_forcefully(http.stream)
        return None

    async def _give_back(self, http: H11Stream) -> None:
        # Bytes after the answer, read into h11's buffer with it, are invisible to the poll
        # of :meth:`_take`: reused, the connection would give them as the next answer.
        if http.reusable and http.conn.trailing_data == (b"", False):
            http.conn.start_next_cycle()
            self._idle.append(http)
        else:
            await trio.aclose_forcefully(http.stream)

    async def _connect(self) -> H11Stream:
        stream: trio.abc.Stream
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(self._host, self._port)
        except OSError as exc:
            raise RefusedError(str(exc)) from None
        except trio.TooSlowError:
            raise BrokenError(f"no connection to {self._host}:{self._port} in time") from None
        if self._tls is not None:
            tls = trio.SSLStream(stream, self._tls, server_hostname=self._server_hostname)
            try:
                with trio.fail_after(self._connect_timeout):
                    await tls.do_handshake()
            except _FAILED as exc:
                await trio.aclose_forcefully(tls)
                raise RefusedError(f"TLS handshake failed: {exc}") from None
            except trio.TooSlowError:
                await trio.aclose_forcefully(tls)
                why = f"no TLS handshake with {self._host}:{self._port} in time"
                raise BrokenError(why) from None
            except BaseException:  # cancelled mid-handshake: close it now, not in the GC
                await trio.aclose_forcefully(tls)
                raise
            stream = tls
        return H11Stream(stream, h11.CLIENT, read_timeout=self._read_timeout)
