"""Client connections: accept them (under the cap), run each one's keep-alive loop, drain.

Why apart from the exchange: a connection outlives its requests.  It owns the watchdog (the
only cancel scope per connection), reads the next request head (counting its lines before
llhttp parses it, lb/proxy/http1.py), hands the request to
:func:`lb.proxy.exchange.exchange`, settles what the request left behind, and decides
whether the connection can carry another request.  The connection cap
(``limits.max_connections``, whose rule is lb/proxy/capacity.py's) and the drain's deadline
are about connections too, so they are here, and so is the start of a TLS connection: a
client that speaks plain HTTP to an HTTPS listener gets a plain-HTTP 400 saying so, rather
than a closed connection it cannot explain (:func:`_tls_start`).
"""

from __future__ import annotations

import enum
import errno
import logging
import operator
import re
import socket
import ssl
from typing import Any

import trio

from lb import logs
from lb.proxy import capacity, http1
from lb.proxy.errors import RequestError
from lb.proxy.exchange import exchange
from lb.proxy.hooks import SlowBody, SlowRead, TlsFailure
from lb.proxy.listeners import AnyListener, TlsListener, is_https
from lb.proxy.replies import PLAIN_HTTP_ON_TLS, reject, timed_out
from lb.proxy.state import RECEIVE_SIZE, Client, Shared
from lb.proxy.watchdog import tick

__all__ = [
    "SWEEP_INTERVAL",
    "accept_loop",
    "close_idle_clients",
    "close_listener",
    "drain_deadline",
    "judge_bodies",
    "serve_client",
    "sweep_loop",
    "watch_clients",
    "watch_loop",
]

log = logging.getLogger("lb.proxy")

