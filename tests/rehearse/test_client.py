"""The rehearsal's own HTTP/1.1 client, on real loopback sockets: it keeps one connection
alive across requests, replaces one the server closed while idle, and tells a refused
connection, a connection broken before the answer and a body cut short apart (what the edge
stand-in acts on)."""

from __future__ import annotations

import ssl
from functools import partial

import h11
import pytest
import trio
import trustme

from lb.connector.h11io import H11Stream
from lb.rehearse.client import BrokenError, CutError, Pool, RefusedError

Behaviour = str
"""What the test server does with a request: ``ok``, ``close-after`` (answer, then close),
``reset`` (close before answering), ``reset-once`` (close before answering, then ``ok``),
``cut`` (half the announced body, then close), ``junk`` (the answer followed by
:data:`JUNK` in the same write, the connection kept open)."""
JUNK = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\njunk"


class _Server:
    """An h11 server on 127.0.0.1:0 that counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.behaviour: Behaviour = "ok"
        self.closed = trio.Event()
        """Set once the server has closed a connection."""

    async def serve(
        self, context: ssl.SSLContext | None, task_status: trio.TaskStatus[int]
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(int(listeners[0].socket.getsockname()[1]))
        await trio.serve_listeners(partial(self._connection, context), listeners)

    async def _connection(self, context: ssl.SSLContext | None, stream: trio.SocketStream) -> None:
        self.connections += 1
        s: trio.abc.Stream = stream
        if context is not None:
            s = trio.SSLStream(stream, context, server_side=True)
        http = H11Stream(s, h11.SERVER)
        try:
            while isinstance(request := await http.next_event(), h11.Request):
                behaviour = self.behaviour  # as set before this request was sent
                while not isinstance(await http.next_event(), h11.EndOfMessage):
                    pass
                if behaviour == "reset-once":
                    self.behaviour = "ok"
                    return
                if behaviour == "reset":
                    return
                body = b"hello " + request.target
                length = str(len(body) * (2 if behaviour == "cut" else 1)).encode()
                headers = [(b"content-length", length), (b"set-cookie", b"__cflb=abc; Path=/")]
                if behaviour == "junk":  # the answer and a stray one in one write
                    data = http.conn.send(h11.Response(status_code=200, headers=headers))
                    data += http.conn.send(h11.Data(data=body)) + http.conn.send(h11.EndOfMessage())
                    await s.send_all(data + JUNK)
                    http.conn.start_next_cycle()
                    continue
                await http.send(h11.Response(status_code=200, headers=headers))
                await http.send(h11.Data(data=body))
                if behaviour == "cut":
                    return
                await http.send(h11.EndOfMessage())
                if behaviour == "close-after":
                    return
                http.conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(s)
            self.closed.set()


HEADERS = [(b"host", b"localhost")]


async def test_one_connection_is_kept_alive_and_a_closed_one_replaced(
    nursery: trio.Nursery,
) -> None:
    server = _Server()
    port = await nursery.start(server.serve, None)
    pool = Pool(f"127.0.0.1:{port}")
    for n in range(3):
        answer = await pool.request(b"GET", f"/{n}".encode(), HEADERS)
        assert (answer.status, answer.body) == (200, f"hello /{n}".encode())
    assert server.connections == 1
    assert answer.cookie("__cflb") == "abc"
    assert answer.cookie("other") is None
    server.behaviour = "close-after"
    await pool.request(b"GET", b"/", HEADERS)  # answered, then the server closes it
    server.behaviour = "ok"
    await server.closed.wait()  # closed while idle in the pool: taken out, not reused
    assert (await pool.request(b"GET", b"/again", HEADERS)).body == b"hello /again"
    assert server.connections == 2
    await pool.aclose()


async def test_a_connection_with_unread_bytes_is_not_reused(nursery: trio.Nursery) -> None:
    """Bytes that came after the answer in the same read sit in h11's buffer, where no poll
    of the socket sees them: reused, the connection would give them as the next answer."""
    server = _Server()
    port = await nursery.start(server.serve, None)
    pool = Pool(f"127.0.0.1:{port}")
    server.behaviour = "junk"
    assert (await pool.request(b"GET", b"/first", HEADERS)).body == b"hello /first"
    server.behaviour = "ok"
    assert (await pool.request(b"GET", b"/next", HEADERS)).body == b"hello /next"
    assert server.connections == 2
    await pool.aclose()


async def test_refused_broken_and_cut_are_told_apart(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    free = int(listener.socket.getsockname()[1])
    await listener.aclose()  # nothing listens there now
    with pytest.raises(RefusedError):
        await Pool(f"127.0.0.1:{free}").request(b"GET", b"/", HEADERS)
    server = _Server()
    port = await nursery.start(server.serve, None)
    pool = Pool(f"127.0.0.1:{port}")
    server.behaviour = "reset"
    with pytest.raises(BrokenError):
        await pool.request(b"GET", b"/", HEADERS)
    server.behaviour = "cut"
    with pytest.raises(CutError) as cut:
        await pool.request(b"GET", b"/x", HEADERS)
    assert cut.value.answer.status == 200
    assert cut.value.answer.body == b"hello /x"  # the bytes that came, before the cut
    assert (b"content-length", b"16") in cut.value.answer.headers
    await pool.aclose()


async def test_tls_with_a_failed_handshake_is_refused(nursery: trio.Nursery) -> None:
    """TLS: an exchange works and is kept alive; a server whose certificate the client does
    not trust fails the handshake, which the edge treats as a refused replica."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    server = _Server()
    port = await nursery.start(server.serve, server_context)
    pool = Pool(f"127.0.0.1:{port}", tls=trusted)
    assert (await pool.request(b"GET", b"/a", HEADERS)).status == 200
    assert (await pool.request(b"GET", b"/b", HEADERS)).status == 200
    assert server.connections == 1
    await pool.aclose()
    with pytest.raises(RefusedError, match="TLS handshake failed"):
        await Pool(f"127.0.0.1:{port}", tls=ssl.create_default_context()).request(
            b"GET", b"/", HEADERS
        )


