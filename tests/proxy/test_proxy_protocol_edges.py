"""Protocol edges on real sockets: request smuggling, malformed chunks, CONNECT and TRACE,
absolute-form targets and URL normalization before rules, header counts (lb/proxy/exchange.py,
lb/proxy/urls.py; docs/proxy.md, "Refused requests")."""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass, field

import pytest
import trio
from proxy_support import (
    LB_HOST,
    Certs,
    Client,
    get,
    make_config,
    raw_exchange,
    start_stack,
)
from waiting import wait_until

from lb.config.model import FixedResponse, Limits, Rule
from lb.engine import Engine as LbEngine
from lb.proxy import ProxyHooks, ProxyServer, RequestRecord

ADMIN_RULE = Rule(
    name="no-admin",
    condition='starts_with(http.request.uri.path, "/admin")',
    fixed_response=FixedResponse(status_code=403, message_body="forbidden"),
)


async def closed_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; everything the proxy answers, which must end with a close.

    The bound is far below every proxy timeout (60 s idle, 100 s request), so a proxy that
    waits for more input instead of answering fails here.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = bytearray()
    try:
        with trio.fail_after(10):
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                out += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return bytes(out)


# ---------------------------------------------------------------------- smuggling


@dataclass
class NaiveOrigin:
    """An HTTPS origin that frames requests by Content-Length only, as many do."""

    port: int
    request_lines: list[bytes] = field(default_factory=list)


async def serve_naive_origin(
    ctx: ssl.SSLContext, *, task_status: trio.TaskStatus[NaiveOrigin] = trio.TASK_STATUS_IGNORED
) -> None:
    [plain] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    origin = NaiveOrigin(plain.socket.getsockname()[1])
    listener = trio.SSLListener(plain, ctx, https_compatible=True)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(origin)
            while True:
                nursery.start_soon(_naive_connection, origin, await listener.accept())
    finally:
        await trio.aclose_forcefully(listener)


async def _naive_connection(origin: NaiveOrigin, stream: trio.abc.Stream) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            origin.request_lines.append(lines[0])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def test_smuggled_request_in_a_chunk_never_reaches_the_origin(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """Content-Length plus Transfer-Encoding: 400 and close, nothing forwarded.

    Forwarded with both headers, the origin read the chunk-size line as the whole body and
    the chunk's payload, ``GET /admin/secret``, as a second request that no rule saw.
    """
    origin = await nursery.start(serve_naive_origin, certs.backend)
    config = make_config([origin.port], rules=(ADMIN_RULE,))
    records: list[RequestRecord] = []
    server = ProxyServer(
        LbEngine(config, now=trio.current_time()),
        hooks=ProxyHooks(on_request_done=records.append),
        rng=random.Random(1),
        upstream_ssl=certs.client,
    )
    [(_, port)] = await nursery.start(
        server.serve, list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    )
    smuggled = f"GET /admin/secret HTTP/1.1\r\nHost: {LB_HOST}\r\n\r\n".encode()
    size_line = b"%x\r\n" % len(smuggled)
    attack = (
        (
            f"POST / HTTP/1.1\r\nHost: {LB_HOST}\r\nContent-Length: {len(size_line)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + size_line
        + smuggled
        + b"\r\n0\r\n\r\n"
    )
    answer = await closed_exchange(port, attack)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1") == 1
    assert origin.request_lines == []
    # The same origin serves an honest request (the test origin itself works).
    assert (await get(port, "/fine")).status == 200
    assert origin.request_lines == [b"GET /fine HTTP/1.1"]
    assert records[0].error == "ambiguous_framing"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: -1\r\n",
    ],
)
async def test_ambiguous_framing_is_400_and_closes(
    nursery: trio.Nursery, certs: Certs, framing: bytes
) -> None:
    stack = await start_stack(nursery, certs, 1)
    request = b"POST /sink HTTP/1.1\r\nHost: app.example\r\n" + framing + b"\r\n5\r\nhello\r\n"
    answer = await closed_exchange(stack.port, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"connection: close" in answer.lower()
    assert stack.backends[0].seen == []


# ---------------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    ("chunk", "status"),
    [
        (b"ffffffffffffffff\r\nabc", 400),
        (b"zz\r\nabc", 400),
        (b"5 5\r\nhello", 400),
        (b"100000\r\nabc", 413),  # announced larger than max_body_bytes
    ],
)
async def test_bad_first_chunk_is_answered_at_once(
    nursery: trio.Nursery, certs: Certs, chunk: bytes, status: int
) -> None:
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_body_bytes=1000))
    head = b"POST /sink HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await closed_exchange(stack.port, head + chunk)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert stack.backends[0].seen == []
    assert stack.backends[0].connections == 0  # refused before any upstream connection


