"""Forwarding a request to an origin service (``http://``, ``https://``, ``unix:``).

Bodies stream both ways without buffering: a task pumps the client's request body to the
origin while the caller's task relays the origin's response, so an origin that answers
before reading the whole body (a 413, say) does not deadlock us.  When the origin cannot
be reached we answer 502 "Unable to reach the origin service", as cloudflared does
(docs/connector.md), which is what the load balancer's monitors must learn to read.

Bodiless requests reuse idle origin connections (keep-alive); if a reused connection
turns out to be dead before any response byte arrives, the request is retried once on a
fresh connection, which is safe because nothing was consumed from the client.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import h11
import trio

from lb.connector.h11io import H11Stream, reason
from lb.connector.ingress import OriginService, UnixService, request_host
from lb.connector.tls import trust_context

__all__ = ["BAD_GATEWAY_BODY", "AbortConnectionError", "Downstream", "OriginClient"]

log = logging.getLogger("lb.connector")

BAD_GATEWAY_BODY = (
    b"Unable to reach the origin service. The service may be down or it may not be "
    b"responding to traffic from cloudflared\n"
)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
MAX_IDLE_PER_ORIGIN = 16
_UPSTREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class Downstream(Protocol):
    """What the proxy needs from the client connection (implemented by the server)."""

    peer: str
    tls: bool
    http: H11Stream

    async def respond(self, status: int, body: bytes, content_type: bytes | None) -> None:
        """Answer locally (draining any request body first)."""

    def answered(self, status: int) -> None:
        """Count the request; called just before the response's last byte is sent."""


class AbortConnectionError(Exception):
    """The client connection cannot continue (it broke, or the exchange broke mid-way)."""


class _ClientGoneError(Exception):
    """Writing to the client failed; distinguishes its errors from the origin's."""


@dataclass
class _Exchange:
    """Book-keeping shared by the pump task and the response relay of one request."""

    pump_done: bool = False
    client_error: BaseException | None = None
    """The client broke (bad or stalled body, reset); the connection must close."""
    origin_error: BaseException | None = None
    """The origin broke before a response started: retry or answer 502."""
    sent_response: bool = False
    status: int = 0


def _strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop connection-level headers (and those the Connection header names), RFC 9110 §7.6.1."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in pairs if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def _host_name(request: h11.Request) -> str:
    """The request's Host without its port (the TLS name of a ``unix+tls:`` origin)."""
    for name, value in request.headers:
        if name == b"host":
            return request_host(value.decode("latin-1"))
    return ""


def _has_body(request: h11.Request) -> bool:
    """Whether a request carries a body: chunked, or a Content-Length above zero."""
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() != b"0"
    return False


