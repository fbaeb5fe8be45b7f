"""HTTP/1.1 for the proxy's hot path: httptools (llhttp, in C) parses, plain bytes frame.

Why this module: h11 cost about 38 us per request on the client side and 40 us on the
upstream side of every proxied exchange, a quarter of the proxy's CPU per request; llhttp, the
parser Node.js uses (httptools is its Python binding, the one uvicorn uses), does the same
parsing in 1-2 us.  The proxy modules speak to this module the way they spoke to h11 (events
such as :class:`Request`, :class:`Data` and :class:`EndOfMessage`, ``next_event``, ``send``,
the two parties' states), so the exchange reads as before and every protection it has stays
where it was: this module only replaces the parsing and the framing underneath.

What it adds to llhttp, and why:

* httptools calls back per header and per body piece; :class:`_Reader` turns those calls into
  a queue of events, one message after the other (pipelined requests wait in the queue until
  :meth:`Connection.start_next_cycle`), and a parse error into an error event at its place in
  that queue, so that a request is answered before a malformed one that follows it.
* limits llhttp does not have: the head size (431, like h11's ``max_incomplete_event_size``)
  and the header count (431), checked as the head is parsed.
* the HTTP version: llhttp reads any one-digit ``major.minor`` (its ``lenient_version``: it
  refuses all but 0.9, 1.0, 1.1 and 2.0 without it, each as a malformed message, and the
  version is all that changes).  A higher minor of HTTP/1 (``HTTP/1.2``) is read as HTTP/1.1,
  as RFC 9112 §2.6 asks of a recipient, and forwarded as HTTP/1.1; a request whose major
  version is not 1 is answered 505 (RFC 9110 §15.6.6), a request line without a version
  400 (:func:`_version_refusal`).
* the announced size of the chunk being read (:meth:`Connection.chunk_left`), so that a chunk
  larger than the body may be is refused before its bytes arrive (:class:`_Chunks`, which only
  follows the size lines llhttp validates).
* what llhttp leaves to its caller: a response to HEAD has no body, a response framed by the
  connection's close ends at EOF, and an upgrade request with a Content-Length body keeps that
  body before the switch.
* writing: heads are joined bytes, bodies framed by Content-Length or chunked (a client that
  cannot take chunked gets a close-delimited body and ``Connection: close``); a head with a
  control character in it is refused (:class:`LocalProtocolError`), as h11 refused one.

Keep-alive follows h11 (and RFC 9112 for HTTP/1.1): an HTTP/1.0 message or ``Connection:
close`` on either side makes the connection close after the exchange.
"""

from __future__ import annotations

import re
from collections import deque
from enum import Enum
from typing import Final

import httptools

__all__ = [
    "CLIENT",
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MUST_CLOSE",
    "NEED_DATA",
    "PAUSED",
    "SEND_BODY",
    "SEND_RESPONSE",
    "SERVER",
    "SWITCHED_PROTOCOL",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "InformationalResponse",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
]

Header = tuple[bytes, bytes]


class State(Enum):
    """Where one party of the connection is (h11's names)."""

    IDLE = "idle"
    SEND_RESPONSE = "send_response"
    SEND_BODY = "send_body"
    DONE = "done"
    MUST_CLOSE = "must_close"
    CLOSED = "closed"
    ERROR = "error"
    SWITCHED_PROTOCOL = "switched_protocol"


IDLE: Final = State.IDLE
SEND_RESPONSE: Final = State.SEND_RESPONSE
SEND_BODY: Final = State.SEND_BODY
DONE: Final = State.DONE
MUST_CLOSE: Final = State.MUST_CLOSE
CLOSED: Final = State.CLOSED
ERROR: Final = State.ERROR
SWITCHED_PROTOCOL: Final = State.SWITCHED_PROTOCOL


class Role(Enum):
    """Which end of the connection we are."""

    CLIENT = "client"
    SERVER = "server"


CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER


