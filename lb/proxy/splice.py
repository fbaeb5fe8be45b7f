"""A WebSocket upgrade: relay the 101, then copy bytes both ways until one side ends.

Why apart: after a 101 neither side speaks HTTP any more, so none of the exchange's framing
applies; what is left is two pipes and one inactivity deadline (``idle_timeout`` of silence
in both directions; phase ``websocket`` in lb/proxy/state.py).
"""

from __future__ import annotations

import trio

from lb.proxy import errors, http1
from lb.proxy.errors import RequestError, UpstreamError
from lb.proxy.headers import response_headers
from lb.proxy.hooks import RequestRecord
from lb.proxy.state import RECEIVE_SIZE, Exchange, Move
from lb.proxy.upstream import UpstreamConnection
from lb.proxy.watchdog import Watchdog

__all__ = ["splice"]


async def splice(
    ex: Exchange,
    up: UpstreamConnection,
    response: http1.InformationalResponse,
    set_cookie: bytes | None,
) -> bool:
    """After a 101 from upstream: relay it, then copy bytes both ways until one side ends.

    The watchdog guards the tunnel as an inactivity timeout: ``idle_timeout`` after the last
    chunk in either direction, the connection is cut.  Always False: the connection cannot
    carry another request (the upstream connection is discarded by the caller).
    """
    record = ex.record
    record.websocket = True
    conn = ex.conn
    stream = ex.stream
    headers = response_headers(response.headers, set_cookie=set_cookie, upgrade=True)
    try:
        head = conn.send(
            http1.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
    except http1.LocalProtocolError as exc:
        raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL) from exc
    record.status = 101
    idle = ex.config.engine.limits.idle_timeout
    ex.advance(Move.UPGRADE, idle)
    ex.shared.hooks.upgrade(record)
    from_client, _ = conn.trailing_data
    from_upstream, _ = up.http.trailing_data
    try:
        await stream.send_all(head + from_upstream)
        record.bytes_out += len(from_upstream)
        if from_client:
            await up.stream.send_all(from_client)
            record.bytes_in += len(from_client)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        record.error = RequestError.CLIENT_DISCONNECTED
        return False
    async with trio.open_nursery() as nursery:
        scope, watchdog = nursery.cancel_scope, ex.watchdog
        nursery.start_soon(_pipe, stream, up.stream, scope, watchdog, idle, record, True)
        nursery.start_soon(_pipe, up.stream, stream, scope, watchdog, idle, record, False)
    return False


async def _pipe(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    scope: trio.CancelScope,
    watchdog: Watchdog,
    idle: float,
    record: RequestRecord,
    inbound: bool,
) -> None:
    """Copy bytes from ``src`` to ``dst`` until EOF or an error, then end the splice.

    Every chunk pushes the ``watchdog`` deadline ``idle`` seconds ahead, so traffic in either
    direction keeps the tunnel open and silence both ways ends it.  Bytes are counted in
    ``record.bytes_in`` (client to upstream, ``inbound``) or ``record.bytes_out``.
    """
    try:
        while True:
            data = await src.receive_some(RECEIVE_SIZE)
            if not data:
                break
            watchdog.push(idle)
            await dst.send_all(data)
            watchdog.push(idle)
            if inbound:
                record.bytes_in += len(data)
            else:
                record.bytes_out += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()