LINGER_SECONDS = 2.0
"""How long a connection closed with an unread request body is drained first, so that the
client reads our 4xx instead of a TCP reset."""
SWEEP_INTERVAL = 5.0
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_HEAD_END = re.compile(rb"\n\r?\n")
"""The blank line that ends a request head (also with bare LF line ends, which the parser
refuses: they still end the count)."""
_TOO_MANY_HEADERS = http1.RemoteProtocolError("too many header lines", error_status_hint=431)
_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""A first byte that starts an HTTP method (``GET``, ``POST``, HTTP/2's ``PRI``)."""


async def accept_loop(shared: Shared, listener: AnyListener, clients: trio.Nursery) -> None:
    """Accept on ``listener`` until cancelled; each client runs in ``clients``."""
    https = is_https(listener)
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY_ERRNOS:
                logs.event("accept_failed", logging.WARNING, error=str(exc), pause=0.1)
                await trio.sleep(0.1)
                continue
            raise
        if len(shared.clients) >= shared.max_connections and not _make_room(shared):
            shared.refused += 1
            _log_cap(shared)
            _close_now(stream)
            continue
        client = Client(stream, https)
        shared.clients.add(client)  # now, so that the next accept already counts it
        clients.start_soon(serve_client, shared, client)


def _make_room(shared: Shared) -> bool:
    """Close a client connection to make room for a new one (the rule is
    :func:`lb.proxy.capacity.make_room`); False if none may be closed."""
    now = trio.current_time()
    slow = shared.slow
    if slow:
        # ``slow`` is refreshed once a tick: a body that became whole since (its request now
        # waits on the endpoint) is no longer the client's delay, and must not be chosen.
        for done in [c for c in slow if c.exchange is None or c.exchange.req_done]:
            del slow[done]
    readers = shared.readers
    if readers:
        # Listed once a tick, slowest first: a response that ended since, or whose client
        # took enough of it to be above the rate, or that now waits on its endpoint, must
        # not be chosen.  Dropped from the front only, until one is still slow.
        limits = shared.engine.config.engine.limits
        rate = limits.min_response_rate or capacity.RESPONSE_RATE
        grace = limits.min_response_rate_grace
        while readers:
            first = next(iter(readers))
            if _reading_slowly(first, rate, grace):
                break
            del readers[first]
    client = capacity.make_room(shared.idle, shared.heads, now, capacity.HEAD_GRACE, slow, readers)
    if client is None:
        return False
    shared.idle.pop(client, None)
    shared.heads.pop(client, None)
    if client in shared.slow:  # a request body too slow: answered 408, counted, logged
        del shared.slow[client]
        _close_slow(shared, client, SlowBody.CONNECTION_CAP)
    elif client in readers:  # a response taken too slowly: cut, counted, logged
        del readers[client]
        _close_slow_read(shared, client, SlowRead.CONNECTION_CAP)
    shared.clients.discard(client)
    client.watchdog.cancel()
    shared.shed += 1
    _log_cap(shared)
    return True


def _log_cap(shared: Shared) -> None:
    if shared.cap_log.due(trio.current_time(), SWEEP_INTERVAL):
        logs.event(
            "connection_cap_reached",
            logging.WARNING,
            max_connections=shared.max_connections,
            shed=shared.shed,
            refused=shared.refused,
        )


async def sweep_loop(shared: Shared) -> None:
    """Close pooled upstream connections idle too long, every ``SWEEP_INTERVAL``."""
    while True:
        await trio.sleep(SWEEP_INTERVAL)
        shared.pool.sweep()


async def watch_loop(shared: Shared) -> None:
    """Cancel the connections whose deadline passed (lb/proxy/watchdog.py), every tick,
    until the proxy has drained, and judge the responses blocked on their client
    (:func:`watch_clients`); judge the request bodies being read (:func:`judge_bodies`).
    The tick grows with all three, so that the loop stays a small share of a core."""
    drained = shared.drained
    last = trio.current_time()
    while not drained.is_set():
        limits = shared.engine.config.engine.limits
        every = tick(
            len(shared.clients),
            limits.idle_timeout,
            limits.request_timeout,
            clocks=len(shared.bodies) + shared.blocked_writes,
        )
        with trio.move_on_after(every):
            await drained.wait()
        now = trio.current_time()
        # A tick late because the process was busy counts as at most two: bytes that
        # waited in the kernel for us are not the client's delay.
        seconds = min(now - last, 2 * every)
        watch_clients(shared, now, seconds)
        if shared.bodies:
            judge_bodies(shared, seconds)
        last = now


def watch_clients(shared: Shared, now: float, seconds: float) -> None:
    """Cancel every connection whose deadline is ``now`` or earlier; advance by ``seconds``
    the rate clock of every response write blocked on its client, and judge the write: with
    ``limits.min_response_rate`` set, a client taking its response slower than that is cut;
    without, it is listed in ``Shared.readers``, judged at ``capacity.RESPONSE_RATE``,
    slowest first, for the connection cap to close (docs/proxy.md, "Slow response reads").

    One pass over the connections does both: the flag a response write sets is all a
    response pays, no registration per response (lb/proxy/watchdog.py).
    """
    limits = shared.engine.config.engine.limits
    enforced = limits.min_response_rate
    rate = enforced or capacity.RESPONSE_RATE
    grace = limits.min_response_rate_grace
    found: list[tuple[float, Client]] = []
    blocked = 0
    for client in shared.clients:
        watchdog = client.watchdog
        if watchdog.due <= now:
            watchdog.cancel()
            continue
        clock = client.send_clock
        if not clock.waiting:
            continue
        blocked += 1
        ex = client.exchange
        if ex is None or clock.closed_by:
            continue
        body = ex.clock
        if body is not None and body.closed_by:
            continue  # already closed for its request body: one cause, counted once
        if clock.seen:
            clock.advance(seconds)
        else:
            # The write may have begun just before this tick: its first tick is not
            # charged, so a fast client is never cut for a tick it did not hold the write.
            clock.seen = True
        if clock.slow(clock.size, rate, grace):
            if enforced:
                _close_slow_read(shared, client, SlowRead.MIN_RESPONSE_RATE)
                watchdog.cancel()
            else:
                found.append((clock.size / clock.elapsed, client))
    shared.blocked_writes = blocked
    if found:
        found.sort(key=operator.itemgetter(0))
        shared.readers = {client: None for _, client in found}
    elif shared.readers:
        shared.readers = {}


def _reading_slowly(client: Client, rate: float, grace: float) -> bool:
    """Whether ``client``'s response is still blocked on it, below ``rate``."""
    ex = client.exchange
    clock = client.send_clock
    return (
        ex is not None
        and clock.waiting
        and not clock.closed_by
        and clock.slow(clock.size, rate, grace)
    )


def judge_bodies(shared: Shared, seconds: float) -> None:
    """Advance the rate clock of every request body being read by ``seconds``, and judge
    it: with ``limits.min_body_rate`` set, a body slower than that is closed (408 when no
    response started, else cut); without, it is only listed in ``Shared.slow``, judged at
    ``capacity.BODY_RATE``, for the connection cap to close first (docs/proxy.md, "Slow request
    bodies")."""
    limits = shared.engine.config.engine.limits
    enforced = limits.min_body_rate
    rate = enforced or capacity.BODY_RATE
    grace = limits.min_body_rate_grace
    slow = shared.slow
    # No copy of ``bodies`` per tick: nothing below adds to it or takes from it (a cancel
    # takes effect once this returns; only ``slow`` changes).
    for client, clock in shared.bodies.items():
        ex = client.exchange
        if ex is None or clock.closed_by or client.send_clock.closed_by:
            # Closed already, for this body or for a response taken too slowly (the
            # endpoint answered while the body was still read, and both clocks ran): one
            # cause, counted once, and the record says the one whose hook fired.
            continue
        if ex.req_done:  # the body is whole: nothing of it is awaited any more
            if slow:
                slow.pop(client, None)
            continue
        clock.advance(seconds)
        if clock.slow(ex.record.bytes_in, rate, grace):
            if enforced:
                slow.pop(client, None)
                _close_slow(shared, client, SlowBody.MIN_BODY_RATE)
                client.watchdog.cancel()
            elif client not in slow:
                slow[client] = None
        elif slow:
            slow.pop(client, None)


def _close_slow(shared: Shared, client: Client, closed_by: SlowBody) -> None:
    """Mark ``client``'s request as closed for a slow body (the caller cancels it; the
    timeout handler answers 408 when it can), count it and log it at most every
    ``SWEEP_INTERVAL``."""
    ex = client.exchange
    clock = shared.bodies.get(client)
    if ex is None or clock is None or client.send_clock.closed_by:
        return
    clock.closed_by = closed_by
    shared.slow_bodies += 1
    shared.hooks.slow_body(closed_by)
    if shared.slow_log.due(trio.current_time(), SWEEP_INTERVAL):
        logs.event(
            "request_body_too_slow",
            logging.WARNING,
            peer=client.peer,
            closed_by=closed_by,
            received=ex.record.bytes_in,
            seconds=round(clock.elapsed, 3),
            slow_bodies=shared.slow_bodies,
        )


def _close_slow_read(shared: Shared, client: Client, closed_by: SlowRead) -> None:
    """Mark ``client``'s response as cut for being taken too slowly (the caller cancels
    it; the timeout handler records ``read_too_slow``), count it and log it at most every
    ``SWEEP_INTERVAL``."""
    ex = client.exchange
    if ex is None or (ex.clock is not None and ex.clock.closed_by):
        return
    clock = client.send_clock
    clock.closed_by = closed_by
    shared.slow_reads += 1
    shared.hooks.slow_read(closed_by)
    if shared.read_log.due(trio.current_time(), SWEEP_INTERVAL):
        logs.event(
            "response_read_too_slow",
            logging.WARNING,
            peer=client.peer,
            closed_by=closed_by,
            sent=ex.record.bytes_out,
            write=clock.size,
            seconds=round(clock.elapsed, 3),
            slow_reads=shared.slow_reads,
        )


def close_idle_clients(shared: Shared) -> None:
    """Close the connections waiting for a next request (shutdown)."""
    for client in list(shared.idle):
        client.watchdog.cancel()


async def drain_deadline(shared: Shared, seconds: float) -> None:
    """At the drain deadline, end every request still in flight with a 503 (where no
    response has started) and ``Connection: close``, rather than a bare close: a client
    can tell "shutting down, try again" from a crash."""
    if shared.clients:
        with trio.move_on_after(seconds):
            await shared.drained.wait()
    if not shared.clients:
        return
    shared.expired = True
    for client in list(shared.clients):
        client.watchdog.cancel()


async def serve_client(shared: Shared, client: Client) -> None:
    """The keep-alive loop of one client connection; never raises.

    Every timeout of the connection is one deadline on ``client.watchdog``: pushed ahead
    before each wait (see lb/proxy/state.py), enforced by :func:`watch_loop`, handled here
    when it fires.
    """
    shared.hooks.connection(1)
    linger = False
    stream = client.stream
    try:
        client.peer = _peer_ip(stream)
        limits = shared.engine.config.engine.limits
        conn = http1.Connection(
            http1.SERVER,
            max_incomplete_event_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
        )
        watchdog = client.watchdog
        ended: float | None = None  # when the previous request was settled
        with watchdog.scope:
            if client.https:
                watchdog.push(limits.idle_timeout)
                started = await _tls_start(shared, client)
                if started is not _Start.TLS:
                    if started is _Start.PLAIN:
                        # Answered 400: the plain-HTTP input is drained below, once the
                        # connection no longer counts against the cap.
                        assert isinstance(stream, trio.SSLStream)
                        stream = stream.transport_stream
                        linger = True
                    return
            async with trio.open_nursery() as client.tasks:
                while not shared.draining or conn.their_state is not http1.IDLE:
                    watchdog.push(limits.idle_timeout, ended)
                    event = await _read_head(shared, client, conn)
                    if event is None:
                        # Unread input after an answer of ours (a 400, a 431): drain it
                        # first, or the kernel's reset may destroy the answer.
                        linger = conn.their_state is http1.ERROR or conn.our_state not in (
                            http1.IDLE,
                            http1.CLOSED,
                        )
                        break
                    keep = await exchange(shared, client, conn, event)
                    ended = settle(shared, client)
                    if not keep or conn.our_state is not http1.DONE:
                        linger = conn.their_state is http1.SEND_BODY
                        break
                    if conn.their_state is not http1.DONE:
                        linger = True
                        break
                    conn.start_next_cycle()
        if watchdog.fired and client.exchange is not None:
            ex = client.exchange
            answered = await timed_out(ex)
            # A body too slow may still be arriving: drain it a moment first, or the reset
            # that closing with unread input makes may destroy the 408.  A response that
            # had started is cut, not drained: there is no answer to protect.
            linger = answered and ex.clock is not None and bool(ex.clock.closed_by)
    except Exception:  # hostile input must never become a traceback to the client
        # Reaching this means a failure no handler above answered (the client saw a closed
        # connection, not a status): a bug or a degraded mode, so it is logged loudly (the
        # exception is the event's ``error`` field, lb/logs.py).
        log.warning("client_connection_failed", exc_info=True)
    except BaseException:
        # A Cancelled (maybe in a group from the connection's nursery): only the
        # clients nursery cancels from outside, so the drain deadline passed.
        if client.exchange is not None:
            client.exchange.record.error = RequestError.SHUTDOWN
        raise
    finally:
        settle(shared, client)
        shared.clients.discard(client)
        shared.idle.pop(client, None)
        if shared.draining and not shared.clients:
            shared.drained.set()
        try:
            await _close_client(stream, linger=linger)
        finally:
            # Under cancellation the await above raises at once (after closing the socket);
            # the count must still go down.
            shared.hooks.connection(-1)


def settle(shared: Shared, client: Client) -> float | None:
    """Settle the request in progress: counters, upstream connection, report.  Returns the
    trio time it ended at (None without a request), from which the connection is idle.

    Synchronous, so that it also runs under cancellation (shutdown past the drain
    deadline) and nothing leaks.
    """
    ex = client.exchange
    if ex is None:
        return None
    client.exchange = None
    if ex.clock is not None:
        shared.bodies.pop(client, None)
        shared.slow.pop(client, None)
    if shared.readers:
        shared.readers.pop(client, None)
    if ex.endpoint is not None:
        shared.engine.live.finished(ex.endpoint)
        ex.endpoint = None
    if ex.up is not None:
        shared.pool.discard(ex.up)
        ex.up = None
    record = ex.record
    now = trio.current_time()
    record.duration = now - ex.started
    shared.hooks.request_done(record)
    return now


class _HeadLines:
    """Counts the lines of a request head as its bytes arrive (see ``_read_head``)."""

    __slots__ = ("done", "limit", "lines", "tail")

    def __init__(self, max_headers: int) -> None:
        self.limit = max_headers + 1  # the request line
        self.lines = 0
        self.tail = b""
        self.done = False

    def feed(self, data: bytes | bytearray) -> bool:
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


async def _read_head(
    shared: Shared, client: Client, conn: http1.Connection
) -> http1.Request | None:
    """The next request head, or None when the connection should close.

    Header lines are counted as the bytes arrive, before llhttp parses the head, so that a
    head of thousands of tiny headers is refused (431) without the cost of parsing it (the
    parser counts them too, for a pipelined head already received with the previous
    request).
    """
    stream = client.stream
    first = True
    partial = False
    counter = _HeadLines(shared.engine.config.engine.limits.max_headers)
    try:
        while True:
            try:
                event = conn.next_event()
            except http1.RemoteProtocolError as exc:
                await reject(shared, client, conn, exc)
                return None
            if event is http1.NEED_DATA:
                if first:
                    if shared.draining and conn.their_state is http1.IDLE:
                        return None
                    shared.idle[client] = None
                elif not partial:
                    # Part of a head came, not all of it: from now on the connection cap
                    # may close this connection for a new one once the head is overdue.
                    partial = True
                    shared.heads[client] = trio.current_time()
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                finally:
                    shared.idle.pop(client, None)
                if client not in shared.clients:
                    # Closed for a newcomer at the cap in the round these bytes came: a
                    # head completed now must not start a request (nor count past the cap).
                    return None
                first = False
                if counter.feed(data):
                    await reject(shared, client, conn, _TOO_MANY_HEADERS)
                    return None
                conn.receive_data(data)
                if not data and conn.their_state is not http1.IDLE:
                    return None  # EOF inside a head: nobody left to answer
                continue
            if type(event) is http1.Request:
                return event
            return None  # ConnectionClosed or PAUSED
    finally:
        if partial:
            shared.heads.pop(client, None)


class _Start(enum.Enum):
    """How :func:`_tls_start` left a connection."""

    TLS = enum.auto()
    """Handshake done: serve requests over TLS."""
    PLAIN = enum.auto()
    """Plain HTTP, answered 400 over TCP: drain its input and close."""
    CLOSE = enum.auto()
    """Gone, refused or shutting down: close."""


async def _tls_start(shared: Shared, client: Client) -> _Start:
    """Start a connection accepted on an HTTPS listener.

    The first byte, peeked, tells a TLS ClientHello (0x16, a handshake record) from plain
    HTTP (a method's capital letter), as nginx tells them apart: plain HTTP is answered 400
    in plain HTTP, saying why, and the caller drains and closes the connection as it does
    after any refusal (at most 4 MiB and 2 s, once the connection no longer counts against
    the cap).  Anything else goes to the handshake, which refuses it.  The wait for the
    first byte and the handshake are bounded by ``idle_timeout`` (the caller's watchdog),
    and count as waiting for a request: shutdown and the connection cap may close the
    connection.  A handshake that fails (refused, reset, or cut by ``idle_timeout``) is
    counted and logged (:func:`_tls_failed`); one closed by shutdown or the cap is not.
    """
    if shared.draining:
        return _Start.CLOSE  # accepted as the drain began: close_idle_clients missed it
    stream = client.stream
    assert isinstance(stream, trio.SSLStream)
    raw = stream.transport_stream
    shared.idle[client] = None
    try:
        try:
            first = await raw.socket.recv(1, socket.MSG_PEEK)
        except OSError:
            return _Start.CLOSE
        if not first:
            return _Start.CLOSE  # connected and left (a TCP health check)
        if first[0] in _METHOD_START:
            shared.idle.pop(client, None)
            shared.tls_plain += 1
            _tls_failed(shared, client, TlsFailure.PLAIN_HTTP, "plain HTTP request")
            try:
                await raw.send_all(PLAIN_HTTP_ON_TLS)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return _Start.CLOSE
            return _Start.PLAIN
        try:
            await stream.do_handshake()
        except trio.Cancelled:
            if client in shared.clients and not shared.draining:  # not shutdown or the cap
                _tls_failed(shared, client, TlsFailure.TIMED_OUT, "timed out")
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            # A clean close (FIN) mid-handshake is an SSLEOFError, a kind of SSLError: the
            # client left, it was not refused.
            if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
                kind = TlsFailure.HANDSHAKE_FAILED
                reason = cause.reason or type(cause).__name__
            else:
                kind, reason = TlsFailure.CONNECTION_LOST, "connection lost"
            _tls_failed(shared, client, kind, reason)
            return _Start.CLOSE
    finally:
        shared.idle.pop(client, None)
    return _Start.TLS


def _tls_failed(shared: Shared, client: Client, kind: TlsFailure, reason: str) -> None:
    """Count a failed client TLS handshake (``kind`` for the metrics hook, ``reason`` for
    the log); log it at most every ``SWEEP_INTERVAL``, with the totals, so that a flood of
    them cannot flood the log."""
    shared.tls_failed += 1
    shared.hooks.tls_failed(kind)
    if shared.tls_log.due(trio.current_time(), SWEEP_INTERVAL):
        logs.event(
            "client_tls_failed",
            logging.INFO,
            peer=client.peer,
            reason=reason,
            failed=shared.tls_failed,
            plain_http=shared.tls_plain,
        )


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


def close_listener(listener: AnyListener) -> None:
    """Close a listening socket synchronously (also under cancellation)."""
    inner = listener.transport_listener if isinstance(listener, TlsListener) else listener
    if isinstance(inner, trio.SocketListener):
        inner.socket.close()


async def _close_client(stream: trio.abc.Stream, *, linger: bool) -> None:
    """Close a client connection; with ``linger``, half-close and drain unread input first.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    4xx we just wrote before the client reads it.  Over TLS there is no half-close (a
    close_notify ends the connection both ways): the input is drained, decrypted and
    dropped, without it, until the client closes, the limit or the linger's end.
    """
    try:
        if linger and isinstance(stream, (trio.SocketStream, trio.SSLStream)):
            with trio.move_on_after(LINGER_SECONDS):
                if isinstance(stream, trio.SocketStream):
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
