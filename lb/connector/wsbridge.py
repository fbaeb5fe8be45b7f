"""A TCP byte stream carried in WebSocket binary messages, both ways, as ``cloudflared access``.

Both ends of a private TCP service run this: the connector between the client's WebSocket and
the service's socket, ``tunnel-lb access tcp`` between the WebSocket and the local socket it
accepted.  Framing is wsproto's (sans-I/O, from the h11 family); every chunk read from the TCP
side becomes one binary message, and every message received is written to the TCP side as it
is, which is what cloudflared's carrier does.

A WebSocket has no half-close, so the end of a stream is mapped onto the close handshake:

* the TCP side ends (EOF) -> we send Close 1000, keep writing to the TCP side whatever the
  peer had already sent, and stop when its Close answer arrives (or ``close_wait`` passes);
* the peer sends Close -> we answer it, then half-close the TCP side (FIN, so the program
  there reads a clean end of stream) and stop reading it: nothing may follow a Close;
* either connection breaks -> the other is closed at once.

So nothing in flight is lost and each TCP peer sees an orderly FIN, but a program that
half-closes and then waits for more answers (``nc -N``) ends its session, as with cloudflared.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

__all__ = ["CLOSE_WAIT", "PING_INTERVAL", "Carried", "carry"]

log = logging.getLogger("lb.connector")

READ_SIZE = 64 * 1024
PING_INTERVAL = 54.0
"""cloudflared's ping period: traffic that keeps an idle session through proxies (the load
balancer cuts a WebSocket after ``idle_timeout`` of silence both ways)."""
CLOSE_WAIT = 10.0
"""Seconds we wait for the peer's Close answer after sending ours."""

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

Ending = Literal["tcp_closed", "ws_closed", "broken"]
"""``tcp_closed``: the TCP side ended first; ``ws_closed``: the peer sent Close first;
``broken``: a connection broke (reset, or closed without a close handshake)."""


@dataclass(slots=True)
class Carried:
    """Bytes carried so far, updated as they go (tests and logs read them)."""

    to_ws: int = 0
    """Payload bytes read from the TCP side and sent as messages."""
    to_tcp: int = 0
    """Payload bytes received in messages and written to the TCP side."""
    ending: Ending | None = None
    close_code: int | None = None
    """The code of the peer's Close frame, when one arrived."""


class _StopError(Exception):
    """The WebSocket can take no more data frames (a Close was sent or received)."""


class _Carrier:
    def __init__(self, ws: WSConnection, wire: trio.abc.Stream, tcp: trio.abc.Stream) -> None:
        self.ws = ws
        self.wire = wire
        self.tcp = tcp
        self.lock = trio.Lock()  # both tasks write frames to ``wire``
        self.carried = Carried()
        self.reader = trio.CancelScope()

    async def send(self, event: Event) -> None:
        """Frame ``event`` and write it; :class:`_StopError` when the state forbids it.

        The lock is held from framing to the end of the write, so frames reach the wire in
        the order wsproto produced them.
        """
        async with self.lock:
            state = self.ws.state
            if state is not ConnectionState.OPEN and not (
                isinstance(event, CloseConnection) and state is ConnectionState.REMOTE_CLOSING
            ):
                raise _StopError
            await self.wire.send_all(self.ws.send(event))

    async def tcp_to_ws(self, done: trio.CancelScope) -> None:
        """Copy TCP reads into binary messages; at EOF start the close handshake."""
        code = CloseReason.NORMAL_CLOSURE
        try:
            while True:
                try:
                    data = await self.tcp.receive_some(READ_SIZE)
                except _BROKEN:
                    code = CloseReason.INTERNAL_ERROR
                    break
                if not data:
                    break
                await self.send(BytesMessage(data=bytes(data)))
                self.carried.to_ws += len(data)
            await self.send(CloseConnection(code=code))
        except _StopError:
            return  # the peer closed first: the reader is finishing
        except _BROKEN:
            self.carried.ending = "broken"
            done.cancel()
            return
        self.carried.ending = self.carried.ending or (
            "tcp_closed" if code == CloseReason.NORMAL_CLOSURE else "broken"
        )
        # What the peer sent before it saw our Close still goes to the TCP side.
        self.reader.deadline = trio.current_time() + CLOSE_WAIT

    async def ws_to_tcp(self) -> None:
        """Write received messages to the TCP side; answer pings and the peer's Close."""
        with self.reader:
            while True:
                try:
                    data = await self.wire.receive_some(READ_SIZE)
                except _BROKEN:
                    data = b""
                if not data:
                    self.carried.ending = self.carried.ending or "broken"
                    return
                self.ws.receive_data(bytes(data))
                for event in self.ws.events():
                    if not await self._handle(event):
                        return

    async def _handle(self, event: Event) -> bool:
        """One event from the peer; False when the stream is over."""
        if isinstance(event, Message):
            payload = event.data.encode() if isinstance(event, TextMessage) else event.data
            try:
                await self.tcp.send_all(payload)
            except _BROKEN:
                self.carried.ending = "broken"
                return False
            self.carried.to_tcp += len(payload)
        elif isinstance(event, Ping):
            with contextlib.suppress(_StopError):
                await self.send(event.response())
        elif isinstance(event, CloseConnection):
            self.carried.close_code = event.code
            state = self.ws.state
            if state is ConnectionState.REMOTE_CLOSING:
                self.carried.ending = self.carried.ending or "ws_closed"
                reply: Event = event.response()
            elif state is ConnectionState.OPEN:  # wsproto refused the peer's frames
                self.carried.ending = "broken"
                reply = CloseConnection(code=event.code, reason=event.reason)
            else:
                return False  # the answer to our own Close
            try:
                await self.send(reply)
            except (_StopError, *_BROKEN):
                pass
            return False
        return True

    async def pinger(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await self.send(Ping())
            except (_StopError, *_BROKEN):
                return


async def carry(
    ws: WSConnection,
    wire: trio.abc.Stream,
    tcp: trio.abc.Stream,
    *,
    ping_interval: float | None = None,
    carried: Carried | None = None,
) -> Carried:
    """Carry ``tcp`` over the open WebSocket ``ws`` (whose bytes travel on ``wire``).

    Returns when the stream is over (see the module docstring); the caller closes ``wire``.
    ``tcp`` is half-closed (FIN) when the peer ended first, and closed in every case.
    ``ping_interval`` sends a Ping that often (the connector's side, as cloudflared does).
    """
    carrier = _Carrier(ws, wire, tcp)
    if carried is not None:
        carrier.carried = carried
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(carrier.tcp_to_ws, nursery.cancel_scope)
            if ping_interval:
                nursery.start_soon(carrier.pinger, ping_interval)
            await carrier.ws_to_tcp()
            nursery.cancel_scope.cancel()
        if carrier.carried.ending == "ws_closed" and isinstance(tcp, trio.abc.HalfCloseableStream):
            try:
                with trio.move_on_after(CLOSE_WAIT):
                    await tcp.send_eof()
            except _BROKEN:
                pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(*_BROKEN):
            await tcp.aclose()
        await trio.aclose_forcefully(tcp)
    if carrier.carried.ending is None:
        carrier.carried.ending = "broken"
    return carrier.carried