class _Signal(Enum):
    NEED_DATA = "need_data"
    """Nothing to return until more bytes arrive."""
    PAUSED = "paused"
    """The peer's message is complete; the next one waits for ``start_next_cycle``."""


NEED_DATA: Final = _Signal.NEED_DATA
PAUSED: Final = _Signal.PAUSED


class ProtocolError(Exception):
    """A message that breaks HTTP/1.1; ``error_status_hint`` is the status to answer."""

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed (or too large)."""


class LocalProtocolError(ProtocolError):
    """We were about to send something malformed: a control character in a head, a body
    that does not match its Content-Length."""


class Request:
    """A request head; names are lowercase."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self, *, method: bytes, target: bytes, headers: list[Header], http_version: bytes = b"1.1"
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version


class Response:
    """A final (2xx-5xx) response head; names are lowercase."""

    __slots__ = ("headers", "http_version", "reason", "status_code")

    def __init__(
        self,
        *,
        status_code: int,
        headers: list[Header],
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.reason = reason
        self.http_version = http_version


class InformationalResponse(Response):
    """A 1xx response head (100 Continue, 101 Switching Protocols, 103 Early Hints)."""

    __slots__ = ()


class Data:
    """A piece of a message body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    """The end of a message body (or of a bodiless message)."""

    __slots__ = ()


class ConnectionClosed:
    """The peer closed the connection between messages."""

    __slots__ = ()


Event = Request | Response | InformationalResponse | Data | EndOfMessage | ConnectionClosed
EOM: Final = EndOfMessage()
_CLOSED_EVENT: Final = ConnectionClosed()
_Item = Event | ProtocolError

_HEAD_BYTES = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])
"""The bytes a head may carry: no control character but HTAB (CR and LF are counted apart).
A head is checked by deleting these (``bytes.translate``): anything left is refused.  That
is a fifth of the cost of a regular expression's character class on every head."""
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]+)")
_NO_BODY_STATUS = frozenset({204, 304})
_MAX_CHUNK_LINE = 4096


class _TooManyHeadersError(Exception):
    """Raised inside a header callback: stops llhttp, answered 431."""


class _HeadersOnlyError(Exception):
    """Raised inside the headers callback of a response to HEAD: its body is not read."""


class _VersionError(Exception):
    """Raised inside the headers callback of a request that is neither HTTP/1.1 nor 1.0."""


_VERSION = re.compile(rb"(?:\A|\n)[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/([0-9]+)")
"""The version's major in a request line, however far it arrived (searched only for a refused
version).  Anchored to a line of the request line's shape: a header line cannot match (its
name ends in ``:``), so ``X: a HTTP/2.0`` does not pass for a version."""


class _Chunks:
    """Follows the size lines of a chunked body that llhttp is parsing, only to know how many
    bytes of the current chunk are still to come (llhttp validates; on bytes it refuses, this
    stops following and llhttp's error is what counts)."""

    __slots__ = ("left", "line", "stopped", "to_eol")

    def __init__(self) -> None:
        self.left = 0
        self.line = b""
        self.to_eol = False
        self.stopped = False

    def feed(self, data: bytes | bytearray) -> None:
        i, n = 0, len(data)
        while i < n and not self.stopped:
            if self.left:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.to_eol = True  # the CRLF after the chunk data
                continue
            j = data.find(b"\n", i)
            if j < 0:
                if not self.to_eol:
                    self.line += data[i:]
                    self.stopped = len(self.line) > _MAX_CHUNK_LINE
                return
            if self.to_eol:
                self.to_eol = False
                i = j + 1
                continue
            line, self.line = self.line + data[i:j], b""
            i = j + 1
            m = _CHUNK_SIZE.match(line)
            size = int(m.group(1), 16) if m is not None else 0
            if size == 0:
                self.stopped = True  # the last chunk (or a bad line): trailers follow
            self.left = size


