"""An h11 connection bound to a trio stream, shared by the server and the origin client.

h11 is sans-I/O; this is the few lines of glue that both sides of the proxy need: pull
events (reading more bytes when h11 asks), push events, and bound every read by a timeout
so a silent peer cannot pin a task forever.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import trio

__all__ = ["Event", "H11Stream", "reason"]

Event = (
    h11.Request
    | h11.InformationalResponse
    | h11.Response
    | h11.Data
    | h11.EndOfMessage
    | h11.ConnectionClosed
)
READ_SIZE = 64 * 1024


def reason(status: int) -> bytes:
    """The standard reason phrase; h11 would otherwise send an empty one."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class H11Stream:
    """One HTTP/1.1 connection: a trio stream plus the h11 state machine for it."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        role: type[h11.CLIENT] | type[h11.SERVER],
        *,
        read_timeout: float | None = None,
    ) -> None:
        self.stream = stream
        self.conn = h11.Connection(role)
        self.read_timeout = read_timeout
        """Seconds one read may wait for bytes; None waits forever (trio.TooSlowError)."""

    async def next_event(self) -> Event | type[h11.PAUSED]:
        """The next event, reading as needed; raises h11.RemoteProtocolError on bad input.

        As a server, a client that sent ``Expect: 100-continue`` gets its ``100 Continue``
        the moment we actually want the body, as RFC 9110 §10.1.1 intends.
        """
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11 types events loosely
            if self.conn.our_role is h11.SERVER and self.conn.they_are_waiting_for_100_continue:
                await self.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            if self.read_timeout is None:
                data = await self.stream.receive_some(READ_SIZE)
            else:
                with trio.fail_after(self.read_timeout):
                    data = await self.stream.receive_some(READ_SIZE)
            self.conn.receive_data(bytes(data))

    async def send(self, event: Event) -> None:
        """Serialise ``event`` and write it; ConnectionClosed just marks our side closed."""
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    @property
    def reusable(self) -> bool:
        """Both sides finished the exchange cleanly, so the connection may serve another."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
