"""Private TCP services (``tcp://``, ``ssh://``, ``rdp://``, ``smb://``, ``bastion``).

A client (``cloudflared access tcp``, or ``tunnel-lb access tcp``) asks for such a hostname
with a WebSocket upgrade; the connector validates the handshake with wsproto, connects to the
service (or, in bastion mode, to the ``Cf-Access-Jump-Destination`` the client names, if the
``bastion_allow`` list has it), answers 101 and carries the byte stream in binary messages
(:mod:`lb.connector.wsbridge`).  Failures answer before the 101, as cloudflared does: a
request that is not a WebSocket handshake gets 400 (426 for a wrong version), a refused
bastion destination 403, an unreachable service 502 "Unable to reach the origin service".
"""

from __future__ import annotations

import logging
from typing import Protocol

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError as WsProtocolError

from lb import logs
from lb.config.hosts import split_host_port
from lb.connector.h11io import H11Stream
from lb.connector.ingress import Bastion, TcpService
from lb.connector.proxy import BAD_GATEWAY_BODY
from lb.connector.stats import ConnectorStats
from lb.connector.wsbridge import PING_INTERVAL, carry

__all__ = ["JUMP_DESTINATION", "StreamClient", "jump_destination", "serve_stream"]

log = logging.getLogger("lb.connector")

JUMP_DESTINATION = b"cf-access-jump-destination"
"""The header cloudflared's bastion mode reads the destination from (``access --destination``)."""
_TEXT = b"text/plain; charset=utf-8"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class StreamClient(Protocol):
    """What a stream needs from the client connection (the server's ``_Client``)."""

    peer: str
    http: H11Stream

    async def respond(self, status: int, body: bytes, content_type: bytes | None) -> None:
        """Answer locally (draining any request body first)."""

    def answered(self, status: int) -> None:
        """Count the request; called just before the answer's last byte."""


def jump_destination(value: str) -> str:
    """The ``host:port`` of a ``Cf-Access-Jump-Destination`` value, as cloudflared reads it:
    a URL's authority (``ssh://db:22/x`` -> ``db:22``), else the text before any ``/``."""
    text = value.strip()
    if "://" in text:
        text = text.partition("://")[2]
    return text.partition("/")[0]


def _allowed(destination: str, allow: tuple[str, ...]) -> tuple[str, int] | None:
    """The parsed destination when ``allow`` lists it (hosts compare case-insensitively)."""
    try:
        host, port = split_host_port(destination)
    except ValueError:
        return None
    for entry in allow:
        allowed_host, allowed_port = split_host_port(entry)
        if allowed_port == port and allowed_host.lower() == host.lower():
            return host, port
    return None


async def _until_paused(http: H11Stream) -> bool:
    """Read the rest of the request; True when h11 paused for a protocol switch.

    An upgrade request has no body; one that has is refused at its first bytes (the answer
    drains a bounded amount of the rest, like any local answer).
    """
    while True:
        event = await http.next_event()
        if event is h11.PAUSED:
            return True
        if isinstance(event, h11.Data):
            return False
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            # h11 exports the state without listing it in __all__.
            return http.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]


async def serve_stream(
    client: StreamClient,
    request: h11.Request,
    service: TcpService | Bastion,
    *,
    allow: tuple[str, ...],
    connect_timeout: float,
    stats: ConnectorStats,
) -> None:
    """Answer one request for a TCP service: refuse it, or carry the stream until it ends."""
    http = client.http
    upgrade = await _until_paused(http)
    ws = WSConnection(ConnectionType.SERVER)
    try:
        if not upgrade:
            raise WsProtocolError("not a WebSocket upgrade", event_hint=None)
        ws.initiate_upgrade_connection(list(request.headers), request.target)
        handshake = next(ws.events())
        assert isinstance(handshake, Request)
    except WsProtocolError as exc:
        status = getattr(exc.event_hint, "status_code", 400)
        body = (
            f"{status}: this hostname carries a TCP service; connect with "
            f"`tunnel-lb access tcp` (or `cloudflared access tcp`): {exc}\n"
        ).encode()
        await client.respond(status, body, _TEXT)
        return
    if isinstance(service, Bastion):
        raw = next((v for n, v in request.headers if n == JUMP_DESTINATION), None)
        if raw is None:
            body = b"400: bastion mode needs the Cf-Access-Jump-Destination header\n"
            await client.respond(400, body, _TEXT)
            return
        destination = jump_destination(raw.decode("latin-1"))
        target = _allowed(destination, allow)
        if target is None:
            log.info(
                "bastion_refused",
                extra={"fields": {"peer": client.peer, "destination": destination}},
            )
            body = f"403: destination {destination!r} is not in bastion_allow\n".encode()
            await client.respond(403, body, _TEXT)
            return
        host, port = target
    else:
        host, port = service.host, service.port
    try:
        with trio.fail_after(connect_timeout):
            origin = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        log.warning(
            "tcp_service_unreachable",
            extra={"fields": {"host": host, "port": port, "error": repr(exc)}},
        )
        await client.respond(502, BAD_GATEWAY_BODY, _TEXT)
        return
    try:
        accept = ws.send(AcceptConnection())
        ws.receive_data(http.conn.trailing_data[0])  # frames sent right behind the request
        client.answered(101)
        await http.stream.send_all(accept)
    except _GONE:
        await trio.aclose_forcefully(origin)
        return
    stats.sessions += 1
    stats.sessions_open += 1
    try:
        carried = await carry(ws, http.stream, origin, ping_interval=PING_INTERVAL)
        logs.event(
            "tcp_stream_ended",
            peer=client.peer,
            host=host,
            port=port,
            ending=carried.ending,
            to_tcp=carried.to_tcp,
            to_ws=carried.to_ws,
        )
    finally:
        stats.sessions_open -= 1