async def test_bad_later_chunk_is_400_at_once(nursery: trio.Nursery, certs: Certs) -> None:
    """A malformed chunk size after a good chunk (the body pump's path): 400, not 408."""
    stack = await start_stack(nursery, certs, 1)
    stream = await trio.open_tcp_stream("127.0.0.1", stack.port)
    out = bytearray()
    with trio.fail_after(10):
        await stream.send_all(
            b"POST /sink HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        await wait_until(lambda: stack.backends[0].seen)
        await stream.send_all(b"ffffffffffffffff\r\nabc")
        while chunk := await stream.receive_some(65536):
            out += chunk
    await trio.aclose_forcefully(stream)
    assert bytes(out).startswith(b"HTTP/1.1 400 "), out
    assert (await stack.settled())[-1].error == "bad_chunk"


# ---------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "request_head",
    [
        b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: app.example\r\n\r\n",
        b"TRACE / HTTP/1.1\r\nHost: app.example\r\n\r\n",
    ],
)
async def test_connect_and_trace_are_501_and_never_forwarded(
    nursery: trio.Nursery, certs: Certs, request_head: bytes
) -> None:
    stack = await start_stack(nursery, certs, 1, affinity="cookie")
    answer = await closed_exchange(stack.port, request_head)
    assert answer.startswith(b"HTTP/1.1 501 "), answer
    assert b"connection: close" in answer.lower()
    assert b"set-cookie" not in answer.lower()
    assert stack.backends[0].seen == []
    assert (await stack.settled())[-1].error == "method_not_supported"


# ---------------------------------------------------------------------- targets and rules


@pytest.mark.parametrize(
    "target",
    [
        "http://app.example/admin/secret",
        "HTTP://APP.EXAMPLE/admin/secret",
        "//admin/secret",
        "/%61dmin/secret",
        "/%61%64min/secret",
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/./admin/secret",
        "/../admin/secret",
        "/%2E/admin/secret",
        "/public/..%2f../admin",
        "http://app.example//%61dmin/./x/../secret?y=1",
    ],
)
async def test_rules_see_the_normalized_path(
    nursery: trio.Nursery, certs: Certs, target: str
) -> None:
    """Each form that bypassed ``starts_with(http.request.uri.path, "/admin")``."""
    stack = await start_stack(nursery, certs, 1, rules=(ADMIN_RULE,))
    answer = await raw_exchange(
        stack.port,
        f"GET {target} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n".encode(),
    )
    if target == "/public/..%2f../admin":
        # %2F is reserved: not decoded, so ``..%2F..`` is one segment; this stays outside
        # /admin, exactly as in Cloudflare's normalization.
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        return
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert stack.backends[0].seen == []


async def test_backslash_path_is_normalized_for_rules(nursery: trio.Nursery, certs: Certs) -> None:
    stack = await start_stack(nursery, certs, 1, rules=(ADMIN_RULE,))
    answer = await raw_exchange(
        stack.port,
        b"GET /x\\..\\admin HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403 "), answer


