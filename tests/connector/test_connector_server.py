"""The connector over real loopback sockets: TLS, routing, forwarding, errors."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.lowlevel
import trustme
from conftest import TUNNEL, Start
from connector_origin import Origin, serve_unix_origin
from ports_support import dead_port

from lb.connector import IngressRule
from lb.connector.proxy import BAD_GATEWAY_BODY
from lb.connector.tls import CertificateError

pytestmark = pytest.mark.integration

LOCAL_RULES = [
    IngressRule("http_status:200", "health.example.com"),
    IngressRule("hello_world", "*.example.com"),
    IngressRule("http_status:404"),
]


def origin_rules(port: int) -> list[IngressRule]:
    return [
        IngressRule(f"http://127.0.0.1:{port}", "app.example.com", "^/api/"),
        *LOCAL_RULES,
    ]


async def raw_exchange(
    url: str, payload: bytes, ctx: ssl.SSLContext, *, sni: str = "app.example.com"
) -> bytes:
    """Send raw bytes over TLS (with the given SNI) and read until the server closes."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, ctx, server_hostname=sni, https_compatible=True)
    try:
        await stream.send_all(payload)
        received = b""
        with trio.fail_after(3):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received
    finally:
        await trio.aclose_forcefully(stream)


async def test_hello_world_names_tunnel_and_replica(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    url, stats = await start_connector(LOCAL_RULES)
    response = await client.get(f"{url}/hi?q=1", headers={"Host": "a.b.example.com:443"})
    assert response.status_code == 200
    assert response.reason_phrase == "OK"
    assert response.json() == {
        "tunnel": TUNNEL,
        "replica": "host-a",
        "datacenter": "FRA",
        "host": "a.b.example.com:443",
        "path": "/hi",
        "method": "GET",
        "sni": None,  # httpx sends no SNI for an IP address
        "rule": 1,
    }
    assert stats.requests == 1
    assert stats.by_rule[1] == 1


async def test_http_status_head_and_catch_all(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    url, stats = await start_connector(LOCAL_RULES)
    health = await client.get(url, headers={"Host": "HEALTH.example.com"})
    assert (health.status_code, health.content) == (200, b"")
    wrong = await client.get(url, headers={"Host": "example.com"})  # apex: not under *.
    assert (wrong.status_code, wrong.reason_phrase) == (404, "Not Found")
    head = await client.head(url, headers={"Host": "x.example.com"})
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert stats.by_status == {200: 2, 404: 1}
    assert stats.connections == 1  # keep-alive across all three


async def test_sni_is_recorded(start_connector: Start, client_ctx: ssl.SSLContext) -> None:
    url, stats = await start_connector(LOCAL_RULES)
    answer = await raw_exchange(
        url,
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
        client_ctx,
        sni="app.example.com",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["sni"] == "app.example.com"
    assert stats.sni == ["app.example.com"]


async def test_http_10_without_host_hits_catch_all(
    start_connector: Start, client_ctx: ssl.SSLContext
) -> None:
    url, _ = await start_connector(LOCAL_RULES)
    answer = await raw_exchange(url, b"GET / HTTP/1.0\r\n\r\n", client_ctx)
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400 Bad Request"),  # 1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", b"400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\nHost: x.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"400",
        ),
    ],
)
async def test_malformed_requests_get_400_and_server_survives(
    start_connector: Start,
    client: httpx.AsyncClient,
    client_ctx: ssl.SSLContext,
    payload: bytes,
    status: bytes,
) -> None:
    url, stats = await start_connector(LOCAL_RULES)
    answer = await raw_exchange(url, payload, client_ctx)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"connection: close" in answer.lower()
    assert (await client.get(url, headers={"Host": "x.example.com"})).status_code == 200
    assert stats.by_status[400] == 1


