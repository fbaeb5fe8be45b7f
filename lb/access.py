"""``tunnel-lb access tcp``: a local port whose connections ride WebSockets to a TCP service.

The client half of a private TCP service, as ``cloudflared access tcp``: it listens on a local
address, and for every connection it accepts it opens a WebSocket to the public hostname
(through the load balancer, ``--via``) and carries the bytes in binary messages
(:mod:`lb.connector.wsbridge`); the tunnel's connector unwraps them to the service.

Each connection is its own WebSocket, so the load balancer steers each one like a request.
The client keeps the ``__cflb`` cookie the load balancer sets on a 101 and sends it with every
later upgrade, so with session affinity a reconnecting client returns to the same tunnel
while it is healthy.  If a tunnel dies under a session, that session ends (its local
connection is closed); the next connection is steered afresh.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from functools import partial

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import ProtocolError

from lb import logs
from lb.config.hosts import split_host_port
from lb.connector.streams import JUMP_DESTINATION
from lb.connector.wsbridge import Carried, carry
from lb.lifecycle import ListenError, host_port
from steering.affinity import COOKIE_NAME

__all__ = ["AccessConfig", "AccessError", "AccessStats", "parse_via", "serve_access"]

log = logging.getLogger("lb.access")

READ_SIZE = 64 * 1024
MAX_REFUSAL_BODY = 4096
"""Bytes of a refusal's body kept for the error message."""


class AccessError(Exception):
    """A session could not be opened (connect, TLS, or the upgrade was refused)."""


def parse_via(text: str) -> tuple[bool, str, int]:
    """``https://host:port``, ``http://host:port`` or ``host:port`` (HTTPS) to (tls, host, port).

    Raises ValueError with a message fit for the command line.
    """
    tls = True
    rest = text
    default_port: int | None = None  # a URL implies its scheme's port; host:port needs one
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(f"--via {text!r}: the scheme must be http or https")
        tls = scheme == "https"
        rest = rest.rstrip("/")
        default_port = 443 if tls else 80
    host, port = split_host_port(rest, default_port=default_port)
    return tls, host, port


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessConfig:
    """Where to listen and where each connection's WebSocket goes."""

    hostname: str
    """The public hostname of the TCP service: the Host (and TLS server name) of each upgrade."""
    listen: str
    """Local ``host:port`` to accept connections on; port 0 picks one."""
    via: str | None = None
    """The load balancer's address (``https://127.0.0.1:8443``); default ``https://hostname``."""
    destination: str | None = None
    """For a ``bastion`` service: the ``host:port`` sent as ``Cf-Access-Jump-Destination``."""
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    """Client context for an HTTPS ``via``; default: the system's CAs."""
    connect_timeout: float = 10.0


@dataclass(slots=True)
class AccessStats:
    """What the client has done, for tests and logs."""

    listening: tuple[str, int] | None = None
    sessions: int = 0
    """Sessions whose upgrade was accepted."""
    open: int = 0
    refused: int = 0
    """Connections closed because no WebSocket could be opened (``last_error`` says why)."""
    last_error: str = ""
    cookie: str | None = None
    """The ``__cflb`` value the load balancer set last; sent with every upgrade."""
    ended: list[Carried] = field(default_factory=list)
    """How each finished session ended, oldest first (the last 100)."""


