"""The connection cap and the file-descriptor limit (lb/proxy/capacity.py, lb/proxy/connection.py;
docs/proxy.md, "Connection cap")."""

from __future__ import annotations

import contextlib
import json
import resource

import h11
import pytest
import trio
from proxy_support import LB_HOST, Certs, Client, start_stack
from waiting import wait_until

from lb.config.model import Limits
from lb.logs import JsonFormatter
from lb.proxy.capacity import RESERVED_FDS, default_max_connections, raise_fd_limit


def test_soft_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip(f"hard RLIMIT_NOFILE is unlimited here (soft {soft}): nothing to raise to")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256, hard), hard))
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert raise_fd_limit() == hard  # already there: unchanged
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_default_cap_follows_the_fd_limit() -> None:
    assert default_max_connections(1024) == (1024 - RESERVED_FDS) // 2
    assert default_max_connections(80) == 16
    assert default_max_connections(0) == 10_000
    assert default_max_connections(1 << 20) > 500_000


async def _request(client: Client) -> int:
    return (await client.request("GET", "/")).status


async def test_at_the_cap_the_idlest_connection_is_shed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_connections=3))
    server = stack.server
    assert server.max_connections == 3
    silent = []
    for n in range(3):  # one at a time, so that the order of their idleness is known
        silent.append(await Client.connect(stack.port))
        await wait_until(lambda n=n: server.idle_connections == n + 1)
    # A keep-alive connection that served a request is idle again, and younger.
    assert await _request(silent[2]) == 200
    await wait_until(lambda: server.idle_connections == 3)
    async with await Client.connect(stack.port) as newcomer:
        assert await _request(newcomer) == 200
    # The connection silent the longest was closed to make room; the others still serve.
    with trio.fail_after(5):
        assert await silent[0].stream.receive_some(100) == b""
    assert await _request(silent[1]) == 200
    assert await _request(silent[2]) == 200
    assert (server.shed, server.refused) == (1, 0)
    for client in silent:
        await client.aclose()


async def test_at_the_cap_with_nothing_idle_a_new_connection_is_refused(
    nursery: trio.Nursery, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_connections=2))
    server = stack.server
    busy = [await Client.connect(stack.port) for _ in range(2)]
    for client in busy:  # half a request head: not idle, so never shed
        await client.stream.send_all(b"GET / HTTP/1.1\r\n")
    await wait_until(lambda: server.connections == 2 and server.idle_connections == 0)
    refused = await trio.open_tcp_stream("127.0.0.1", stack.port)
    with trio.fail_after(5):
        with contextlib.suppress(trio.BrokenResourceError):  # a reset is a refusal too
            assert await refused.receive_some(100) == b""
    await trio.aclose_forcefully(refused)
    assert (server.shed, server.refused) == (0, 1)
    # An event with fields (lb/logs.py), not a sentence in the message of a ``log`` event.
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    [cap] = [line for line in lines if line["event"] == "connection_cap_reached"]
    assert cap["level"] == "warning"
    assert {k: cap[k] for k in ("max_connections", "shed", "refused")} == {
        "max_connections": 2,
        "shed": 0,
        "refused": 1,
    }
    # The busy connections were left alone: both complete their requests.
    for client in busy:
        await client.stream.send_all(f"Host: {LB_HOST}\r\n\r\n".encode())
        # The head went out as raw bytes; the client's h11 state catches up without sending.
        client.conn.send(h11.Request(method="GET", target="/", headers=[("host", LB_HOST)]))
        client.conn.send(h11.EndOfMessage())
        assert (await client.read_response()).status == 200
        await client.aclose()
