"""The request body: taken from the parser, buffered for a replay, or pumped upstream by a task.

Why this is apart from the exchange: a body moves on its own schedule.  A small one
(``REPLAY_BODY_BYTES``) is read whole before the first attempt, so that the attempt policy
(lb/core/attempts.py) may send it again on a fresh connection; a larger or still-arriving one
is pumped upstream by a task of its own while the exchange waits for the response head, as
Go's transport does (docs/proxy.md, "Request bodies").  Limits (``max_body_bytes``, chunk
sizes) are enforced here as the bytes arrive.
"""

from __future__ import annotations

import logging

import trio

from lb.core.attempts import Body
from lb.proxy import errors, http1
from lb.proxy.errors import RequestError, UpstreamError
from lb.proxy.state import RECEIVE_SIZE, BodyPump, ClientError, Exchange, Move
from lb.proxy.upstream import UpstreamConnection
from lb.proxy.watchdog import RateClock

__all__ = [
    "MAX_CHUNK_SIZE",
    "REPLAY_BODY_BYTES",
    "Replay",
    "buffer_body",
    "first_chunk_problem",
    "pump_body",
    "read_whole",
    "send_up",
    "stop_pump",
    "take_body",
    "up_send",
]

log = logging.getLogger("lb.proxy")

REPLAY_BODY_BYTES = 65536
"""A request body with a Content-Length up to this is read whole before the first attempt, so
that the request can be sent again if a reused connection breaks (``lb/core/attempts.py``);
larger bodies, chunked ones still arriving and ``Expect: 100-continue`` ones are streamed."""
MAX_CHUNK_SIZE = (1 << 63) - 1
"""A larger chunk size is malformed (it overflows a signed 64-bit length): 400."""
EOM = http1.EOM


async def _receive(ex: Exchange, idle_timeout: float) -> None:
    """Feed the parser the client's next bytes of the request body; a client gone is a
    ``client_disconnected`` :class:`ClientError`.

    The body's rate clock (lb/proxy/watchdog.py, :class:`~lb.proxy.watchdog.RateClock`)
    runs only during the wait below: the time spent writing upstream is not the client's.
    """
    ex.advance(Move.CLIENT, idle_timeout)
    clock = ex.clock
    if clock is None:
        clock = ex.clock = ex.shared.bodies[ex.client] = RateClock()
    clock.waiting = True
    try:
        data = await ex.stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ClientError(0, RequestError.CLIENT_DISCONNECTED) from exc
    finally:
        clock.waiting = False
    if not data:
        raise ClientError(0, RequestError.CLIENT_DISCONNECTED)
    ex.conn.receive_data(data)


async def buffer_body(ex: Exchange) -> None:
    """Take the request body before the first attempt when it is small, so that it can be
    sent again (``REPLAY_BODY_BYTES``; HAProxy buffers a request for ``retry-on`` the
    same way, and Go's transport retries only a body it can rewind).

    Whatever part of any body the parser already holds is taken too (it goes out with the head).
    An upgrade request or one that expects ``100 Continue`` is never waited for.
    """
    if not ex.req_done:
        conn = ex.conn
        facts = ex.facts
        limits = ex.config.engine.limits
        done = take_body(ex, ex.body, limits.max_body_bytes)
        length = facts.content_length
        if (
            not done
            and length is not None
            and length <= REPLAY_BODY_BYTES
            and not facts.websocket
            and not conn.they_are_waiting_for_100_continue
        ):
            while not done:
                await _receive(ex, limits.idle_timeout)
                done = take_body(ex, ex.body, limits.max_body_bytes)
    if ex.req_done:
        ex.body_state = Body.BUFFERED


def take_body(ex: Exchange, out: list[http1.Data], max_body: int) -> bool:
    """Move the request body events the parser already has to ``out``; at the end of the body,
    set ``ex.req_done`` (the caller sends the EndOfMessage).  Returns ``req_done``."""
    record = ex.record
    conn = ex.conn
    while True:
        try:
            ev = conn.next_event()
        except http1.RemoteProtocolError as exc:
            # In a chunked body, what llhttp refuses is a chunk's framing.
            raise ClientError(
                400, RequestError.BAD_CHUNK if ex.facts.chunked else RequestError.BAD_REQUEST
            ) from exc
        kind = type(ev)
        if kind is http1.Data:
            assert isinstance(ev, http1.Data)
            if ex.body_state is Body.UNTOUCHED:
                ex.body_state = Body.STREAMED
            record.bytes_in += len(ev.data)
            if record.bytes_in + conn.chunk_left() > max_body:
                raise _chunk_error(conn.chunk_left(), max_body)
            out.append(ev)
        elif kind is http1.EndOfMessage:
            ex.req_done = True
            return True
        elif ev is http1.NEED_DATA:
            if record.bytes_in + conn.chunk_left() > max_body:
                # A chunk announced larger than the body may be: no need to wait for it.
                raise _chunk_error(conn.chunk_left(), max_body)
            return False
        else:  # pragma: no cover - nothing else comes while the body is open
            raise ClientError(400, RequestError.BAD_REQUEST)