class OriginClient:
    """Connects to origin services and forwards requests; owns the idle-connection pool."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        no_tls_verify: bool = False,
        ca_pool: str | None = None,
    ) -> None:
        """Raises :class:`~lb.connector.tls.CertificateError` naming ``ca_pool`` when that
        file cannot be loaded."""
        self.connect_timeout = connect_timeout
        self._no_tls_verify = no_tls_verify
        if ssl_context is None and ca_pool:
            # Read here, once, as cloudflared reads it at start: a caPool that cannot be
            # loaded stops the start with one line naming it, and one that is removed or
            # rewritten later changes nothing (on first use, its request got a 502 whose
            # log line named no file).
            ssl_context = self._verifying(trust_context(ca_pool))
        self._ssl_context = ssl_context
        self._idle: dict[OriginService | UnixService, list[H11Stream]] = {}

    def _verifying(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        """``ctx`` as https origins use it: verification off with ``noTLSVerify``."""
        if self._no_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _client_context(self) -> ssl.SSLContext:
        """The context for https origins: the caPool's (read at start), else the system
        store's, made on first use (cloudflared's defaults)."""
        if self._ssl_context is None:
            self._ssl_context = self._verifying(ssl.create_default_context())
        return self._ssl_context

    async def _connect(
        self, service: OriginService | UnixService, server_name: str = "localhost"
    ) -> H11Stream:
        """A fresh origin connection; ``server_name`` is the TLS name of a ``unix+tls:``
        origin (the request's Host, as Go's transport would use)."""
        stream: trio.abc.Stream
        with trio.fail_after(self.connect_timeout):
            if isinstance(service, UnixService):
                stream = await trio.open_unix_socket(service.path)
                if service.tls:
                    stream = await self._tls(stream, server_name)
            else:
                stream = await trio.open_tcp_stream(service.host, service.port)
                if service.scheme == "https":
                    stream = await self._tls(stream, service.host)
        return H11Stream(stream, h11.CLIENT)

    async def _tls(self, stream: trio.abc.Stream, server_name: str) -> trio.SSLStream[Any]:
        tls = trio.SSLStream(stream, self._client_context(), server_hostname=server_name)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls

    def _checkout(self, service: OriginService | UnixService) -> H11Stream | None:
        idle = self._idle.get(service)
        return idle.pop() if idle else None

    async def _checkin(self, service: OriginService | UnixService, up: H11Stream) -> None:
        idle = self._idle.setdefault(service, [])
        if up.reusable and len(idle) < MAX_IDLE_PER_ORIGIN:
            up.conn.start_next_cycle()
            idle.append(up)
        else:
            await trio.aclose_forcefully(up.stream)

    async def aclose(self) -> None:
        """Close every idle origin connection (called when the connector stops)."""
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for up in streams:
                await trio.aclose_forcefully(up.stream)

    async def forward(
        self, down: Downstream, request: h11.Request, service: OriginService | UnixService
    ) -> int:
        """Forward ``request`` and relay the answer; returns the status sent to the client.

        Raises :class:`AbortConnectionError` (the server then closes the connection) when
        the exchange broke after the response had started, and h11.RemoteProtocolError
        (the server answers 400) when the client's body was malformed.
        """
        headers = _strip_hop_by_hop(request.headers)
        if any(n == b"transfer-encoding" for n, _ in request.headers):
            headers.append((b"transfer-encoding", b"chunked"))
        if not any(n == b"host" for n, _ in headers):  # HTTP/1.0 clients may omit it
            authority = "localhost" if isinstance(service, UnixService) else service.host
            headers.append((b"host", authority.encode("idna")))
        headers.append((b"x-forwarded-for", down.peer.encode("ascii", "replace")))
        headers.append((b"x-forwarded-proto", b"https" if down.tls else b"http"))
        upstream = h11.Request(
            method=request.method, target=request.target, headers=headers, http_version="1.1"
        )
        reuse = not _has_body(request)
        up = self._checkout(service) if reuse else None
        if up is not None:  # a reused connection may have died while idle: retry once
            ex = await self._attempt(down, upstream, up, service)
            if ex.origin_error is None or ex.sent_response or ex.client_error is not None:
                return self._outcome(ex)
        try:
            up = await self._connect(service, _host_name(request) or "localhost")
        except (*_UPSTREAM_ERRORS, trio.TooSlowError, ssl.SSLError) as exc:
            log.warning(
                "origin_unreachable", extra={"fields": {"origin": service, "error": repr(exc)}}
            )
            await down.respond(502, BAD_GATEWAY_BODY, b"text/plain; charset=utf-8")
            return 502
        ex = await self._attempt(down, upstream, up, service)
        if ex.origin_error is not None and not ex.sent_response and ex.client_error is None:
            log.warning(
                "origin_failed",
                extra={"fields": {"origin": service, "error": repr(ex.origin_error)}},
            )
            if down.http.conn.their_state is h11.SEND_BODY:
                # Part of the body went to a dead origin; we cannot drain the rest reliably.
                raise AbortConnectionError from ex.origin_error
            await down.respond(502, BAD_GATEWAY_BODY, b"text/plain; charset=utf-8")
            return 502
        return self._outcome(ex)

    @staticmethod
    def _outcome(ex: _Exchange) -> int:
        """The status sent, or the reason the client connection has to be dropped."""
        if isinstance(ex.client_error, h11.RemoteProtocolError) and not ex.sent_response:
            raise ex.client_error  # the server answers 400
        if ex.client_error is not None:
            raise AbortConnectionError from ex.client_error
        if ex.origin_error is not None:  # broke after the response had started
            raise AbortConnectionError from ex.origin_error
        return ex.status

    async def _attempt(
        self,
        down: Downstream,
        request: h11.Request,
        up: H11Stream,
        service: OriginService | UnixService,
    ) -> _Exchange:
        """One exchange on ``up``; the connection is pooled again only if it ended cleanly."""
        ex = _Exchange()
        try:
            await self._exchange(down, request, up, ex)
        except BaseException:
            await trio.aclose_forcefully(up.stream)
            raise
        if ex.sent_response and ex.client_error is None and ex.origin_error is None:
            await self._checkin(service, up)
        else:
            await trio.aclose_forcefully(up.stream)
        return ex

    async def _exchange(
        self, down: Downstream, request: h11.Request, up: H11Stream, ex: _Exchange
    ) -> None:
        """Send the request, pump its body in a task, relay the response; record failures."""
        try:
            await up.send(request)
        except _UPSTREAM_ERRORS as exc:
            ex.origin_error = exc
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, down, up, ex, nursery.cancel_scope)
            try:
                await self._relay(down, up, ex)
            except _ClientGoneError as exc:
                ex.client_error = exc.__cause__
            except _UPSTREAM_ERRORS as exc:
                ex.origin_error = exc
            if not ex.pump_done:
                # Done or failed before the client finished its body: stop reading it; the
                # server then closes the connection because the client is not DONE.
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _pump(
        down: Downstream, up: H11Stream, ex: _Exchange, cancel: trio.CancelScope
    ) -> None:
        """Copy the client's request body to the origin as it arrives."""
        try:
            while True:
                if down.http.conn.their_state is h11.DONE:  # bodiless, or a retry
                    event: object = h11.EndOfMessage()
                else:
                    try:
                        event = await down.http.next_event()
                    except (*_UPSTREAM_ERRORS, trio.TooSlowError) as exc:
                        ex.client_error = exc
                        cancel.cancel()
                        return
                if isinstance(event, h11.Data):
                    out: h11.Data | h11.EndOfMessage = h11.Data(data=event.data)
                elif isinstance(event, h11.EndOfMessage):
                    out = h11.EndOfMessage()
                else:  # h11 raises before this; be defensive
                    ex.client_error = h11.RemoteProtocolError("client closed during the body")
                    cancel.cancel()
                    return
                try:
                    await up.send(out)
                except _UPSTREAM_ERRORS:
                    return  # the origin stopped reading: the relay sees what it answered
                if isinstance(out, h11.EndOfMessage):
                    return
        finally:
            ex.pump_done = True

    @staticmethod
    async def _to_client(
        down: Downstream, event: h11.Response | h11.Data | h11.EndOfMessage
    ) -> None:
        try:
            await down.http.send(event)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGoneError from exc

    async def _relay(self, down: Downstream, up: H11Stream, ex: _Exchange) -> None:
        """Read the origin's response and stream it to the client."""
        while True:
            event = await up.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends are hop-by-hop
            if not isinstance(event, h11.Response):
                raise h11.RemoteProtocolError(f"origin sent {event!r} instead of a response")
            break
        ex.status = event.status_code
        response = h11.Response(
            status_code=event.status_code,
            headers=_strip_hop_by_hop(event.headers),
            reason=event.reason or reason(event.status_code),
        )
        await self._to_client(down, response)
        ex.sent_response = True
        while True:
            body = await up.next_event()
            if isinstance(body, h11.Data):
                await self._to_client(down, h11.Data(data=body.data))
            elif isinstance(body, h11.EndOfMessage):
                down.answered(ex.status)
                await self._to_client(down, h11.EndOfMessage())
                return
            else:
                raise h11.RemoteProtocolError(f"origin sent {body!r} inside a body")
