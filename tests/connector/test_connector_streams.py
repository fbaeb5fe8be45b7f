"""TCP services of the connector over real sockets: the WebSocket side spoken with wsproto.

The LB path and the access client are in tests/access; here the connector alone: handshake
checks, unreachable services, both half-close directions, hostile frames, ``unix+tls:``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from conftest import Start
from connector_origin import Origin, _serve
from ports_support import dead_port
from waiting import wait_until
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.frame_protocol import FrameProtocol

from lb.connector import ConnectorConfig, IngressRule, load_connector_config, serve_connector
from lb.connector.ingress import Bastion, TcpService, UnixService, parse_service
from lb.connector.streams import jump_destination

pytestmark = pytest.mark.integration


class Peer:
    """A WebSocket client over TLS to the connector, with wsproto."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    async def next(self) -> Event | None:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(bytes(data))
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def received(self) -> tuple[bytes, CloseConnection | None]:
        """Payload until the server's Close (or EOF)."""
        data = b""
        while True:
            event = await self.next()
            if isinstance(event, BytesMessage):
                data += event.data
            elif event is None or isinstance(event, CloseConnection):
                return data, event


Connect = Callable[[str, str], Awaitable[Peer]]


@pytest.fixture
async def connect(client_ctx: ssl.SSLContext) -> AsyncIterator[Connect]:
    """``await connect(url, host)``: a WebSocket handshake sent; closed after the test."""
    peers: list[Peer] = []

    async def open_peer(url: str, host: str) -> Peer:
        address, port = url.removeprefix("https://").rsplit(":", 1)
        tcp = await trio.open_tcp_stream(address, int(port))
        peer = Peer(trio.SSLStream(tcp, client_ctx, server_hostname="app.example.com"))
        peers.append(peer)
        await peer.send(Request(host=host, target="/"))
        return peer

    yield open_peer
    for peer in peers:
        await trio.aclose_forcefully(peer.stream)


async def serve_tcp(
    handler: object, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listener.socket.getsockname()[1])
    await trio.serve_listeners(handler, [listener])  # type: ignore[arg-type]


def tcp_rules(port: int) -> list[IngressRule]:
    service = f"tcp://127.0.0.1:{port}"
    return [IngressRule(service, "app.example.com"), IngressRule("http_status:404")]


def test_tcp_services_parse_like_cloudflared() -> None:
    assert parse_service("ssh://10.0.0.5") == TcpService("ssh", "10.0.0.5", 22)
    assert parse_service("rdp://h") == TcpService("rdp", "h", 3389)
    assert parse_service("smb://h:4450") == TcpService("smb", "h", 4450)
    assert parse_service("tcp://db:5432") == TcpService("tcp", "db", 5432)
    assert parse_service("bastion") == Bastion()
    assert parse_service("unix+tls:/run/a.sock") == UnixService("/run/a.sock", tls=True)
    with pytest.raises(ValueError, match="needs a port"):
        parse_service("tcp://db")
    with pytest.raises(ValueError, match="without a path"):
        parse_service("ssh://h:22/x")
    assert jump_destination("ssh://db.internal:22/path") == "db.internal:22"
    assert jump_destination("10.0.0.5:22/x") == "10.0.0.5:22"


def test_bastion_needs_an_allow_list(tmp_path: Path) -> None:
    rules = (IngressRule("bastion", "jump.example.com"), IngressRule("http_status:404"))
    with pytest.raises(ValueError, match=r"ingress\[0\].service: a bastion rule needs"):
        ConnectorConfig(tunnel="6ff42ae2-765d-4adf-8112-31c55c1551ef", ingress=rules)
    path = tmp_path / "c.yaml"
    path.write_text(
        "tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef\n"
        "bastion_allow: [10.0.0.5:22, nope]\n"
        "ingress:\n  - {hostname: jump.example.com, service: bastion}\n"
        "  - service: http_status:404\n"
    )
    with pytest.raises(
        Exception, match=r'c.yaml:2: bastion_allow\[1\]: expected "host:port", got "nope"'
    ):
        load_connector_config(path)


