"""Where llhttp (lb/proxy/http1.py) parses differently from h11, the proxy still answers 4xx
and closes, never a crash; and the parts of HTTP/1.1 the module adds to llhttp: a response to
HEAD, a close-delimited body, an upgrade request's body, pipelining, the writer's checks."""

from __future__ import annotations

import pytest
import trio
from proxy_support import LB_HOST, Certs, raw_exchange, start_stack

from lb.proxy import http1


@pytest.mark.parametrize(
    "head",
    [
        # obs-fold (h11 unfolded it; RFC 9112 §5.2 lets a server refuse it)
        b"GET / HTTP/1.1\r\nHost: app.example\r\nX-A: a\r\n b\r\n\r\n",
        # bare LF line ends (h11 accepted them)
        b"GET / HTTP/1.1\nHost: app.example\n\n",
        # the same Content-Length twice (h11 accepted it)
        b"POST /sink HTTP/1.1\r\nHost: app.example\r\nContent-Length: 1\r\n"
        b"Content-Length: 1\r\n\r\nx",
        # control characters in a value, a space in a name
        b"GET / HTTP/1.1\r\nHost: app.example\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example\r\nX-A: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.example\r\nX A: b\r\n\r\n",
        # a method llhttp does not know (h11 took any token)
        b"BREW / HTTP/1.1\r\nHost: app.example\r\n\r\n",
        # two Host headers, none in HTTP/1.1
        b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: other.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
        # an upgrade request with a chunked body
        b"GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
)
async def test_heads_llhttp_refuses_are_400_and_close(
    nursery: trio.Nursery, certs: Certs, head: bytes
) -> None:
    stack = await start_stack(nursery, certs, 1)
    answer = await raw_exchange(stack.port, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1
    assert stack.backends[0].seen == []


@pytest.mark.parametrize(
    ("request_line", "status", "error"),
    [
        (b"GET / HTTP/2.0", 505, "version_not_supported"),
        (b"GET / HTTP/0.9", 505, "version_not_supported"),
        (b"GET / HTTP/3.0", 505, "version_not_supported"),
        (b"GET / HTTP/10.0", 400, "bad_request"),  # llhttp reads one digit per number
        (b"GET /", 400, "bad_request"),  # HTTP/0.9's own form: no version
    ],
)
async def test_a_version_other_than_1x_is_refused(
    nursery: trio.Nursery, certs: Certs, request_line: bytes, status: int, error: str
) -> None:
    """RFC 9110 §15.6.6: a major version other than 1 is 505; no version at all is 400."""
    stack = await start_stack(nursery, certs, 1)
    head = request_line + b"\r\nHost: " + LB_HOST.encode() + b"\r\n\r\n"
    for request in (head, request_line + b"\r\n\r\n"):
        answer = await raw_exchange(stack.port, request)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer
        assert b"connection: close" in answer.lower()
    records = await stack.settled()
    assert [(r.status, r.error) for r in records] == [(status, error)] * 2
    assert stack.backends[0].seen == []


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
async def test_a_higher_http1_minor_is_served_as_http11(
    nursery: trio.Nursery, certs: Certs, version: bytes
) -> None:
    """RFC 9112 §2.6: HTTP/1.2 is read as the highest minor the proxy implements, 1.1: kept
    alive, forwarded as HTTP/1.1 (it was refused 400 when llhttp refused the version)."""
    stack = await start_stack(nursery, certs, 1)
    first = b"GET /v HTTP/" + version + b"\r\nHost: " + LB_HOST.encode() + b"\r\n\r\n"
    last = b"GET /w HTTP/" + version + b"\r\nHost: " + LB_HOST.encode()
    answer = await raw_exchange(stack.port, first + last + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer
    seen = stack.backends[0].seen
    assert [(s.target, s.version) for s in seen] == [("/v", "1.1"), ("/w", "1.1")]
    # HTTP/1.1's rules with it: exactly one Host.
    answer = await raw_exchange(stack.port, b"GET / HTTP/" + version + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert len(seen) == 2


async def test_pipelined_requests_are_answered_in_order(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    requests = b"".join(f"GET /p{i} HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode() for i in range(3))
    close = f"GET /last HTTP/1.1\r\nHost: {LB_HOST}\r\nConnection: close\r\n\r\n".encode()
    answer = await raw_exchange(stack.port, requests + close)
    assert answer.count(b"HTTP/1.1 200 ") == 4, answer
    assert [s.target for s in stack.backends[0].seen] == ["/p0", "/p1", "/p2", "/last"]


async def test_a_malformed_request_after_a_good_one_is_answered_after_it(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1)
    good = f"GET /first HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode()
    answer = await raw_exchange(stack.port, good + b"GET / HTTP/1.1\r\nX A: b\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"HTTP/1.1 400 " in answer
    assert [s.target for s in stack.backends[0].seen] == ["/first"]


# ---------------------------------------------------------------------- the module alone


def _events(conn: http1.Connection) -> list[object]:
    out: list[object] = []
    for _ in range(20):
        ev = conn.next_event()
        if ev is http1.NEED_DATA or ev is http1.PAUSED:
            break
        out.append(ev)
    return out


def test_a_response_to_head_has_no_body_and_the_connection_is_reusable() -> None:
    conn = http1.Connection(http1.CLIENT)
    conn.send(http1.Request(method=b"HEAD", target=b"/", headers=[(b"host", b"a")]))
    conn.send(http1.EOM)
    conn.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
    events = _events(conn)
    assert [type(e) for e in events] == [http1.Response, http1.EndOfMessage]
    assert (conn.our_state, conn.their_state) == (http1.DONE, http1.DONE)
    conn.start_next_cycle()
    assert not conn.has_unread()
    conn.send(http1.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    conn.send(http1.EOM)
    conn.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
    assert [type(e) for e in _events(conn)] == [http1.Response, http1.Data, http1.EndOfMessage]


def test_a_close_delimited_response_ends_at_eof_and_is_not_reused() -> None:
    conn = http1.Connection(http1.CLIENT)
    conn.send(http1.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    conn.send(http1.EOM)
    conn.receive_data(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert [type(e) for e in _events(conn)] == [http1.Response, http1.Data]
    conn.receive_data(b" more")
    conn.receive_data(b"")
    events = _events(conn)
    assert [type(e) for e in events] == [http1.Data, http1.EndOfMessage]
    assert conn.their_state is not http1.DONE  # never back to the pool


def test_a_requests_trailer_fields_never_become_its_headers() -> None:
    """A trailer Host must not steer the request, nor any trailer field reach the endpoint
    as a header (RFC 9110 §6.5.1); the body arrives in the same read as the head."""
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nHost: evil.example\r\nX-Injected: 1\r\n\r\n"
    )
    events = _events(conn)
    request = events[0]
    assert isinstance(request, http1.Request)
    assert request.headers == [(b"host", b"a.example"), (b"transfer-encoding", b"chunked")]
    assert [type(e) for e in events[1:]] == [http1.Data, http1.EndOfMessage]


def test_a_responses_trailer_fields_never_become_its_headers() -> None:
    conn = http1.Connection(http1.CLIENT)
    conn.send(http1.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    conn.send(http1.EOM)
    conn.receive_data(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nSet-Cookie: s=1\r\n\r\n"
    )
    events = _events(conn)
    response = events[0]
    assert isinstance(response, http1.Response)
    assert response.headers == [(b"transfer-encoding", b"chunked")]
    assert [type(e) for e in events[1:]] == [http1.Data, http1.EndOfMessage]


def test_an_upgrade_requests_body_comes_before_the_switch() -> None:
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"content-length: 5\r\n\r\nhel"
    )
    conn.receive_data(b"lo+ws-bytes")
    events = _events(conn)
    assert [type(e) for e in events] == [
        http1.Request,
        http1.Data,
        http1.Data,
        http1.EndOfMessage,
    ]
    assert b"".join(e.data for e in events if isinstance(e, http1.Data)) == b"hello"
    assert conn.trailing_data == (b"+ws-bytes", False)


def test_the_announced_chunk_size_is_known_before_its_bytes() -> None:
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n100\r\nxy"
    )
    assert conn.chunk_left() == 0x100 - 2
    conn.receive_data(b"z" * (0x100 - 2) + b"\r\n0\r\n\r\n")
    assert conn.chunk_left() == 0
    events = _events(conn)
    assert type(events[-1]) is http1.EndOfMessage


@pytest.mark.parametrize("value", [b"a\x00b", b"a\r\nb: c", b"a\nb"])
def test_the_writer_refuses_control_characters(value: bytes) -> None:
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    _events(conn)
    with pytest.raises(http1.LocalProtocolError):
        conn.send(http1.Response(status_code=200, headers=[(b"x-a", value)], reason=b"OK"))


def test_the_writer_frames_by_what_the_client_can_take() -> None:
    conn = http1.Connection(http1.SERVER)
    conn.receive_data(b"GET / HTTP/1.0\r\nhost: a\r\n\r\n")
    _events(conn)
    head = conn.send(http1.Response(status_code=200, headers=[], reason=b"OK"))
    assert b"connection: close" in head and b"chunked" not in head
    assert conn.send(http1.Data(b"x")) == b"x"
    conn.send(http1.EOM)
    assert conn.our_state is http1.MUST_CLOSE


def _answer_empty(conn: http1.Connection) -> None:
    """Answer the request read on ``conn`` with an empty 200 and get ready for the next."""
    conn.send(http1.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(http1.EOM)
    conn.start_next_cycle()


def test_a_pipelined_head_behind_a_large_body_is_not_counted_with_it() -> None:
    """The body of one request and the start of the next head arrive in one read: only the
    head may count against the head-size limit (the body alone is past it here)."""
    conn = http1.Connection(http1.SERVER, max_incomplete_event_size=4096)
    body = b"b" * 20_000
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        + b"GET /next HTTP/1.1\r\nHo"
    )
    events = _events(conn)
    assert [type(e) for e in events] == [http1.Request, http1.Data, http1.EndOfMessage]
    _answer_empty(conn)
    conn.receive_data(b"st: a\r\n\r\n")
    [request, end] = _events(conn)
    assert isinstance(request, http1.Request) and request.target == b"/next"
    assert type(end) is http1.EndOfMessage


def test_a_head_too_large_is_still_refused_in_the_pieces_after() -> None:
    conn = http1.Connection(http1.SERVER, max_incomplete_event_size=4096)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: ")
    assert [type(e) for e in _events(conn)] == [http1.Request, http1.EndOfMessage]
    _answer_empty(conn)
    conn.receive_data(b"x" * 5000)
    with pytest.raises(http1.RemoteProtocolError) as refused:
        _events(conn)
    assert refused.value.error_status_hint == 431


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_the_version_is_refused_in_a_head_read_in_pieces(size: int) -> None:
    """The request line's version is found when the head arrives in several reads."""
    for line, status in (
        (b"GET /a/b HTTP/2.0", 505),  # parsed by llhttp, refused once the head is whole
        (b"GET /a/b HTTP/3.0", 505),
        (b"PRI * HTTP/2.0", 505),  # HTTP/2's connection preface
        (b"GET /a/b", 400),
        (b"GET /a/b HTTP/10.0", 400),  # refused by llhttp at the second digit
    ):
        conn = http1.Connection(http1.SERVER)
        head = line + b"\r\nHost: a\r\nX: " + b"y" * 100 + b"\r\n\r\n"
        for i in range(0, len(head), size):
            conn.receive_data(head[i : i + size])
        with pytest.raises(http1.RemoteProtocolError) as refused:
            _events(conn)
        assert refused.value.error_status_hint == status


@pytest.mark.parametrize("size", [1, 3, 7, 4096])
@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0"])
def test_a_pipelined_request_with_another_version_is_refused_after_the_good_one(
    size: int, version: bytes
) -> None:
    """Split anywhere, also inside the second request line, which begins in a piece after
    the first request's end."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / " + version + b"\r\nHost: a\r\n\r\n"
    conn = http1.Connection(http1.SERVER)
    answered = 0
    with pytest.raises(http1.RemoteProtocolError) as refused:
        for i in range(0, len(data), size):
            conn.receive_data(data[i : i + size])
            while (events := _events(conn)) and type(events[-1]) is http1.EndOfMessage:
                _answer_empty(conn)
                answered += 1
    assert (answered, refused.value.error_status_hint) == (1, 505)


def test_a_version_in_a_header_value_is_not_the_request_lines() -> None:
    for head in (
        b"GET /\r\nX: a HTTP/2.0\r\n\r\n",  # no version (HTTP/0.9's form): 400
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x HTTP/2.0\r\n\r\nGET /\r\n\r\n",
    ):
        conn = http1.Connection(http1.SERVER)
        conn.receive_data(head)
        with pytest.raises(http1.RemoteProtocolError) as refused:
            while (events := _events(conn)) and type(events[-1]) is http1.EndOfMessage:
                _answer_empty(conn)
        assert refused.value.error_status_hint == 400, head


def test_an_upstream_version_error_is_no_version_refusal() -> None:
    """A response's version is not the client's: no 505 hint for it."""
    conn = http1.Connection(http1.CLIENT)
    conn.send(http1.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    conn.send(http1.EndOfMessage())
    conn.receive_data(b"HTTP/3.0 200 OK\r\nServer: x HTTP/2.0\r\n\r\n")
    with pytest.raises(http1.RemoteProtocolError) as refused:
        conn.next_event()
    assert refused.value.error_status_hint != 505
