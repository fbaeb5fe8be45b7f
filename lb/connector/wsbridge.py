"""A TCP byte stream carried in WebSocket binary messages, both ways, as ``cloudflared access``.

Both ends of a private TCP service run this: the connector between the client's WebSocket and
the service's socket, ``tunnel-lb access tcp`` between the WebSocket and the local socket it
accepted.  Framing is wsproto's (sans-I/O, from the h11 family); every chunk read from the TCP
side becomes one binary message, and every message received is written to the TCP side as it
is, which is what cloudflared's carrier does.

Half-close.  A WebSocket has no half-close of its own, so each direction's end is mapped
onto the close handshake (RFC 6455 §5.5.1 lets the side that receives a Close finish what
it is sending before it answers):

* our TCP side reaches EOF -> we send Close 1000 and send nothing more, but keep writing the
  peer's messages to the TCP side until the peer's Close arrives;
* the peer's Close arrives first -> we half-close the TCP side (``send_eof``: the program
  there reads a clean end of its input), keep carrying what it still sends, and answer the
  Close when it reaches EOF in turn;
* either connection breaks -> everything is closed at once (``broken``).

So ``printf 'question' | nc -N`` gets its whole answer, and nothing in flight is lost.  A
peer that answers a Close at once (cloudflared does) simply ends both directions then.

wsproto's connection refuses data frames once a Close was received, so outbound data frames
come from a :class:`~wsproto.frame_protocol.FrameProtocol` of our own (the same framer it
uses); the handshake, inbound frames and control frames stay with the ``WSConnection``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event, Message, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason, FrameProtocol

__all__ = ["PING_INTERVAL", "Carried", "carry"]

log = logging.getLogger("lb.connector")

READ_SIZE = 64 * 1024
PING_INTERVAL = 54.0
"""cloudflared's ping period: traffic that keeps an idle session through proxies (the load
balancer cuts a WebSocket after ``idle_timeout`` of silence both ways)."""

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

Ending = Literal["tcp_closed", "ws_closed", "broken"]
"""``tcp_closed``: our TCP side ended first; ``ws_closed``: the peer sent Close first;
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
    """The WebSocket can take no more frames of this kind (we sent our Close)."""


class _Carrier:
    def __init__(self, ws: WSConnection, wire: trio.abc.Stream, tcp: trio.abc.Stream) -> None:
        self.ws = ws
        self.wire = wire
        self.tcp = tcp
        self.framer = FrameProtocol(client=ws.client, extensions=[])
        self.lock = trio.Lock()  # both tasks write frames to ``wire``
        self.carried = Carried()
        self.closed_sent = False

    async def _write(self, frame: bytes) -> None:
        await self.wire.send_all(frame)

    async def send_data(self, payload: bytes) -> None:
        """One binary message; allowed until we sent our Close (even after the peer's)."""
        async with self.lock:
            if self.closed_sent:
                raise _StopError
            await self._write(bytes(self.framer.send_data(payload, fin=True)))

    async def send_control(self, event: Ping | Pong | CloseConnection) -> None:
        """A Ping or Pong (while open) or our Close (once); :class:`_StopError` if not allowed."""
        async with self.lock:
            state = self.ws.state
            if isinstance(event, Ping | Pong):
                allowed = state is ConnectionState.OPEN
            else:
                allowed = not self.closed_sent and state in (
                    ConnectionState.OPEN,
                    ConnectionState.REMOTE_CLOSING,
                )
            if not allowed:
                raise _StopError
            data = self.ws.send(event)
            if isinstance(event, CloseConnection):
                self.closed_sent = True
            await self._write(data)

    async def tcp_to_ws(self, everything: trio.CancelScope) -> None:
        """Copy TCP reads into binary messages; at EOF send our Close."""
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
                await self.send_data(bytes(data))
                self.carried.to_ws += len(data)
            if self.carried.ending is None:
                self.carried.ending = (
                    "tcp_closed" if code == CloseReason.NORMAL_CLOSURE else "broken"
                )
            await self.send_control(CloseConnection(code=code))
        except _StopError:
            pass
        except _BROKEN:
            self.carried.ending = "broken"
            everything.cancel()
            return
        if code != CloseReason.NORMAL_CLOSURE:
            everything.cancel()

    async def ws_to_tcp(self, everything: trio.CancelScope) -> None:
        """Write received messages to the TCP side until the peer's Close (or a break)."""
        while True:
            try:
                data = await self.wire.receive_some(READ_SIZE)
            except _BROKEN:
                data = b""
            if not data:
                self.carried.ending = "broken"
                everything.cancel()
                return
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if not await self._handle(event, everything):
                    return

    async def _handle(self, event: Event, everything: trio.CancelScope) -> bool:
        """One event from the peer; False when nothing more will be read."""
        if isinstance(event, Message):
            payload = event.data.encode() if isinstance(event, TextMessage) else event.data
            try:
                await self.tcp.send_all(payload)
            except _BROKEN:
                self.carried.ending = "broken"
                with contextlib.suppress(_StopError, *_BROKEN):
                    await self.send_control(CloseConnection(code=CloseReason.INTERNAL_ERROR))
                everything.cancel()
                return False
            self.carried.to_tcp += len(payload)
        elif isinstance(event, Ping):
            with contextlib.suppress(_StopError):
                await self.send_control(event.response())
        elif isinstance(event, CloseConnection):
            self.carried.close_code = event.code
            state = self.ws.state
            if state is ConnectionState.REMOTE_CLOSING:
                # The peer is done sending: pass the end on; the writer answers at our EOF.
                self.carried.ending = self.carried.ending or "ws_closed"
                if isinstance(self.tcp, trio.abc.HalfCloseableStream):
                    with contextlib.suppress(*_BROKEN):
                        await self.tcp.send_eof()
                else:
                    everything.cancel()
                return False
            if state is ConnectionState.OPEN:  # wsproto refused the peer's frames
                self.carried.ending = "broken"
                with contextlib.suppress(_StopError, *_BROKEN):
                    await self.send_control(CloseConnection(code=event.code, reason=event.reason))
                everything.cancel()
            return False  # else the answer to our own Close: both directions are done
        return True

    async def pinger(self, interval: float) -> None:
        """Ping while both directions are open (a half-closed session may go quiet)."""
        while True:
            await trio.sleep(interval)
            try:
                await self.send_control(Ping())
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
    """Carry ``tcp`` over the open WebSocket ``ws`` (whose frames travel on ``wire``).

    Returns when both directions are over (see the module docstring); ``tcp`` is closed, the
    caller closes ``wire``.  ``ping_interval`` sends a Ping that often while the stream is
    open both ways (the connector's side does, as cloudflared).
    """
    carrier = _Carrier(ws, wire, tcp)
    if carried is not None:
        carrier.carried = carried
    try:
        async with trio.open_nursery() as nursery:
            everything = nursery.cancel_scope
            nursery.start_soon(carrier.tcp_to_ws, everything)
            if ping_interval:
                pinger = trio.CancelScope()

                async def ping() -> None:
                    with pinger:
                        await carrier.pinger(ping_interval)

                nursery.start_soon(ping)
                await carrier.ws_to_tcp(everything)
                pinger.cancel()
            else:
                await carrier.ws_to_tcp(everything)
    finally:
        if carrier.carried.ending == "broken":
            await trio.aclose_forcefully(tcp)
        else:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1.0),
                contextlib.suppress(*_BROKEN),
            ):
                await tcp.aclose()
            await trio.aclose_forcefully(tcp)
    if carrier.carried.ending is None:
        carrier.carried.ending = "broken"
    return carrier.carried