async def test_absolute_form_is_forwarded_as_origin_form(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """The endpoint gets ``/path?query``; the URL's host replaces the Host header (RFC 9112
    §3.2.2), for steering and for what the endpoint sees."""
    stack = await start_stack(nursery, certs, 1, host_header=None, rules=(ADMIN_RULE,))
    async with await Client.connect(stack.port) as client:
        resp = await client.request(
            "GET", "http://App.Example:8080/public/x?y=1", host="other.example"
        )
        assert resp.status == 200, resp
        resp = await client.request("GET", "http://app.example", host="other.example")
        assert resp.status == 200, resp
    first, second = stack.backends[0].seen
    assert first.target == "/public/x?y=1"
    assert first.headers["host"] == "App.Example:8080"
    assert first.headers["x-forwarded-host"] == "App.Example:8080"
    assert second.target == "/"
    records = await stack.settled()
    assert [r.target for r in records] == ["/public/x?y=1", "/"]
    assert records[0].load_balancer == LB_HOST


async def test_endpoint_gets_the_path_as_sent(nursery: trio.Nursery, certs: Certs) -> None:
    """Cloudflare normalizes for its rules but, by default, not towards the origin."""
    stack = await start_stack(nursery, certs, 1, rules=(ADMIN_RULE,))
    for target in ("/public//x/%7euser", "/public/./%41"):
        resp = await get(stack.port, target)
        assert resp.status == 200
    assert [s.target for s in stack.backends[0].seen] == ["/public//x/%7euser", "/public/./%41"]


async def test_raw_fields_keep_the_target_as_sent(nursery: trio.Nursery, certs: Certs) -> None:
    raw_rule = Rule(
        condition='raw.http.request.uri.path eq "/%61dmin"',
        fixed_response=FixedResponse(status_code=418),
    )
    stack = await start_stack(nursery, certs, 1, rules=(raw_rule, ADMIN_RULE))
    assert (await get(stack.port, "/%61dmin")).status == 418
    assert (await get(stack.port, "/admin")).status == 403


@pytest.mark.parametrize(
    "target", ["ftp://app.example/x", "http:///x", "http://user@app.example/", "app.example:80"]
)
async def test_unusable_targets_are_400(nursery: trio.Nursery, certs: Certs, target: str) -> None:
    stack = await start_stack(nursery, certs, 1)
    answer = await raw_exchange(
        stack.port, f"GET {target} HTTP/1.1\r\nHost: app.example\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert stack.backends[0].seen == []


# ---------------------------------------------------------------------- header count


@pytest.mark.parametrize(("count", "status"), [(100, 200), (101, 431), (10_000, 431)])
async def test_header_count_is_capped_before_parsing(
    nursery: trio.Nursery, certs: Certs, count: int, status: int
) -> None:
    """10,000 tiny headers fit in 64 KiB but cost h11 a long parse: refused by their count,
    before h11 parses the head (the record has no method: no request was parsed)."""
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_headers=100))
    lines = b"a:1\r\n" * (count - 2)  # plus Host and Connection
    request = b"GET / HTTP/1.1\r\nHost: app.example\r\n" + lines + b"Connection: close\r\n\r\n"
    assert len(request) < 65536
    answer = await closed_exchange(stack.port, request)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    if status == 431:
        assert stack.backends[0].seen == []
        [record] = await stack.settled()
        assert (record.error, record.method) == ("headers_too_large", "")


async def test_header_count_of_a_pipelined_request(nursery: trio.Nursery, certs: Certs) -> None:
    """The second request of one write is counted from h11's buffer, not from the socket."""
    stack = await start_stack(nursery, certs, 1, limits=Limits(max_headers=5))
    many = b"".join(b"x%d: 1\r\n" % i for i in range(10))
    answer = await closed_exchange(
        stack.port,
        b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: app.example\r\n" + many + b"\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"HTTP/1.1 431 " in answer
    assert len(stack.backends[0].seen) == 1
