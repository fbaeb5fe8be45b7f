"""The proxy's own answers: refusals, error pages, fixed responses, timeouts, the drain's 503.

Why a module of their own: every one of them is the same few steps (frame a small response
with lb/proxy/http1.py, mark the exchange as responded, write it under the client deadline) and the
rules about when the connection must close afterwards (an unread request body, a drain, a
client connection in its ERROR state) belong together, away from the forwarding code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import trio

from lb.config.model import FixedResponse
from lb.core.attempts import Failure
from lb.proxy import errors, http1
from lb.proxy.errors import RequestError, error_body, public_status, reason_phrase
from lb.proxy.hooks import RequestRecord
from lb.proxy.state import Client, ClientError, Exchange, Move, Phase, Shared

__all__ = [
    "PLAIN_HTTP_ON_TLS",
    "bad_gateway",
    "client_abort",
    "fixed_response",
    "flush_down",
    "reject",
    "reply",
    "simple_response",
    "timed_out",
]

CONTENT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
EOM = http1.EOM

_PLAIN_BODY = b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\n%s: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (*CONTENT_TYPE, len(_PLAIN_BODY), _PLAIN_BODY)
)
"""The answer, in plain HTTP, to plain HTTP sent to an HTTPS listener (nginx's words)."""


def simple_response(
    conn: http1.Connection,
    status: int,
    body: bytes,
    *,
    close: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
    head: bool = False,
    content_type: tuple[bytes, bytes] = CONTENT_TYPE,
) -> bytes:
    """A whole response of ours; ``head`` (the request was HEAD) leaves the body out, as HTTP
    requires, keeping its Content-Length."""
    headers: list[tuple[bytes, bytes]] = [
        content_type,
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    if close:
        headers.append((b"connection", b"close"))
    response = http1.Response(status_code=status, headers=headers, reason=reason_phrase(status))
    parts = [conn.send(response)]
    if not head:
        parts.append(conn.send(http1.Data(data=body)))
    parts.append(conn.send(EOM))
    return b"".join(parts)


async def flush_down(ex: Exchange, pending: list[bytes], seconds: float) -> None:
    """Write to the client; ``seconds`` > 0 pushes the deadline, 0 keeps the current one.

    The connection's response rate clock (lb/proxy/watchdog.py,
    :class:`~lb.proxy.watchdog.RateClock`) runs only during the write below and judges it
    alone, so only the time the client takes to take these bytes is charged to it: the
    waits for a slow upstream between writes are not.
    """
    if seconds:
        ex.advance(Move.CLIENT, seconds)
    data = pending[0] if len(pending) == 1 else b"".join(pending)
    clock = ex.client.send_clock
    clock.size = len(data)
    clock.waiting = True
    try:
        await ex.stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ClientError(0, RequestError.CLIENT_DISCONNECTED) from exc
    finally:
        clock.waiting = clock.seen = False
        clock.elapsed = 0.0


async def _answer(ex: Exchange, status: int, data: bytes) -> None:
    ex.advance(Move.RESPOND)
    ex.record.status = status
    await flush_down(ex, [data], ex.config.engine.limits.idle_timeout)


async def reply(ex: Exchange, status: int, body: bytes, *, close: bool = False) -> bool:
    """A proxy-generated answer; closes the connection when the request body is unread."""
    conn = ex.conn
    # An unread request body cannot be skipped: the connection must close then.
    close = close or ex.shared.draining or conn.their_state is not http1.DONE
    extra: list[tuple[bytes, bytes]] = []
    if status == errors.NO_POOL:
        extra.append((b"retry-after", b"120"))
    head = ex.record.method == "HEAD"
    await _answer(
        ex, status, simple_response(conn, status, body, close=close, extra=extra, head=head)
    )
    return not close


async def fixed_response(ex: Exchange, fixed: FixedResponse) -> bool:
    """A custom rule's direct answer (R32): its status, Content-Type, Location and body."""
    conn = ex.conn
    close = ex.shared.draining or conn.their_state is not http1.DONE
    extra = [(b"location", fixed.location.encode())] if fixed.location else []
    content_type = (b"content-type", (fixed.content_type or "text/plain").encode())
    data = simple_response(
        conn,
        fixed.status_code,
        fixed.message_body.encode(),
        close=close,
        extra=extra,
        head=ex.record.method == "HEAD",
        content_type=content_type,
    )
    await _answer(ex, fixed.status_code, data)
    return not close


async def bad_gateway(ex: Exchange) -> bool:
    """A 502 after the upstream response head was refused; closes the connection.

    The client connection has its response started then and cannot frame another one, so
    the response is written by hand.
    """
    status = errors.BAD_GATEWAY
    body = error_body(status, ex.config.engine.error_style)
    head = b"HTTP/1.1 %d %s\r\n%s: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        status,
        reason_phrase(status),
        *CONTENT_TYPE,
        len(body),
    )
    await _answer(ex, status, head if ex.event.method == b"HEAD" else head + body)
    return False


async def client_abort(ex: Exchange, abort: ClientError) -> bool:
    """The client side failed (a bad body, a disconnect): answer its status if still possible
    (never after a response started), and close."""
    record = ex.record
    record.error = abort.reason
    if ex.up is not None:
        ex.shared.pool.discard(ex.up)
        ex.up = None
    conn = ex.conn
    if abort.status and not ex.responded and conn.our_state is http1.SEND_RESPONSE:
        data = simple_response(
            conn,
            abort.status,
            b"%d %s\n" % (abort.status, reason_phrase(abort.status)),
            close=True,
            head=record.method == "HEAD",
        )
        record.status = abort.status
        with trio.move_on_after(ex.config.engine.limits.idle_timeout):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await ex.stream.send_all(data)
    return False


async def timed_out(ex: Exchange) -> bool:
    """The watchdog fired: what it means depends on the phase (lb/proxy/state.py).  524 (or
    408) when no response was started, else cut; at the drain deadline, 503; for a request
    body too slow (the connection's body clock says so), 408; for a response taken too
    slowly, cut.  True when an answer was written (False: the connection is cut)."""
    shared = ex.shared
    record = ex.record
    conn = ex.conn
    if ex.up is not None:
        shared.pool.discard(ex.up)
        ex.up = None
    if shared.expired:
        record.error = RequestError.SHUTDOWN
        if record.attempts and not ex.responded:
            record.attempts[-1].error = RequestError.SHUTDOWN
        if not ex.responded and conn.our_state is http1.SEND_RESPONSE:
            data = simple_response(
                conn,
                503,
                b"503 Service Unavailable: shutting down\n",
                close=True,
                head=record.method == "HEAD",
            )
            record.status = 503
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await ex.stream.send_all(data)
            return True
        return False
    phase = ex.phase
    clock = ex.clock
    if clock is not None and clock.closed_by:
        # Closed for a request body too slow (lb/proxy/connection.py, ``judge_bodies``), in
        # whatever phase the other task of the exchange was: the client's doing, 408.
        status = 408
        record.error = RequestError.BODY_TOO_SLOW
    elif ex.client.send_clock.closed_by:
        # Cut for a response taken too slowly (``watch_clients``): it had started.
        record.error = RequestError.READ_TOO_SLOW
        return False
    elif phase is Phase.WEBSOCKET:
        record.error = RequestError.WEBSOCKET_IDLE
        return False
    elif phase is Phase.UPSTREAM or phase is Phase.RELAY:
        status = errors.RESPONSE_TIMEOUT
        record.error = RequestError.RESPONSE_TIMEOUT
        if record.attempts and not ex.responded:
            record.attempts[-1].status = status
            record.attempts[-1].error = RequestError.RESPONSE_TIMEOUT
        endpoint = ex.endpoint
        if phase is Phase.UPSTREAM and endpoint is not None:
            # No head came: passive health counts the attempt as its 524, as the simulator
            # does (a head that came was counted when it came).
            shared.engine.outcome(
                endpoint.pool,
                endpoint.name,
                status=status,
                failure=Failure.RESPONSE_TIMEOUT,
                now=trio.current_time(),
            )
    else:
        status = 408
        record.error = RequestError.CLIENT_TIMEOUT
    if ex.responded or conn.our_state is not http1.SEND_RESPONSE:
        return False
    style = ex.config.engine.error_style
    shown = public_status(status, style)
    body = error_body(status, style) if status != 408 else b"408 Request Timeout\n"
    data = simple_response(conn, shown, body, close=True, head=record.method == "HEAD")
    record.status = shown
    with trio.move_on_after(ex.config.engine.limits.idle_timeout):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await ex.stream.send_all(data)
    return True


async def reject(
    shared: Shared, client: Client, conn: http1.Connection, exc: http1.RemoteProtocolError
) -> None:
    """Answer a request the parser refused (400, 431 for a too-large head, 505 for an HTTP
    version other than 1.x...).

    There is no exchange yet, so this reports a record of its own.  A 501 hint would be a
    Transfer-Encoding other than ``chunked``; RFC 9112 §6.3 makes a request whose last coding
    is not chunked a 400, and the proxy answers every such request 400 (docs/proxy.md,
    "Refused").
    """
    status = exc.error_status_hint
    if status == 501:
        status = 400
    record = RequestRecord(
        method="", host="", target="", client_ip=client.peer, datacenter="", request_id=""
    )
    if status == 431:
        record.error = RequestError.HEADERS_TOO_LARGE
    elif status == 505:
        record.error = RequestError.VERSION_NOT_SUPPORTED
    else:
        record.error = RequestError.BAD_REQUEST
    if conn.our_state in (http1.IDLE, http1.SEND_RESPONSE):
        body = b"%d %s\n" % (status, reason_phrase(status))
        try:
            data = simple_response(conn, status, body, close=True)
            with trio.move_on_after(shared.engine.config.engine.limits.idle_timeout):
                await client.stream.send_all(data)
            record.status = status
        except (http1.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    shared.hooks.request_done(record)
