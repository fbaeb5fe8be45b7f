"""Opening the downstream listeners from ``engine.listen``.

One socket per configured listener (no dual-stack fan-out: the address says which family).
HTTPS when ``certificate`` and ``key`` are set, with one certificate per listener; SNI-based
certificate choice is not implemented.  ``reuse_port`` sets SO_REUSEPORT so that several
worker processes (``engine.workers``) can accept on the same port, the kernel spreading new
connections between them.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence

import trio

from lb.config.model import Listener

__all__ = ["AnyListener", "bound_address", "is_https", "open_listeners", "server_ssl_context"]

AnyListener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


def server_ssl_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server TLS context for one listener, HTTP/1.1 only (ALPN)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certificate, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def open_listeners(
    listen: Sequence[Listener], *, reuse_port: bool = False, backlog: int = 1024
) -> list[AnyListener]:
    """Bind every configured listener; port 0 picks a free port."""
    out: list[AnyListener] = []
    try:
        for spec in listen:
            sock = await _bind(spec.address, spec.port, reuse_port=reuse_port, backlog=backlog)
            plain = trio.SocketListener(sock)
            if spec.certificate and spec.key:
                ctx = server_ssl_context(spec.certificate, spec.key)
                out.append(trio.SSLListener(plain, ctx, https_compatible=True))
            else:
                out.append(plain)
    except BaseException:
        for done in out:
            await done.aclose()
        raise
    return out


async def _bind(host: str, port: int, *, reuse_port: bool, backlog: int) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, addr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def is_https(listener: AnyListener) -> bool:
    """Whether connections from ``listener`` speak TLS."""
    return isinstance(listener, trio.SSLListener)


def bound_address(listener: AnyListener) -> tuple[str, int]:
    """The (host, port) ``listener`` is bound to."""
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    name = inner.socket.getsockname()
    return str(name[0]), int(name[1])
