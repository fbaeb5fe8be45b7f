"""The traffic driver's cookies: only a cookie-keeping client sends ``__cflb``, its own.

The simulator does not model a client that sends someone else's cookie; httpx's shared
cookie jar used to make every non-keeping client send the last ``__cflb`` set for anyone.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import h11
import trio

from lb.connector.h11io import H11Stream
from lb.rehearse.client import Pool
from lb.rehearse.drive import Driven, _users
from lb.sim.scenario import Traffic, load_scenario

SCENARIO = (
    Path(__file__).resolve().parents[2] / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
)


async def _serve(seen: list[tuple[bytes, bytes | None]], stream: trio.SocketStream) -> None:
    """Answer every request with a ``__cflb`` of its own; note (client IP, its Cookie)."""
    http = H11Stream(stream, h11.SERVER)
    try:
        while isinstance(request := await http.next_event(), h11.Request):
            fields = dict(request.headers)
            seen.append((fields[b"cf-connecting-ip"], fields.get(b"cookie")))
            while not isinstance(await http.next_event(), h11.EndOfMessage):
                pass
            cookie = b"__cflb=n%d; Path=/" % len(seen)
            headers = [(b"content-length", b"0"), (b"set-cookie", cookie)]
            await http.send(h11.Response(status_code=200, headers=headers))
            await http.send(h11.EndOfMessage())
            http.conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.ProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def test_a_client_that_does_not_keep_its_cookie_sends_none(nursery: trio.Nursery) -> None:
    seen: list[tuple[bytes, bytes | None]] = []
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(_serve, seen), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    sc = load_scenario(SCENARIO)
    # Two clients, the first of them (``cookies`` 0.5) keeping its cookie; 40 requests.
    host = sc.traffic[0].host
    t = Traffic(
        datacenter="FRA",
        steps=((0.0, 200.0),),
        clients=2,
        cookies=0.5,
        headers=0.0,
        host=host,
        path="/",
    )
    sc = dataclasses.replace(sc, traffic=(t,), duration=0.2, tick=0.1)
    pool = Pool(f"127.0.0.1:{port}")
    driven = Driven(0.0, {})
    start = trio.current_time()
    try:
        async with trio.open_nursery() as requests:
            await _users(sc, t, 0, pool, 10.0, start, driven, requests, start)
    finally:
        await pool.aclose()
    keeper, other = b"10.0.0.0", b"10.0.0.1"
    assert {ip for ip, _ in seen} == {keeper, other}
    assert all(cookie is None for ip, cookie in seen if ip == other)
    # The keeper sends the cookie it was given, once it was answered.
    assert any(
        cookie is not None and cookie.startswith(b"__cflb=n") for ip, cookie in seen if ip == keeper
    )
    assert all(cookie is None or cookie.startswith(b"__cflb=n") for ip, cookie in seen)
