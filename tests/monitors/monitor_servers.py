"""Loopback test servers for the monitor tests: a Host-routing HTTP(S) stand-in for cloudflared.

:class:`HostRouter` listens on 127.0.0.1 (TLS when given a server context) and answers each
request by the first rule whose hostname matches the Host header (R48: port stripped,
case-insensitive, ``*.d`` matches ``x.d`` but not ``d``), else by its catch-all (404), like a
cloudflared ingress.  A rule's action is an async callable; the builders below make the
well-behaved and the misbehaving ones (silent, reset, garbage, huge, drip, redirect).

It records what probes look like on the wire: SNI names (via ``sni_callback``), Host headers,
User-Agents, hits, connections and body bytes sent, so tests assert on facts, not on logs.
Start it with ``port = await router.start(nursery)``; cancelling the nursery stops it.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import h11
import trio

__all__ = [
    "Action",
    "HostRouter",
    "Reply",
    "drip",
    "garbage",
    "huge",
    "listen_silently",
    "redirect",
    "reset_mid_response",
    "respond",
    "silent",
]


@dataclass
class Reply:
    """What an action needs: the connection, its raw socket, the request and the router."""

    conn: h11.Connection
    stream: trio.abc.Stream
    tcp: trio.SocketStream
    request: h11.Request
    router: HostRouter

    async def send(self, *events: h11.Event) -> None:
        """Serialise ``events`` and send them, counting body bytes."""
        for ev in events:
            data = self.conn.send(ev)
            if isinstance(ev, h11.Data):
                self.router.body_bytes_sent += len(ev.data)
            if data:
                await self.stream.send_all(data)


Action = Callable[[Reply], Awaitable[None]]


def respond(
    status: int = 200, body: bytes = b"ok", headers: Sequence[tuple[str, str]] = ()
) -> Action:
    """A plain response with Content-Length."""

    async def action(r: Reply) -> None:
        hdrs = [("Content-Length", str(len(body))), *headers]
        await r.send(h11.Response(status_code=status, headers=hdrs))
        if r.request.method != b"HEAD":
            await r.send(h11.Data(data=body))
        await r.send(h11.EndOfMessage())

    return action


def redirect(location: str, status: int = 301) -> Action:
    """A redirect to ``location``."""
    return respond(status, b"moved", [("Location", location)])


def silent() -> Action:
    """Read the request, never answer."""

    async def action(r: Reply) -> None:
        await trio.sleep_forever()

    return action


def reset_mid_response() -> Action:
    """Send a head and part of the body, then reset the connection (RST via SO_LINGER 0)."""

    async def action(r: Reply) -> None:
        await r.send(h11.Response(status_code=200, headers=[("Content-Length", "1000")]))
        await r.send(h11.Data(data=b"x" * 10))
        await trio.sleep(0.05)  # on purpose: the part arrives before the reset
        r.tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.tcp.socket.close()

    return action


def garbage() -> Action:
    """Answer with bytes that are not HTTP."""

    async def action(r: Reply) -> None:
        await r.stream.send_all(b"\x00\x01SSH-2.0-nope\r\n\r\n")
        await trio.sleep_forever()

    return action


def huge(total: int, chunk: int = 65536) -> Action:
    """A 200 whose body is ``total`` bytes, streamed (not held in memory) until the peer quits."""

    async def action(r: Reply) -> None:
        await r.send(h11.Response(status_code=200, headers=[("Content-Length", str(total))]))
        block = b"y" * chunk
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            await r.send(h11.Data(data=block[:n]))
            sent += n
        await r.send(h11.EndOfMessage())

    return action


def drip(every: float, body: bytes = b"ok") -> Action:
    """A 200 whose head arrives one byte every ``every`` seconds."""

    async def action(r: Reply) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for i in range(len(data)):
            await r.stream.send_all(data[i : i + 1])
            await trio.sleep(every)  # the drip itself

    return action


def _matches(rule: str, host: str) -> bool:
    rule = rule.lower()
    if rule.startswith("*."):
        return host.endswith(rule[1:])
    return host == rule


@dataclass
class HostRouter:
    """A cloudflared-ingress-like HTTP(S) server on loopback; see the module docstring."""

    rules: Sequence[tuple[str, Action]] = ()
    ssl_context: ssl.SSLContext | None = None
    catch_all: Action = field(default_factory=lambda: respond(404, b"no ingress rule"))
    known_sni: frozenset[str] | None = None
    """When set, a ClientHello naming another server is refused with unrecognized_name."""
    sni: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    hits: int = 0
    connections: int = 0
    closed: int = 0
    """Connections whose handler has finished and closed the socket."""
    body_bytes_sent: int = 0
    port: int = 0
    handshakes: bool = True
    """False: accept new connections but never answer their TLS ClientHello (a stuck TLS
    stack); connections already open keep working."""

    async def start(self, nursery: trio.Nursery) -> int:
        """Listen on 127.0.0.1, serve in ``nursery``; return the port."""
        if self.ssl_context is not None:
            self.ssl_context.sni_callback = self._on_sni
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)
        return self.port

    def _on_sni(self, sslobj: object, name: str | None, ctx: ssl.SSLContext) -> int | None:
        self.sni.append(name)
        if self.known_sni is not None and name not in self.known_sni:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def route(self, host: str) -> Action:
        """R48: the first rule matching ``host`` (port stripped, any case), else the catch-all."""
        name = host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()
        for rule, action in self.rules:
            if _matches(rule, name):
                return action
        return self.catch_all

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        stream: trio.abc.Stream = tcp
        try:
            if self.ssl_context is not None:
                if not self.handshakes:
                    await trio.sleep_forever()
                tls = trio.SSLStream(tcp, self.ssl_context, server_side=True)
                stream = tls
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError:
                    # trio drops the pending TLS alert (e.g. unrecognized_name) on a failed
                    # handshake; send it, as a real TLS server (cloudflared) would.
                    await tcp.send_all(tls._outgoing.read())
                    raise
            await self._serve(tcp, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            pass
        finally:
            tcp.socket.close()
            self.closed += 1

    async def _serve(self, tcp: trio.SocketStream, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(bytes(data))
                continue
            if not isinstance(event, h11.Request):
                continue
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            host = headers.get("host", "")
            self.hits += 1
            self.hosts.append(host)
            self.user_agents.append(headers.get("user-agent", ""))
            self.paths.append(event.target.decode())
            await self.route(host)(Reply(conn, stream, tcp, event, self))
            while conn.their_state is h11.SEND_BODY:
                if conn.next_event() is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return


async def listen_silently(nursery: trio.Nursery) -> int:
    """A port that completes TCP handshakes (kernel backlog) but never reads: a silent server."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    async def hold() -> None:
        try:
            await trio.sleep_forever()
        finally:
            sock.close()

    nursery.start_soon(hold)
    port: int = sock.getsockname()[1]
    return port