class _Reader:
    """httptools' callbacks, collected into events (see the module docstring)."""

    __slots__ = (
        "begun",
        "chunked",
        "chunks",
        "ended",
        "head_bytes",
        "head_only",
        "head_open",
        "head_start",
        "headers",
        "informational",
        "line_whole",
        "max_head",
        "max_headers",
        "parser",
        "queue",
        "reason",
        "target",
        "until_eof",
        "version",
    )

    def __init__(self, role: Role, max_head: int, max_headers: int) -> None:
        self.queue: deque[_Item] = deque()
        self.headers: list[Header] = []
        self.target = b""
        self.head_open = False
        self.head_bytes = 0
        self.head_start = bytearray()
        """The pieces of a head still open, up to its first line end (see _version_refusal);
        for a pipelined head, from the piece it began in."""
        self.line_whole = role is not SERVER
        """``head_start`` holds a line end: the request line is whole, no more is kept (a
        response's version is not checked: nothing is kept)."""
        self.max_head = max_head
        self.max_headers = max_headers
        self.head_only = False
        self.informational = False
        self.until_eof = False
        self.begun = 0
        """Messages begun in the piece being parsed."""
        self.ended = 0
        """Messages ended in the piece being parsed."""
        self.chunked = False
        """The request just parsed has a chunked body (its size lines are followed next)."""
        self.chunks: _Chunks | None = None
        self.reason = b""
        self.version = b"1.1"
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser
        if role is SERVER:
            self.parser = httptools.HttpRequestParser(self)
            # Content-Length with Transfer-Encoding is parsed, so that the exchange refuses
            # it itself (400, closed, recorded as ``ambiguous_framing``; docs/proxy.md).  Any
            # one-digit version is parsed, so that on_headers_complete decides (framing in
            # llhttp is the same for every version past 1.0).
            self.parser.set_dangerous_leniencies(lenient_chunked_length=True, lenient_version=True)
        else:
            self.parser = httptools.HttpResponseParser(self)

    # ---------------------------------------------------------------- callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.target = b""
        self.head_open = True
        self.until_eof = False
        self.chunks = None
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_open:
            # A chunked body's trailer section: llhttp reports its fields here too.  They are
            # never headers (RFC 9110 §6.5.1: merging them would let a trailer Host steer the
            # request, or a trailer Set-Cookie reach the client); the proxy drops them.
            return
        headers = self.headers
        if len(headers) >= self.max_headers:
            raise _TooManyHeadersError
        if value and value[-1] in b" \t":
            value = value.rstrip(b" \t")
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.head_bytes = 0
        parser = self.parser
        version = parser.get_http_version()
        self.version = b"1.1" if version == "1.1" else version.encode("ascii")
        if isinstance(parser, httptools.HttpRequestParser):
            if self.version != b"1.1" and self.version != b"1.0":
                if version[:2] != "1.":
                    raise _VersionError
                self.version = b"1.1"  # RFC 9112 §2.6: a higher minor is read as ours
            if self.head_start:
                self.head_start = bytearray()
                self.line_whole = False
            hosts = 0
            for name, value in self.headers:
                if name == b"host":
                    hosts += 1
                elif name == b"transfer-encoding":
                    if value.lower() != b"chunked":
                        # RFC 9112 §6.3: a request whose last coding is not chunked has
                        # no length; another coding than chunked is not supported either.
                        raise RemoteProtocolError("unsupported Transfer-Encoding")
                    self.chunked = True
            if hosts > 1 or (hosts == 0 and self.version == b"1.1"):
                # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one before.
                raise RemoteProtocolError("missing or repeated Host header")
            self.queue.append(
                Request(
                    method=parser.get_method(),
                    target=self.target,
                    headers=self.headers,
                    http_version=self.version,
                )
            )
            return
        status = parser.get_status_code()
        self.informational = status < 200
        if self.informational:
            self.queue.append(
                InformationalResponse(
                    status_code=status,
                    headers=self.headers,
                    reason=self.reason,
                    http_version=self.version,
                )
            )
            return
        self.queue.append(
            Response(
                status_code=status,
                headers=self.headers,
                reason=self.reason,
                http_version=self.version,
            )
        )
        if self.head_only:
            raise _HeadersOnlyError
        if status not in _NO_BODY_STATUS:
            framed = False
            for name, _ in self.headers:
                if name == b"content-length" or name == b"transfer-encoding":
                    framed = True
            self.until_eof = not framed

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_body(self, body: bytes) -> None:
        self.queue.append(Data(body))

    def on_message_complete(self) -> None:
        self.ended += 1
        if not self.informational:
            self.queue.append(EOM)
        self.informational = False
        self.until_eof = False


