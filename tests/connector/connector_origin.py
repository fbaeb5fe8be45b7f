"""A tiny trio + h11 origin for the connector tests: echoes what it received as JSON.

Kept independent of ``lb.connector`` so the proxy is tested against code it does not share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h11
import trio


@dataclass
class Origin:
    """What the origin saw; ``port`` is filled once it listens."""

    port: int = 0
    connections: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)


async def _serve(stream: trio.abc.Stream, origin: Origin) -> None:
    origin.connections += 1
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            headers = {k.decode(): v.decode() for k, v in request.headers}
            seen = {
                "method": request.method.decode(),
                "target": request.target.decode(),
                "headers": headers,
                "body": body.decode(),
            }
            origin.requests.append(seen)
            target = request.target.decode()
            if "/big/" in target:
                size = int(target.rpartition("/big/")[2])
                chunks = [b"x" * 1000] * (size // 1000)
            else:
                chunks = [json.dumps(seen).encode()]
            if request.method == b"HEAD":
                chunks = []
            # No Content-Length: the response is chunked, the relay must stream it.
            data = conn.send(
                h11.Response(status_code=201, headers=[(b"x-origin", b"yes")], reason=b"Created")
            )
            await stream.send_all(data)
            for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve_origin(origin: Origin, *, task_status: trio.TaskStatus[int]) -> None:
    """Listen on 127.0.0.1:0 and serve until cancelled; started() gets the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    origin.port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await _serve(stream, origin)

    task_status.started(origin.port)  # already listening: connections queue up
    await trio.serve_listeners(handler, listeners)


async def serve_unix_origin(
    origin: Origin, path: str, *, task_status: trio.TaskStatus[None]
) -> None:
    """The same origin on a unix socket at ``path``."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    listener = trio.SocketListener(sock)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve(stream, origin)

    task_status.started()
    await trio.serve_listeners(handler, [listener])