async def test_plain_requests_to_a_tcp_service_get_400(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    url, stats = await start_connector(
        [
            IngressRule(f"tcp://127.0.0.1:{dead_port()}", "app.example.com"),
            IngressRule("http_status:404"),
        ]
    )
    response = await client.get(f"{url}/", headers={"Host": "app.example.com"})
    assert response.status_code == 400
    assert "tunnel-lb access tcp" in response.text
    # A second request on the same connection still works (keep-alive survived the refusal).
    response = await client.get(f"{url}/", headers={"Host": "other.org"})
    assert response.status_code == 404
    assert stats.sessions == 0


async def test_an_upgrade_with_a_body_is_refused(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    url, stats = await start_connector(tcp_rules(9))
    headers = {
        "Host": "app.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    response = await client.request("GET", f"{url}/", headers=headers, content=b"x" * 100_000)
    assert response.status_code == 400
    assert stats.sessions == 0


async def test_an_unreachable_service_gets_502_before_the_upgrade(
    start_connector: Start, connect: Connect
) -> None:
    port = dead_port()  # nothing listens there (held: nothing can start to)
    rules = tcp_rules(port)
    url, stats = await start_connector(rules)
    peer = await connect(url, "app.example.com")
    event = await peer.next()
    assert isinstance(event, RejectConnection) and event.status_code == 502
    body = b""
    while not (isinstance(event, RejectData) and event.body_finished):
        event = await peer.next()
        assert isinstance(event, RejectData)
        body += event.data
    assert body.startswith(b"Unable to reach the origin service")
    # Counted as the last byte goes, which may be after we read it.
    await wait_until(lambda: stats.by_status[502])
    assert stats.sessions == 0


async def test_the_client_half_closes_and_still_gets_the_whole_answer(
    start_connector: Start, connect: Connect, nursery: trio.Nursery
) -> None:
    async def count_then_answer(stream: trio.SocketStream) -> None:
        # Answers only after the end of its input, like `wc`: needs the half-close.
        total = 0
        while data := await stream.receive_some(65536):
            total += len(data)
        await stream.send_all(b"%d bytes\n" % total)
        await stream.aclose()

    port = await nursery.start(serve_tcp, count_then_answer)
    rules = tcp_rules(port)
    url, stats = await start_connector(rules)
    peer = await connect(url, "app.example.com")
    assert isinstance(await peer.next(), AcceptConnection)
    for _ in range(3):
        await peer.send(BytesMessage(data=b"x" * 1000))
    await peer.send(CloseConnection(code=1000))  # our end of input
    with trio.fail_after(5):
        data, close = await peer.received()
    assert data == b"3000 bytes\n"
    assert close is not None and close.code == 1000
    assert stats.sessions == 1


async def test_the_service_ends_first_and_what_the_client_still_sends_arrives(
    start_connector: Start, connect: Connect, nursery: trio.Nursery
) -> None:
    got = trio.Event()
    seen: list[bytes] = []

    async def banner_then_listen(stream: trio.SocketStream) -> None:
        await stream.send_all(b"banner\n")
        await stream.send_eof()  # done talking, still listening
        while data := await stream.receive_some(65536):
            seen.append(data)
        got.set()

    port = await nursery.start(serve_tcp, banner_then_listen)
    rules = tcp_rules(port)
    url, _ = await start_connector(rules)
    peer = await connect(url, "app.example.com")
    assert isinstance(await peer.next(), AcceptConnection)
    with trio.fail_after(5):
        data, close = await peer.received()
    assert data == b"banner\n" and close is not None and close.code == 1000
    # The service's EOF arrived as a Close; we may still send until we answer it (wsproto's
    # connection refuses to, so the frame comes from its framer, as in lb.connector.wsbridge).
    await peer.stream.send_all(FrameProtocol(client=True, extensions=[]).send_data(b"late words"))
    await peer.send(close.response())
    with trio.fail_after(5):
        await got.wait()
    assert b"".join(seen) == b"late words"


async def test_garbage_frames_close_the_stream_and_the_connector_keeps_serving(
    start_connector: Start, connect: Connect, nursery: trio.Nursery
) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    port = await nursery.start(serve_tcp, echo)
    rules = tcp_rules(port)
    url, stats = await start_connector(rules)
    peer = await connect(url, "app.example.com")
    assert isinstance(await peer.next(), AcceptConnection)
    await peer.stream.send_all(b"\x8f\x80\x00\x00\x00\x00" * 4)  # reserved opcode, masked
    with trio.fail_after(5):
        while True:
            data = await peer.stream.receive_some(65536)
            if not data:
                break
    # Another session on a new connection works.
    peer = await connect(url, "app.example.com")
    assert isinstance(await peer.next(), AcceptConnection)
    await peer.send(BytesMessage(data=b"still here"))
    event = await peer.next()
    assert isinstance(event, BytesMessage) and event.data == b"still here"
    assert stats.sessions == 2


@pytest.mark.skipif(not hasattr(trio.socket, "AF_UNIX"), reason="needs unix sockets")
async def test_unix_tls_origin(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    client: httpx.AsyncClient,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "tls.sock")
    origin = Origin()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    listener = trio.SSLListener(trio.SocketListener(sock), server_ctx, https_compatible=True)

    async def handler(stream: trio.abc.Stream) -> None:
        await _serve(stream, origin)

    nursery.start_soon(trio.serve_listeners, handler, [listener])
    config = ConnectorConfig(
        tunnel="6ff42ae2-765d-4adf-8112-31c55c1551ef",
        ingress=(IngressRule(f"unix+tls:{path}"),),
        ssl_context=server_ctx,
        origin_ssl_context=client_ctx,
    )
    [(host, port)] = await nursery.start(partial(serve_connector, config))
    response = await client.post(
        f"https://{host}:{port}/u", content=b"hi", headers={"Host": "app.example.com"}
    )
    assert response.status_code == 201
    assert response.json()["body"] == "hi"