class Connection:
    """One HTTP/1.1 connection as the proxy sees it, from either end (h11's shape).

    Args:
        role: ``SERVER`` for client connections (we read requests), ``CLIENT`` for upstream
            connections (we read responses).
        max_incomplete_event_size: the largest head accepted (431 past it).
        max_headers: the most header lines a head may have (431 past it).
    """

    def __init__(
        self,
        role: Role,
        max_incomplete_event_size: int = 65536,
        max_headers: int = 1000,
    ) -> None:
        self.role = role
        self.their_state = IDLE
        self.our_state = IDLE
        self.they_are_waiting_for_100_continue = False
        self._max_head = max_incomplete_event_size
        self._max_headers = max_headers
        self._reader = _Reader(role, max_incomplete_event_size, max_headers)
        self._eof = False
        self._broken = False
        """llhttp stopped (an error, or a response to HEAD): a new parser for the next
        message."""
        self._keep = True
        self._method = b""
        self._switched = False
        self._rest = b""
        """Bytes after an upgrade (or unsolicited after a response): not parsed."""
        self._body_left = 0
        """Bytes of an upgrade request's Content-Length body still to come (see docstring)."""
        self._out_framing = _NONE
        self._out_left = 0
        self._peer_version = b"1.1"

    # ---------------------------------------------------------------- reading

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed (after an upgrade), and whether EOF was seen."""
        return self._rest, self._eof

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer (``b""`` is EOF)."""
        if not data:
            self._eof = True
            reader = self._reader
            if reader.until_eof and not self._broken:
                reader.until_eof = False
                self._keep = False  # the close was the body's end
                reader.queue.append(EOM)
            return
        if self._switched or self._broken:
            self._rest += data
            return
        if self._body_left:
            data = self._upgrade_body(bytes(data))
            if not data:
                return
        self._feed(data)

    def _feed(self, data: bytes | bytearray) -> None:
        reader = self._reader
        chunks = reader.chunks
        if chunks is not None:
            chunks.feed(data)
        was_open = reader.head_open
        reader.begun = reader.ended = 0
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(bytes(data[exc.args[0] :]))
            return
        except httptools.HttpParserCallbackError as exc:
            self._broken = True
            cause = exc.__context__
            if isinstance(cause, _HeadersOnlyError):
                reader.queue.append(EOM)
                if not data.endswith(b"\r\n\r\n"):
                    self._rest = b"?"  # bytes after the head: the connection is not reused
                return
            if isinstance(cause, _TooManyHeadersError):
                reader.queue.append(RemoteProtocolError("too many header lines", 431))
                return
            if isinstance(cause, _VersionError):
                reader.queue.append(_version_refusal(reader.head_start + data))
                return
            if isinstance(cause, ProtocolError):
                reader.queue.append(cause)
                return
            reader.queue.append(RemoteProtocolError(str(exc)))
            return
        except httptools.HttpParserError as exc:
            self._broken = True
            if self.role is SERVER and str(exc) in _PREFACE_ERRORS:
                reader.queue.append(_version_refusal(reader.head_start + data))
                return
            reader.queue.append(RemoteProtocolError(str(exc) or "malformed message"))
            return
        if reader.head_open and not reader.ended:
            # A head begun after another message ended in this piece (pipelining) is counted
            # from the next piece on: llhttp gives no offsets, and counting the whole piece
            # refused a pipelined head behind a large body.  The piece is at most what one
            # read returns, and a request head's real size is checked once it is parsed
            # (431, lb/proxy/exchange.py).
            reader.head_bytes += len(data)
            if not reader.line_whole:  # the request line's pieces, for its version
                reader.head_start += data
                reader.line_whole = b"\n" in data
            if reader.head_bytes > self._max_head:
                self._broken = True
                reader.queue.append(RemoteProtocolError("head too large", 431))
        elif reader.head_open and self.role is SERVER:
            # A pipelined head begun in this piece: its request line is somewhere in it,
            # after the end of the message before (no offsets), and may go on in the next
            # pieces (kept until one brings a line end: one read plus at most max_head).
            reader.head_start = bytearray(data)
            reader.line_whole = False
        if reader.chunked:
            # The body of the request just parsed is chunked: follow its size lines from
            # the end of its head, when that head is the only one begun, at the start of
            # this piece (else the sizes are checked as the chunks arrive, a little later).
            reader.chunked = False
            chunks = reader.chunks = _Chunks()
            end = data.find(b"\r\n\r\n")
            if end >= 0 and reader.begun == 1 and not was_open:
                chunks.feed(data[end + 4 :])
            else:
                chunks.stopped = True

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade (or a CONNECT): the rest is not HTTP, unless it is
        the Content-Length body of an upgrade request (llhttp skips an upgrade's body)."""
        queue = self._reader.queue
        self._rest = rest
        self._switched = True
        if self.role is not SERVER:
            return
        request = next((e for e in reversed(queue) if type(e) is Request), None)
        if request is None:
            return
        length = 0
        for name, value in request.headers:
            if name == b"transfer-encoding":
                while queue and queue.pop() is not request:
                    pass  # the request is refused instead
                queue.append(RemoteProtocolError("an upgrade request with a chunked body"))
                return
            if name == b"content-length" and value.isdigit():
                length = int(value)
        if length and queue and type(queue[-1]) is EndOfMessage:
            queue.pop()  # the end comes after the body
            self._body_left = length
            self._switched = False
            self._rest = b""
            if rest:
                self._upgrade_body(rest)

    def _upgrade_body(self, data: bytes) -> bytes:
        """Take the Content-Length body of an upgrade request from ``data``; the rest."""
        take = min(self._body_left, len(data))
        queue = self._reader.queue
        queue.append(Data(data[:take]))
        self._body_left -= take
        if not self._body_left:
            queue.append(EOM)
            self._switched = True
            self._rest += data[take:]
            return b""
        return data[take:]

    def next_event(self) -> Event | _Signal:
        """The next event from the peer, ``NEED_DATA`` or ``PAUSED``; raises
        :class:`RemoteProtocolError` for a malformed message."""
        their = self.their_state
        if their is DONE or their is MUST_CLOSE or their is SWITCHED_PROTOCOL:
            return PAUSED
        if their is ERROR:
            raise RemoteProtocolError("the peer's message was malformed")
        queue = self._reader.queue
        if not queue:
            if self._eof:
                if their is IDLE:
                    self.their_state = CLOSED
                    return _CLOSED_EVENT
                if their is CLOSED:
                    return _CLOSED_EVENT
                self.their_state = ERROR
                raise RemoteProtocolError("peer closed the connection in a message")
            return NEED_DATA
        item = queue.popleft()
        kind = type(item)
        if kind is Data:
            self.they_are_waiting_for_100_continue = False
        elif kind is EndOfMessage:
            self.they_are_waiting_for_100_continue = False
            self.their_state = DONE if self._keep else MUST_CLOSE
            if self.our_state is DONE and not self._keep:
                self.our_state = MUST_CLOSE
        elif kind is Request:
            assert isinstance(item, Request)
            self._on_request(item)
        elif kind is Response:
            assert isinstance(item, Response)
            self.their_state = SEND_BODY
            if item.http_version != b"1.1" or _says_close(item.headers):
                self._keep = False
        elif kind is InformationalResponse:
            assert isinstance(item, InformationalResponse)
            if item.status_code == 101:
                self.their_state = SWITCHED_PROTOCOL
        elif isinstance(item, ProtocolError):
            self.their_state = ERROR
            raise item
        return item  # type: ignore[return-value]

    def _on_request(self, request: Request) -> None:
        self.their_state = SEND_BODY
        self.our_state = SEND_RESPONSE
        self._method = request.method
        self._peer_version = request.http_version
        keep = request.http_version == b"1.1"
        expect = False
        for name, value in request.headers:
            if name == b"connection":
                keep = keep and b"close" not in value.lower()
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
        self._keep = keep
        self.they_are_waiting_for_100_continue = expect and request.http_version == b"1.1"

    def chunk_left(self) -> int:
        """Bytes of the request body chunk being read that are still to come (0 if none)."""
        chunks = self._reader.chunks
        return 0 if chunks is None else chunks.left

    def pending_error(self) -> ProtocolError | None:
        """The parse error already waiting in the queue of this message, if any."""
        for item in self._reader.queue:
            if isinstance(item, ProtocolError):
                return item
            if type(item) is EndOfMessage:
                return None
        return None

    # ---------------------------------------------------------------- writing

    def send(self, event: Event) -> bytes:
        """The bytes of ``event``; raises :class:`LocalProtocolError` for a malformed one."""
        kind = type(event)
        if kind is Data:
            assert isinstance(event, Data)
            return self._data(event.data)
        if kind is EndOfMessage:
            return self._end()
        if kind is Response:
            assert isinstance(event, Response)
            return self._response(event)
        if kind is Request:
            assert isinstance(event, Request)
            return self._request(event)
        if kind is InformationalResponse:
            assert isinstance(event, InformationalResponse)
            self.they_are_waiting_for_100_continue = False
            if event.status_code == 101:
                self.our_state = self.their_state = SWITCHED_PROTOCOL
            line = b"HTTP/1.1 %d %s\r\n" % (event.status_code, event.reason)
            return _head(line, event.headers)
        raise LocalProtocolError(f"cannot send {kind.__name__}")

    def _request(self, request: Request) -> bytes:
        self._method = request.method
        self._reader.head_only = request.method == b"HEAD"
        self.our_state = SEND_BODY
        self._out_framing, self._out_left = _NONE, 0
        for name, value in request.headers:
            if name == b"content-length":
                self._out_framing, self._out_left = _LENGTH, _length(value)
            elif name == b"transfer-encoding":
                self._out_framing = _CHUNKED
        line = request.method + b" " + request.target + b" HTTP/1.1\r\n"
        return _head(line, request.headers)

    def _response(self, response: Response) -> bytes:
        status = response.status_code
        headers = response.headers
        close = not self._keep or _says_close(headers)
        length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                length = _length(value)
        if self._method == b"HEAD" or status in _NO_BODY_STATUS:
            self._out_framing, self._out_left = _LENGTH, 0
        elif length is not None:
            self._out_framing, self._out_left = _LENGTH, length
        elif self._peer_version == b"1.1":
            self._out_framing = _CHUNKED
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        else:
            self._out_framing = _UNTIL_CLOSE
            close = True
        if close:
            self._keep = False
            if self.their_state is DONE:
                self.their_state = MUST_CLOSE
            if not _says_close(headers):
                headers = [(n, v) for n, v in headers if n != b"connection"]
                headers.append((b"connection", b"close"))
        self.they_are_waiting_for_100_continue = False
        self.our_state = SEND_BODY
        return _head(b"HTTP/1.1 %d %s\r\n" % (status, response.reason), headers)

    def _data(self, data: bytes) -> bytes:
        if not data:
            return b""
        framing = self._out_framing
        if framing is _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if framing is _LENGTH:
            self._out_left -= len(data)
            if self._out_left < 0:
                raise LocalProtocolError("too much data for the declared Content-Length")
        return data

    def _end(self) -> bytes:
        framing = self._out_framing
        if framing is _LENGTH and self._out_left:
            raise LocalProtocolError("too little data for the declared Content-Length")
        if framing is _UNTIL_CLOSE:
            self._keep = False
        self.our_state = DONE if self._keep else MUST_CLOSE
        if not self._keep and self.their_state is DONE:
            self.their_state = MUST_CLOSE
        return b"0\r\n\r\n" if framing is _CHUNKED else b""

    # ---------------------------------------------------------------- cycles

    def start_next_cycle(self) -> None:
        """Both messages are done: get ready for the next exchange on this connection."""
        if self.our_state is not DONE or self.their_state is not DONE:
            raise LocalProtocolError("not in a reusable state")
        self.our_state = self.their_state = IDLE
        self._method = b""
        self._keep = True
        self._out_framing, self._out_left = _NONE, 0
        reader = self._reader
        if self._broken:
            pending = reader.queue
            self._reader = _Reader(self.role, self._max_head, self._max_headers)
            self._reader.queue = pending
            self._broken = False
            rest, self._rest = self._rest, b""
            if rest and self.role is CLIENT:
                self._rest = rest  # bytes after a HEAD response: not reused
            elif rest:
                self._feed(rest)
        elif self._switched:
            # An upgrade answered without a switch: what followed is HTTP again.
            self._switched = False
            rest, self._rest = self._rest, b""
            if rest:
                self._feed(rest)

    def has_unread(self) -> bool:
        """Whether anything beyond the finished messages was received (an upstream that
        sends bytes nobody asked for is not reused)."""
        reader = self._reader
        return bool(self._rest or reader.queue or reader.head_open)


_PREFACE_ERRORS = frozenset({"Pause on PRI/Upgrade", "Expected HTTP/2 Connection Preface"})
"""llhttp's errors for HTTP/2's connection preface, ``PRI * HTTP/2.0``, whole or not: the one
version it refuses itself on the request parser (``lenient_version`` lets any other one-digit
version through to ``on_headers_complete``), so refused like the others, 505."""


def _version_refusal(seen: bytes | bytearray) -> RemoteProtocolError:
    """The refusal of a request line llhttp read with a version the proxy does not serve.

    ``seen`` holds the request line (the piece being parsed, after the pieces of a head
    that arrived in several): a version whose major is not 1 (``HTTP/2.0``, ``HTTP/0.9``
    written out, ``HTTP/3.0``) is 505; no version at all (HTTP/0.9's ``GET /``, which
    llhttp takes for 0.9) is 400.  A request line longer than the pieces kept gets 400 too:
    it is refused either way.  (A malformed version, ``HTTP/10.0`` or ``HTTP/1.x``, is
    llhttp's own error, 400, and never reaches here.)
    """
    majors = [int(m[1]) for m in _VERSION.finditer(seen)]
    for major in majors:
        if major != 1:
            return RemoteProtocolError(f"HTTP/{major} is not supported", 505)
    return RemoteProtocolError("invalid HTTP version" if majors else "no HTTP version")


def _says_close(headers: list[Header]) -> bool:
    # A loop rather than any() over a generator: this runs for every head both ways.
    for name, value in headers:  # noqa: SIM110
        if name == b"connection" and b"close" in value.lower():
            return True
    return False


def _length(value: bytes) -> int:
    if not value.isdigit():
        raise LocalProtocolError("bad Content-Length")
    return int(value)


_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3


def _head(first_line: bytes, headers: list[Header]) -> bytes:
    """A message head; a control character in any name or value is refused."""
    head = first_line + b"".join([b"%b: %b\r\n" % h for h in headers]) + b"\r\n"
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise LocalProtocolError("a control character in a message head")
    if head.translate(None, _HEAD_BYTES):
        raise LocalProtocolError("a control character in a message head")
    return head
