"""The yardstick for bench/proxy.py: the barest useful trio + h11 forwarder.

It does what a bare forwarder needs and nothing more: HTTP/1.1 keep-alive downstream,
round robin over upstreams, a LIFO keep-alive pool per upstream (idle > 30 s dropped, one
retry on a fresh connection when a reused one fails before the response), hop-by-hop headers
dropped, Host rewritten.  No steering, limits, timeouts, hooks or error pages: whatever
tunnel-lb spends beyond this is the price of its features.

    python bench/_bare_forwarder.py --port 18100 --upstream 127.0.0.1:18443 \\
        --upstream 127.0.0.1:18444 --host backend.local --ca ca.pem
"""

from __future__ import annotations

import argparse
import itertools
import ssl
from typing import Any

import h11
import trio

HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
}


class Upstream:
    def __init__(self, host: str, port: int, sni: str, ctx: ssl.SSLContext) -> None:
        self.host, self.port, self.sni, self.ctx = host, port, sni, ctx
        self.idle: list[tuple[float, trio.SSLStream[Any], h11.Connection]] = []

    async def fresh(self) -> tuple[trio.SSLStream[Any], h11.Connection]:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        tls = trio.SSLStream(tcp, self.ctx, server_hostname=self.sni, https_compatible=True)
        await tls.do_handshake()
        return tls, h11.Connection(h11.CLIENT)

    def get(self) -> tuple[trio.SSLStream[Any], h11.Connection] | None:
        limit = trio.current_time() - 30.0
        while self.idle:
            at, s, c = self.idle.pop()
            if at >= limit:
                return s, c
            s.transport_stream.socket.close()  # type: ignore[attr-defined]
        return None


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


async def handle(stream: trio.SocketStream, ups: list[Upstream], rr: Any, host: bytes) -> None:
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
                s, c = got if got is not None else await up.fresh()
                req = h11.Request(method=ev.method, target=ev.target, headers=headers)
                try:
                    resp, rbody = await exchange(s, c, None, [req, *body, h11.EndOfMessage()])
                    break
                except (ConnectionError, trio.BrokenResourceError, h11.ProtocolError):
                    s.transport_stream.socket.close()  # type: ignore[attr-defined]
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
                up.idle.append((trio.current_time(), s, c))
            else:
                s.transport_stream.socket.close()  # type: ignore[attr-defined]
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except Exception:
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    ups = []
    for spec in args.upstream:
        h, _, p = spec.rpartition(":")
        ups.append(Upstream(h, int(p), args.host, ctx))
    rr = itertools.cycle(range(len(ups)))
    listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1", backlog=1024)

    async def handler(stream: trio.SocketStream) -> None:
        await handle(stream, ups, rr, args.host.encode())

    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--host", default="backend.local")
    parser.add_argument("--ca", required=True)
    trio.run(main, parser.parse_args())
