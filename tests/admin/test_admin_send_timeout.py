"""A client that asks and never reads cannot hold an admin connection task forever."""

from __future__ import annotations

import logging
import socket
from functools import partial

import pytest
import trio
from waiting import wait_until

import lb.admin
from lb.admin import serve_admin
from lb.engine import Engine
from lb.metrics import Metrics


async def test_a_client_that_never_reads_is_dropped(
    engine: Engine,
    metrics: Metrics,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(lb.admin, "SEND_TIMEOUT", 0.5)
    host, port = await nursery.start(
        partial(serve_admin, engine, metrics, host="127.0.0.1", port=0)
    )
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up quickly
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    requests = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200

    def logged() -> bool:
        return any(r.getMessage() == "admin_send_timeout" for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="lb.admin"):
        with trio.fail_after(30):
            while not logged():
                # Keep asking, never read: the replies pile up until the server's send blocks.
                with trio.move_on_after(0.1):
                    try:
                        await stream.send_all(requests)
                    except trio.BrokenResourceError:
                        break  # the server already closed it: the log line follows
        await wait_until(logged, what="the admin_send_timeout log line")
    await stream.aclose()
    # The listener is unaffected.
    probe = await trio.open_tcp_stream(host, port)
    async with probe:
        await probe.send_all(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        with trio.fail_after(5):
            reply = await probe.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 200 ")
