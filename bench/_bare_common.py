"""What the two bare forwarders of bench/proxy.py share: all but the HTTP parsing.

``_bare_forwarder.py`` (h11) and ``_bare_httptools_forwarder.py`` (httptools) are the same
forwarder with two parsers, so that the difference between their rows is what the parser
costs.  The command line, the listener, round robin, the upstream TLS dial and the LIFO
keep-alive pool (idle > 30 s dropped) live here, once.  Each forwarder stays a standalone
script (``python bench/<name>.py ...``): Python puts the script's directory first on the
import path, which is how they find this module.
"""

from __future__ import annotations

import argparse
import itertools
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import trio

__all__ = ["HOP", "IDLE_LIMIT", "Upstream", "close", "run"]

HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
"""Headers not forwarded (hop-by-hop, and Host, which is rewritten)."""

IDLE_LIMIT = 30.0
"""A pooled connection idle for longer is closed rather than reused."""

State = TypeVar("State")
"""What a pooled connection carries besides its stream (h11's ``Connection``, or nothing)."""


def close(stream: trio.SSLStream[Any]) -> None:
    """Close at once, without the TLS goodbye: a bare forwarder does not wait on it."""
    stream.transport_stream.socket.close()


class Upstream(Generic[State]):
    """One upstream: dials it over TLS, and pools idle connections, newest reused first."""

    def __init__(self, host: str, port: int, sni: str, ctx: ssl.SSLContext) -> None:
        self.host, self.port, self.sni, self.ctx = host, port, sni, ctx
        self.idle: list[tuple[float, trio.SSLStream[Any], State]] = []

    async def dial(self) -> trio.SSLStream[Any]:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        tls = trio.SSLStream(tcp, self.ctx, server_hostname=self.sni, https_compatible=True)
        await tls.do_handshake()
        return tls

    def get(self) -> tuple[trio.SSLStream[Any], State] | None:
        """The newest idle connection young enough to reuse; older ones are closed."""
        limit = trio.current_time() - IDLE_LIMIT
        while self.idle:
            at, stream, state = self.idle.pop()
            if at >= limit:
                return stream, state
            close(stream)
        return None

    def put(self, stream: trio.SSLStream[Any], state: State) -> None:
        self.idle.append((trio.current_time(), stream, state))


Handler = Callable[[trio.SocketStream, list[Upstream[Any]], Iterator[int], bytes], Awaitable[None]]
"""Serves one client connection: (stream, upstreams, round robin, Host to send)."""


def run(handle: Handler, description: str | None) -> None:
    """Parse the command line and serve ``handle`` on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--host", default="backend.local")
    parser.add_argument("--ca", required=True)
    trio.run(_serve, handle, parser.parse_args())


async def _serve(handle: Handler, args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    ups: list[Upstream[Any]] = []
    for spec in args.upstream:
        host, _, port = spec.rpartition(":")
        ups.append(Upstream(host, int(port), args.host, ctx))
    rr = itertools.cycle(range(len(ups)))
    listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1", backlog=1024)
    host_header = args.host.encode()

    async def handler(stream: trio.SocketStream) -> None:
        await handle(stream, ups, rr, host_header)

    await trio.serve_listeners(handler, listeners)
