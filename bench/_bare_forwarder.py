"""The yardstick for bench/proxy.py: the barest useful trio + h11 forwarder.

It does what a bare forwarder needs and nothing more: HTTP/1.1 keep-alive downstream,
round robin over upstreams, a LIFO keep-alive pool per upstream (idle > 30 s dropped, one
retry on a fresh connection when a reused one fails before the response), hop-by-hop headers
dropped, Host rewritten.  No steering, limits, timeouts, hooks or error pages: whatever
tunnel-lb spends beyond this is the price of its features.  The command line, the listener,
the upstream dial and the pool are shared with the httptools row (bench/_bare_common.py).

    python bench/_bare_forwarder.py --port 18100 --upstream 127.0.0.1:18443 \\
        --upstream 127.0.0.1:18444 --host backend.local --ca ca.pem
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h11
import trio
from _bare_common import HOP, Upstream, close, run


async def exchange(
    s: trio.SSLStream[Any], c: h11.Connection, head: bytes | None, events: list[Any]
) -> tuple[h11.Response, list[Any]]:
    out = b"".join(c.send(e) or b"" for e in events)
    await s.send_all(out)
    body: list[Any] = []
    resp = None
    while True:
        ev = c.next_event()
        if ev is h11.NEED_DATA:
            data = await s.receive_some(65536)
            if not data and resp is None:
                raise ConnectionError("closed")
            c.receive_data(data)
            continue
        if isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            body.append(ev)
        elif isinstance(ev, h11.EndOfMessage):
            assert resp is not None
            return resp, body
        else:
            raise ConnectionError(repr(ev))


async def handle(
    stream: trio.SocketStream, ups: list[Upstream[h11.Connection]], rr: Iterator[int], host: bytes
) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if not isinstance(ev, h11.Request):
                return
            body: list[Any] = []
            while True:
                e2 = conn.next_event()
                if e2 is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(e2, h11.Data):
                    body.append(e2)
                else:
                    break
            headers = [(n, v) for n, v in ev.headers if n not in HOP]
            headers.append((b"host", host))
            up = ups[next(rr)]
            for attempt in (0, 1):
                got = up.get() if attempt == 0 else None
                reused = got is not None
                s, c = got if got is not None else (await up.dial(), h11.Connection(h11.CLIENT))
                req = h11.Request(method=ev.method, target=ev.target, headers=headers)
                try:
                    resp, rbody = await exchange(s, c, None, [req, *body, h11.EndOfMessage()])
                    break
                except (ConnectionError, trio.BrokenResourceError, h11.ProtocolError):
                    close(s)
                    if not reused:
                        raise
            rheaders = [(n, v) for n, v in resp.headers if n not in HOP]
            out = [
                conn.send(
                    h11.Response(
                        status_code=resp.status_code, headers=rheaders, reason=resp.reason or b"OK"
                    )
                )
            ]
            out += [conn.send(d) for d in rbody]
            out.append(conn.send(h11.EndOfMessage()))
            await stream.send_all(b"".join(x or b"" for x in out))
            if c.our_state is h11.DONE and c.their_state is h11.DONE:
                c.start_next_cycle()
                up.put(s, c)
            else:
                close(s)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except Exception:
        return
    finally:
        await trio.aclose_forcefully(stream)


if __name__ == "__main__":
    run(handle, __doc__)
