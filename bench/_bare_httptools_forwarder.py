"""A second yardstick for bench/proxy.py: the bare forwarder with httptools (llhttp) parsing.

The same job as ``_bare_forwarder.py`` (keep-alive downstream, round robin, a LIFO keep-alive
pool per upstream with one retry on a fresh connection when a reused one fails before the
response, hop-by-hop headers dropped, Host rewritten), with the HTTP/1.1 parsing done by
httptools, the C parser Node.js and uvicorn use, instead of h11.  The difference between the
two rows is what the parser costs; tunnel-lb's own row is judged against both.  All but the
parsing is shared with it (bench/_bare_common.py).

Bodies are read whole before forwarding (the benchmark's requests and answers are small),
responses are framed by Content-Length, as the bench backend sends them, and pipelined
requests are not supported (wrk does not pipeline).

    python bench/_bare_httptools_forwarder.py --port 18101 --upstream 127.0.0.1:18443 \\
        --host backend.local --ca ca.pem
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httptools
import trio
from _bare_common import HOP, Upstream, close, run

DROPPED = HOP | {b"content-length"}
"""Content-Length is written again for the whole body (see :func:`head`)."""


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


async def handle(
    stream: trio.SocketStream, ups: list[Upstream[None]], rr: Iterator[int], host: bytes
) -> None:
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
            headers = [(n, v) for n, v in msg.headers if n not in DROPPED]
            headers.append((b"host", host))
            body = b"".join(msg.body)
            request = head(method + b" " + msg.url + b" HTTP/1.1", headers, body)
            up = ups[next(rr)]
            for attempt in (0, 1):
                got = up.get() if attempt == 0 else None
                reused = got is not None
                s = got[0] if got is not None else await up.dial()
                try:
                    status, resp, up_keep = await exchange(s, request)
                    break
                except (ConnectionError, trio.BrokenResourceError, httptools.HttpParserError):
                    close(s)
                    if not reused:
                        raise
            if up_keep:
                up.put(s, None)
            else:
                close(s)
            rheaders = [(n, v) for n, v in resp.headers if n not in DROPPED]
            await stream.send_all(head(b"HTTP/1.1 %d OK" % status, rheaders, b"".join(resp.body)))
            if not keep:
                return
    except Exception:
        return
    finally:
        await trio.aclose_forcefully(stream)


if __name__ == "__main__":
    run(handle, __doc__)
