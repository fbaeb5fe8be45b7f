"""A second yardstick for bench/proxy.py: the bare forwarder with httptools (llhttp) parsing.

The same job as ``_bare_forwarder.py`` (keep-alive downstream, round robin, a LIFO keep-alive
pool per upstream with one retry on a fresh connection when a reused one fails before the
response, hop-by-hop headers dropped, Host rewritten), with the HTTP/1.1 parsing done by
httptools, the C parser Node.js and uvicorn use, instead of h11.  The difference between the
two rows is what the parser costs; tunnel-lb's own row is judged against both.

Bodies are read whole before forwarding (the benchmark's requests and answers are small),
responses are framed by Content-Length, as the bench backend sends them, and pipelined
requests are not supported (wrk does not pipeline).

    python bench/_bare_httptools_forwarder.py --port 18101 --upstream 127.0.0.1:18443 \\
        --host backend.local --ca ca.pem
"""

from __future__ import annotations

import argparse
import itertools
import ssl
from typing import Any

import httptools
import trio

HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"content-length",
}


class Message:
    """The callbacks httptools calls while parsing one message, collected."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def keep_alive(parser: Any, msg: Message) -> bool:
    """HTTP/1.1 without ``Connection: close``.  (llhttp's ``should_keep_alive`` is only
    meaningful inside its callbacks; once the message is complete the parser has reset.)"""
    if parser.get_http_version() != "1.1":
        return False
    return not any(n == b"connection" and b"close" in v.lower() for n, v in msg.headers)


def head(first_line: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [first_line]
    lines += [n + b": " + v for n, v in headers]
    lines.append(b"content-length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Upstream:
    def __init__(self, host: str, port: int, sni: str, ctx: ssl.SSLContext) -> None:
        self.host, self.port, self.sni, self.ctx = host, port, sni, ctx
        self.idle: list[tuple[float, trio.SSLStream[Any]]] = []

    async def fresh(self) -> trio.SSLStream[Any]:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        tls = trio.SSLStream(tcp, self.ctx, server_hostname=self.sni, https_compatible=True)
        await tls.do_handshake()
        return tls

    def get(self) -> trio.SSLStream[Any] | None:
        limit = trio.current_time() - 30.0
        while self.idle:
            at, s = self.idle.pop()
            if at >= limit:
                return s
            s.transport_stream.socket.close()  # type: ignore[attr-defined]
        return None


async def exchange(s: trio.SSLStream[Any], request: bytes) -> tuple[int, Message, bool]:
    await s.send_all(request)
    msg = Message()
    parser = httptools.HttpResponseParser(msg)
    while not msg.done:
        data = await s.receive_some(65536)
        if not data:
            raise ConnectionError("closed")
        parser.feed_data(data)
    return parser.get_status_code(), msg, keep_alive(parser, msg)


async def handle(stream: trio.SocketStream, ups: list[Upstream], rr: Any, host: bytes) -> None:
    try:
        while True:
            msg = Message()
            parser = httptools.HttpRequestParser(msg)
            try:
                while not msg.done:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                return
            keep = keep_alive(parser, msg)
            method = parser.get_method()
            headers = [(n, v) for n, v in msg.headers if n not in HOP]
            headers.append((b"host", host))
            body = b"".join(msg.body)
            request = head(method + b" " + msg.url + b" HTTP/1.1", headers, body)
            up = ups[next(rr)]
            for attempt in (0, 1):
                got = up.get() if attempt == 0 else None
                reused = got is not None
                s = got if got is not None else await up.fresh()
                try:
                    status, resp, up_keep = await exchange(s, request)
                    break
                except (ConnectionError, trio.BrokenResourceError, httptools.HttpParserError):
                    s.transport_stream.socket.close()  # type: ignore[attr-defined]
                    if not reused:
                        raise
            if up_keep:
                up.idle.append((trio.current_time(), s))
            else:
                s.transport_stream.socket.close()  # type: ignore[attr-defined]
            rheaders = [(n, v) for n, v in resp.headers if n not in HOP]
            await stream.send_all(head(b"HTTP/1.1 %d OK" % status, rheaders, b"".join(resp.body)))
            if not keep:
                return
    except Exception:
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    ups = []
    for spec in args.upstream:
        h, _, p = spec.rpartition(":")
        ups.append(Upstream(h, int(p), args.host, ctx))
    rr = itertools.cycle(range(len(ups)))
    listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1", backlog=1024)

    async def handler(stream: trio.SocketStream) -> None:
        await handle(stream, ups, rr, args.host.encode())

    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--host", default="backend.local")
    parser.add_argument("--ca", required=True)
    trio.run(main, parser.parse_args())