async def pump_body(ex: Exchange, up: UpstreamConnection, pump: BodyPump) -> None:
    """Read the rest of the request body from the client and send it upstream (a task beside
    the response; see lb/proxy/exchange.py, ``forward``).  Never raises: a client failure is
    kept in ``pump.error`` and, before the response started, interrupts the wait for its head
    (the exchange answers it); an upstream failure is kept, and the wait for the head tells
    whether the upstream answered anyway."""
    limits = ex.config.engine.limits
    try:
        with pump.scope:
            while not ex.req_done:
                await _receive(ex, limits.idle_timeout)
                events: list[http1.Data] = []
                done = take_body(ex, events, limits.max_body_bytes)
                pending = [up_send(up.http, ev) for ev in events]
                if done:
                    pending.append(up_send(up.http, EOM))
                if pending:
                    await send_up(ex, up.stream, pending, limits.request_timeout)
    except ClientError as exc:
        pump.error = exc
        if pump.head_wait is not None:
            pump.head_wait.cancel()
    except UpstreamError as exc:
        pump.error = exc
    except Exception as exc:  # a bug here must cost this request, not the connection
        log.warning("request_body_pump_failed", exc_info=True)  # ``error``: lb/logs.py
        pump.error = exc
    finally:
        # Nothing more of the body is read: its clock leaves the watch loop's list now, not
        # at ``settle`` (an upgrade whose pump failed before the 101 may splice for hours,
        # with a clock frozen below the rate).
        if ex.clock is not None:
            shared = ex.shared
            shared.bodies.pop(ex.client, None)
            shared.slow.pop(ex.client, None)
        pump.done.set()


async def stop_pump(ex: Exchange) -> None:
    """End the body pump of ``ex``, if any, before the exchange is settled: the rest of the
    body is not wanted once the response is over (the client connection closes, its body
    unread, and the upstream connection with our request unfinished is not reused)."""
    pump = ex.pump
    if pump is None:
        return
    ex.pump = None
    pump.scope.cancel()
    with trio.CancelScope(shield=True):  # it ends at its next checkpoint
        await pump.done.wait()
    if isinstance(pump.error, ClientError) and not ex.record.error:
        ex.record.error = pump.error.reason


async def send_up(
    ex: Exchange, ustream: trio.abc.Stream, pending: list[bytes], seconds: float
) -> None:
    """Write to the upstream under ``request_timeout`` (``seconds``)."""
    ex.advance(Move.UPSTREAM, seconds)
    try:
        await ustream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_CLOSED) from exc
    ex.sent_any = True


def up_send(uh: http1.Connection, event: http1.Data | http1.EndOfMessage) -> bytes:
    """Frame a request body event for upstream; a body the writer refuses is the client's fault.

    The request was framed by the client's own Content-Length or chunking, so a mismatch here
    means a request head that says one thing and a body that does another: 400, not a crash.
    """
    try:
        return uh.send(event)
    except http1.LocalProtocolError as exc:
        raise ClientError(400, RequestError.BAD_REQUEST) from exc


def _chunk_error(size: int, max_body: int) -> ClientError:
    if size > MAX_CHUNK_SIZE:
        return ClientError(400, RequestError.BAD_CHUNK)
    return ClientError(413, RequestError.BODY_TOO_LARGE)


def first_chunk_problem(conn: http1.Connection, max_body: int) -> ClientError | None:
    """A malformed or oversized first chunk already received with the head, if any.

    Checked before steering, so that such a request costs no upstream connection; later
    chunks are checked as they are read (:func:`take_body`).
    """
    if conn.pending_error() is not None:
        return ClientError(400, RequestError.BAD_CHUNK)
    size = conn.chunk_left()
    if size > max_body:
        return _chunk_error(size, max_body)
    return None


# ------------------------------------------------------------ responses read whole (retry_on)


async def read_whole(
    ex: Exchange, up: UpstreamConnection, bound: int
) -> list[http1.Data | http1.EndOfMessage]:
    """Read the response body on ``up`` before any of it is relayed: its events, ending with
    the EndOfMessage, or without it when the body passed ``bound`` bytes (a chunked body
    longer than announced by nothing: the rest is streamed, past retrying).

    Why: ``retry_on.buffer_response`` (``lb/core/attempts.py``, :func:`~lb.core.attempts.
    buffer_bound`).  A close in a body being streamed leaves the client a short response; a
    close here leaves it nothing, so the attempt failed like a reset before the answer, and
    the attempt policy may retry it (:attr:`~lb.core.attempts.Failure.TRUNCATED`, raised as
    ``upstream_truncated``).  A malformed body is ``upstream_protocol``.
    """
    limits = ex.config.engine.limits
    uh = up.http
    ustream = up.stream
    events: list[http1.Data | http1.EndOfMessage] = []
    size = 0
    eof = False
    while True:
        try:
            ev = uh.next_event()
        except http1.RemoteProtocolError as exc:
            reason = RequestError.UPSTREAM_TRUNCATED if eof else RequestError.UPSTREAM_PROTOCOL
            raise UpstreamError(errors.BAD_GATEWAY, reason, before_response=False) from exc
        kind = type(ev)
        if kind is http1.Data:
            assert isinstance(ev, http1.Data)
            events.append(ev)
            size += len(ev.data)
            if size > bound:
                return events
        elif kind is http1.EndOfMessage:
            assert isinstance(ev, http1.EndOfMessage)
            events.append(ev)
            return events
        elif ev is http1.NEED_DATA:
            ex.advance(Move.UPSTREAM, limits.request_timeout)
            try:
                data = await ustream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamError(
                    errors.BAD_GATEWAY, RequestError.UPSTREAM_TRUNCATED, before_response=False
                ) from exc
            eof = not data
            uh.receive_data(data)
        else:
            raise UpstreamError(
                errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL, before_response=False
            )


class Replay:
    """The response parser of an upstream connection, giving first the events
    :func:`read_whole` already took (what :func:`lb.proxy.exchange.relay` reads)."""

    __slots__ = ("_events", "_http")

    def __init__(self, events: list[http1.Data | http1.EndOfMessage], http: http1.Connection):
        self._events = events
        self._http = http

    def next_event(self) -> object:
        """The next event taken already, else the parser's."""
        if self._events:
            return self._events.pop(0)
        return self._http.next_event()

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed the parser (only once the events taken are all given)."""
        self._http.receive_data(data)