class _Client:
    def __init__(self, config: AccessConfig, stats: AccessStats) -> None:
        self.config = config
        self.stats = stats
        self.tls, self.host, self.port = parse_via(config.via or f"https://{config.hostname}")
        self.context = config.ssl_context
        if self.tls and self.context is None:
            self.context = ssl.create_default_context()

    async def _wire(self) -> trio.abc.Stream:
        stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
        if self.tls:
            assert self.context is not None
            tls = trio.SSLStream(stream, self.context, server_hostname=self.config.hostname)
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
            stream = tls
        return stream

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = []
        if self.stats.cookie:
            headers.append((b"cookie", f"{COOKIE_NAME}={self.stats.cookie}".encode("latin-1")))
        if self.config.destination:
            headers.append((JUMP_DESTINATION, self.config.destination.encode("latin-1")))
        return headers

    def _keep_cookie(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name.lower() == b"set-cookie":
                pair = value.decode("latin-1").split(";", 1)[0]
                key, _, cookie = pair.partition("=")
                if key.strip() == COOKIE_NAME and cookie.strip():
                    self.stats.cookie = cookie.strip()

    async def open(self) -> tuple[WSConnection, trio.abc.Stream]:
        """Connect and upgrade; the open WebSocket and its stream, or :class:`AccessError`."""
        try:
            with trio.fail_after(self.config.connect_timeout):
                wire = await self._wire()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise AccessError(f"cannot reach {self.host}:{self.port}: {exc}") from None
        try:
            with trio.fail_after(self.config.connect_timeout):
                ws = await self._upgrade(wire)
        except BaseException as exc:
            await trio.aclose_forcefully(wire)
            if isinstance(exc, trio.TooSlowError):
                raise AccessError("no answer to the WebSocket upgrade") from None
            if isinstance(exc, ProtocolError | trio.BrokenResourceError | OSError):
                raise AccessError(f"the WebSocket upgrade failed: {exc}") from None
            raise
        return ws, wire

    async def _upgrade(self, wire: trio.abc.Stream) -> WSConnection:
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(host=self.config.hostname, target="/", extra_headers=self._headers())
        await wire.send_all(ws.send(request))
        status = 0
        body = b""
        while True:
            data = await wire.receive_some(READ_SIZE)
            if not data and not status:
                raise AccessError("the connection closed before the upgrade was answered")
            ws.receive_data(bytes(data) if data else None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    self._keep_cookie(event.extra_headers)
                    return ws
                if isinstance(event, RejectConnection):
                    self._keep_cookie(event.headers)
                    status = event.status_code
                    if not event.has_body:
                        raise AccessError(f"the upgrade was refused: {status}")
                elif isinstance(event, RejectData):
                    body = (body + event.data)[:MAX_REFUSAL_BODY]
                    if event.body_finished:
                        text = body.decode("utf-8", "replace").strip().splitlines()
                        detail = f": {text[0]}" if text else ""
                        raise AccessError(f"the upgrade was refused: {status}{detail}")
            if not data:
                raise AccessError(f"the upgrade was refused: {status}")

    async def session(self, local: trio.SocketStream) -> None:
        """One accepted local connection, carried until either side ends it."""
        try:
            ws, wire = await self.open()
        except AccessError as exc:
            self.stats.refused += 1
            self.stats.last_error = str(exc)
            log.warning(
                "access_session_failed",
                extra={"fields": {"hostname": self.config.hostname, "error": str(exc)}},
            )
            await _refuse(local)
            return
        self.stats.sessions += 1
        self.stats.open += 1
        carried = Carried()
        try:
            await carry(ws, wire, local, carried=carried)
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1.0),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                await wire.aclose()
            await trio.aclose_forcefully(wire)
            self.stats.ended = [*self.stats.ended[-99:], carried]
            self.stats.open -= 1
        logs.event(
            "access_session_ended",
            hostname=self.config.hostname,
            ending=carried.ending,
            to_ws=carried.to_ws,
            to_tcp=carried.to_tcp,
        )


async def _refuse(local: trio.SocketStream) -> None:
    """Close a connection we could not carry with a FIN, not a reset: what the client sent
    is read and dropped first (closing over unread input makes the kernel send a reset)."""
    try:
        with trio.move_on_after(1.0):
            await local.send_eof()
            total = 0
            while total < (1 << 20) and (data := await local.receive_some(READ_SIZE)):
                total += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(local)


async def serve_access(
    config: AccessConfig,
    *,
    stats: AccessStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``config.listen`` until cancelled; ``nursery.start`` gets the bound address."""
    stats = stats if stats is not None else AccessStats()
    client = _Client(config, stats)
    host, port = split_host_port(config.listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # in use, not an address of this host: say which
        raise ListenError(host_port(host, port), exc) from exc
    name = listeners[0].socket.getsockname()
    stats.listening = (str(name[0]), int(name[1]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, client.session, listeners))
        task_status.started(stats.listening)