async def test_tls_garbage_and_idle_clients_are_dropped(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    url, _ = await start_connector(LOCAL_RULES, idle_timeout=0.2)
    host, port = url.removeprefix("https://").rsplit(":", 1)
    for payload in (b"not tls at all\r\n\r\n", b""):
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            await stream.send_all(payload)
            with trio.fail_after(2):  # closed by the server: no handshake / idle timeout
                while await stream.receive_some(1024):
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
    assert (await client.get(url, headers={"Host": "x.example.com"})).status_code == 200


async def test_forwards_to_the_origin_with_keep_alive(
    start_connector: Start, client: httpx.AsyncClient, origin: Origin
) -> None:
    url, stats = await start_connector(origin_rules(origin.port))
    for _ in range(3):
        response = await client.get(f"{url}/api/v1?x=1", headers={"Host": "app.example.com"})
        assert (response.status_code, response.reason_phrase) == (201, "Created")
        assert response.headers["x-origin"] == "yes"
        seen = response.json()
        assert seen["target"] == "/api/v1?x=1"
        assert seen["headers"]["host"] == "app.example.com"  # the Host is kept
        assert seen["headers"]["x-forwarded-proto"] == "https"
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    head = await client.head(f"{url}/api/h", headers={"Host": "app.example.com"})
    assert (head.status_code, head.content) == (201, b"")
    assert origin.connections == 1  # bodiless requests reuse the origin connection
    assert stats.by_rule[0] == 4


async def test_streams_a_chunked_post_and_a_large_response(
    start_connector: Start, client: httpx.AsyncClient, origin: Origin
) -> None:
    url, _ = await start_connector(origin_rules(origin.port))

    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield f"chunk-{i};".encode()
            await trio.lowlevel.checkpoint()

    response = await client.post(
        f"{url}/api/upload", content=body(), headers={"Host": "app.example.com"}
    )
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["body"] == "".join(f"chunk-{i};" for i in range(50))
    assert seen["headers"]["transfer-encoding"] == "chunked"
    sized = await client.post(
        f"{url}/api/sized", content=b"abc", headers={"Host": "app.example.com"}
    )
    assert sized.json()["headers"]["content-length"] == "3"
    big = await client.get(f"{url}/api/big/2000000", headers={"Host": "app.example.com"})
    assert big.status_code == 201
    assert len(big.content) == 2_000_000


async def test_origin_down_answers_502_like_cloudflared(
    start_connector: Start, client: httpx.AsyncClient
) -> None:
    port = dead_port()  # a port nobody listens on (held: nobody can start to)
    url, stats = await start_connector(origin_rules(port))
    response = await client.get(f"{url}/api/x", headers={"Host": "app.example.com"})
    assert (response.status_code, response.reason_phrase) == (502, "Bad Gateway")
    assert response.content == BAD_GATEWAY_BODY
    assert b"Unable to reach the origin service" in response.content
    post = await client.post(
        f"{url}/api/x", content=b"x" * 10_000, headers={"Host": "app.example.com"}
    )
    assert post.status_code == 502
    assert stats.by_status[502] == 2
    assert stats.connections == 1  # the body was drained: keep-alive survived


async def test_origin_closing_before_answering_is_502(
    start_connector: Start, client: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def rude(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, rude, listeners)
    url, _ = await start_connector(origin_rules(port))
    response = await client.get(f"{url}/api/x", headers={"Host": "app.example.com"})
    assert response.status_code == 502


async def test_concurrent_connections(
    start_connector: Start, client_ctx: ssl.SSLContext, origin: Origin
) -> None:
    url, stats = await start_connector(origin_rules(origin.port))
    results: list[int] = []

    async def one(i: int) -> None:
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as c:
            host = "app.example.com" if i % 2 else "x.example.com"
            results.append((await c.get(f"{url}/api/{i}", headers={"Host": host})).status_code)

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(one, i)
    assert sorted(results) == [200] * 10 + [201] * 10
    assert stats.connections == 20


@pytest.mark.skipif(not hasattr(trio.socket, "AF_UNIX"), reason="needs unix sockets")
async def test_unix_socket_origin(
    start_connector: Start, client: httpx.AsyncClient, nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = str(tmp_path / "o.sock")
    unix_origin = Origin()
    await nursery.start(serve_unix_origin, unix_origin, path)
    url, _ = await start_connector([IngressRule(f"unix:{path}"), *LOCAL_RULES[:0]])
    response = await client.post(f"{url}/u", content=b"hi", headers={"Host": "any.org"})
    assert response.status_code == 201
    assert response.json()["body"] == "hi"


async def https_origin(nursery: trio.Nursery, server_ctx: ssl.SSLContext, origin: Origin) -> int:
    """The echo origin over TLS (a certificate of the session's trustme CA); its port."""
    from connector_origin import _serve

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tls = [trio.SSLListener(lsn, server_ctx, https_compatible=True) for lsn in listeners]

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await _serve(stream, origin)

    nursery.start_soon(trio.serve_listeners, handler, tls)
    return int(listeners[0].socket.getsockname()[1])


async def test_https_origin_and_self_signed_listener(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, nursery: trio.Nursery
) -> None:
    from lb.connector import ConnectorConfig, serve_connector

    port = await https_origin(nursery, server_ctx, Origin())
    config = ConnectorConfig(
        tunnel=TUNNEL,
        ingress=[IngressRule(f"https://localhost:{port}")],
        origin_ssl_context=client_ctx,
    )  # no ssl_context: a self-signed certificate is generated
    [(host, cport)] = await nursery.start(serve_connector, config)
    async with httpx.AsyncClient(verify=False, timeout=5) as c:
        response = await c.get(f"https://{host}:{cport}/s", headers={"Host": "x.org"})
    assert response.status_code == 201
    assert response.json()["headers"]["x-forwarded-proto"] == "https"


async def raw_origin(nursery: trio.Nursery, answer: bytes) -> int:
    """An origin that reads once, writes ``answer`` and hangs up; returns its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)
            await stream.send_all(answer)
        finally:
            await stream.aclose()

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_origin_answering_early_or_breaking_mid_body(
    start_connector: Start,
    client: httpx.AsyncClient,
    client_ctx: ssl.SSLContext,
    nursery: trio.Nursery,
) -> None:
    early = await raw_origin(
        nursery, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    broken = await raw_origin(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    url, _ = await start_connector(
        [
            IngressRule(f"http://127.0.0.1:{early}", "early.example.com"),
            IngressRule(f"http://127.0.0.1:{broken}", "broken.example.com"),
            *LOCAL_RULES,
        ]
    )
    # Headers promise 3 MB but only 10 bytes come: the origin's early 413 is relayed, then
    # the connection is closed because the client never finished its request.
    answer = await raw_exchange(
        url,
        b"POST / HTTP/1.1\r\nHost: early.example.com\r\nContent-Length: 3000000\r\n\r\n0123456789",
        client_ctx,
    )
    assert answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    with pytest.raises(httpx.TransportError):  # the body cannot be completed: connection cut
        await client.get(url, headers={"Host": "broken.example.com"})
    assert (await client.get(url, headers={"Host": "x.example.com"})).status_code == 200


async def test_expect_100_continue(
    start_connector: Start, client_ctx: ssl.SSLContext, origin: Origin
) -> None:
    url, _ = await start_connector(origin_rules(origin.port))
    host, port = url.removeprefix("https://").rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, client_ctx, server_hostname="app.example.com")
    try:
        with trio.fail_after(3):
            await stream.send_all(
                b"POST /api/e HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            first = await stream.receive_some(1000)
            assert first.startswith(b"HTTP/1.1 100 Continue\r\n"), first
            await stream.send_all(b"hello")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    finally:
        await trio.aclose_forcefully(stream)
    assert answer.startswith(b"HTTP/1.1 201 Created\r\n")
    assert origin.requests[0]["body"] == "hello"
    assert "expect" not in origin.requests[0]["headers"]  # handled here, not forwarded


async def test_command_reports_a_port_in_use(server_ctx: ssl.SSLContext) -> None:
    from lb.commands.connector import _main
    from lb.connector import ConnectorConfig

    sock = trio.socket.socket()
    try:
        await sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = ConnectorConfig(
            tunnel=TUNNEL,
            ingress=[IngressRule("hello_world")],
            listen=f"127.0.0.1:{port}",
            ssl_context=server_ctx,
        )
        error = await _main(config)
    finally:
        sock.close()
    assert error is not None
    assert "in use" in error.lower()


async def test_the_ca_pool_is_read_once_at_start(
    start_connector: Start,
    client: httpx.AsyncClient,
    server_ctx: ssl.SSLContext,
    ca: trustme.CA,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    """Removed (or broken) after the start, the caPool file changes nothing: the https
    origin is still verified with what it held, as cloudflared does."""
    origin = Origin()
    port = await https_origin(nursery, server_ctx, origin)
    pool = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(pool))
    url, _ = await start_connector([IngressRule(f"https://localhost:{port}")], ca_pool=str(pool))
    pool.unlink()
    response = await client.get(f"{url}/first", headers={"Host": "x.org"})
    assert response.status_code == 201, response.text
    pool.write_text("not a certificate\n")
    response = await client.get(f"{url}/second", headers={"Host": "x.org"})
    assert response.status_code == 201, response.text
    assert [r["target"] for r in origin.requests] == ["/first", "/second"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "caPool {path}: no such file or directory"),
        ("not a certificate\n", "caPool {path}: no PEM certificate in it"),
    ],
    ids=["missing", "not-pem"],
)
async def test_a_ca_pool_that_cannot_be_loaded_stops_the_start_naming_the_file(
    start_connector: Start, tmp_path: Path, text: str | None, expected: str
) -> None:
    pool = tmp_path / "origin-ca.pem"
    if text is not None:
        pool.write_text(text)
    with pytest.raises(CertificateError) as raised:
        await start_connector([IngressRule("https://localhost:1")], ca_pool=str(pool))
    message = str(raised.value)
    assert message.startswith(expected.format(path=pool)), message
    assert "\n" not in message