async def test_a_connection_cancelled_mid_handshake_is_closed_at_once(
    nursery: trio.Nursery,
) -> None:
    """Cancelled during its TLS handshake, the client closes the socket itself: the server,
    which never answers the ClientHello, then reads the end of the stream."""
    hello = trio.Event()
    ended = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        while await stream.receive_some(4096):
            hello.set()
        ended.set()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    pool = Pool(f"127.0.0.1:{port}", tls=ssl.create_default_context())
    kept: list[BaseException] = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:

            async def request() -> None:
                try:
                    await pool.request(b"GET", b"/", HEADERS)
                except trio.Cancelled as exc:
                    kept.append(exc)  # held, as a caller's traceback would hold it
                    raise

            inner.start_soon(request)
            await hello.wait()
            scope.cancel()
    with trio.fail_after(5):
        await ended.wait()
    assert kept


async def test_a_reused_connection_broken_before_its_answer_is_tried_once_more_anew(
    nursery: trio.Nursery,
) -> None:
    """The peer closed a kept-alive connection as the request went out: the request goes
    again on a new connection; a new connection that breaks is not tried again."""
    server = _Server()
    port = await nursery.start(server.serve, None)
    pool = Pool(f"127.0.0.1:{port}")
    assert (await pool.request(b"GET", b"/first", HEADERS)).body == b"hello /first"
    server.behaviour = "reset-once"  # the kept connection closes on the next request
    answer = await pool.request(b"POST", b"/again", HEADERS, b"body")
    assert (answer.status, answer.body) == (200, b"hello /again")
    assert server.connections == 2
    await pool.aclose()
    server.behaviour = "reset"  # a new connection (none idle now) that breaks: no retry
    with pytest.raises(BrokenError):
        await pool.request(b"GET", b"/", HEADERS)
    assert server.connections == 3
