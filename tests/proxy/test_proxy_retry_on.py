"""``retry_on`` over real sockets: three endpoints, one of them faulty, concurrent clients.

The faulty endpoint takes TLS connections and requests like a healthy one, then resets the
connection before answering (SO_LINGER 0: a TCP RST), answers 503, or closes halfway through
a response body.  Its pool has no monitor, so nothing takes it out of rotation: what the
clients see is what the retries do, as in the minutes before a monitor notices.  Without
``retry_on`` a third of the GETs fail (Cloudflare-exact); with it none do, unless the retry
budget is spent; a body cut after bytes went to the client is never retried.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
from dataclasses import dataclass, replace
from typing import Any

import h11
import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from proxy_support import Certs, Client, make_config, raw_exchange, serve_backend

from lb.config.model import Config, RetryOn
from lb.engine import Engine as LbEngine
from lb.metrics import Metrics
from lb.proxy import ProxyServer, RequestRecord
from lb.service import _hooks

CLIENTS = 6
REQUESTS = 20
BODY = b"x" * 20_000


@dataclass
class Faulty:
    port: int
    requests: int = 0


async def serve_faulty(
    ssl_context: ssl.SSLContext, mode: str, *, task_status: trio.TaskStatus[Faulty]
) -> None:
    """An HTTPS endpoint that reads each request, then fails it the way ``mode`` says:
    ``reset`` (RST, nothing answered), ``503``, or ``truncate`` (head and half the body,
    then the connection closes)."""
    plain = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    faulty = Faulty(port=plain.socket.getsockname()[1])
    listener = trio.SSLListener(plain, ssl_context, https_compatible=True)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(faulty)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_faulty_conn, stream, faulty, mode)
    finally:
        await trio.aclose_forcefully(listener)


async def _faulty_conn(stream: trio.SSLStream[Any], faulty: Faulty, mode: str) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.ConnectionClosed):
                return
        faulty.requests += 1
        if mode == "503":
            head = h11.Response(status_code=503, headers=[(b"content-length", b"4")])
            await stream.send_all(
                b"".join(conn.send(e) or b"" for e in (head, h11.Data(data=b"busy")))
            )
            return
        if mode == "truncate-chunked":
            head = h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])
            half = h11.Data(data=BODY[: len(BODY) // 2])
            await stream.send_all(b"".join(conn.send(e) or b"" for e in (head, half)))
            return  # closed before the last chunk
        if mode == "truncate":
            head = h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(BODY))])
            half = h11.Data(data=BODY[: len(BODY) // 2])
            await stream.send_all(b"".join(conn.send(e) or b"" for e in (head, half)))
            return  # closed mid-body (a FIN: a reset could drop the half still in flight)
        _reset(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _reset(stream: trio.SSLStream[Any]) -> None:
    """Make the close a TCP reset rather than a FIN."""
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    transport.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class Stack:
    port: int
    records: list[RequestRecord]
    metrics: Metrics


async def start(
    nursery: trio.Nursery, certs: Certs, mode: str, retry_on: RetryOn | None
) -> tuple[Stack, Faulty]:
    """Two good endpoints and one faulty one in one unmonitored pool, behind a proxy whose
    hooks are ``tunnel-lb run``'s (metrics), recording every request."""
    good = [await nursery.start(serve_backend, f"good{i}", certs.backend) for i in range(2)]
    faulty: Faulty = await nursery.start(serve_faulty, certs.backend, mode)
    cfg: Config = make_config([good[0].port, faulty.port, good[1].port])
    lb = replace(cfg.load_balancers[0], retry_on=retry_on)
    cfg = replace(cfg, load_balancers=(lb,))
    engine = LbEngine(cfg, now=trio.current_time())
    metrics = Metrics()
    metrics.attach(engine)
    hooks = _hooks(engine, metrics)
    records: list[RequestRecord] = []
    done = hooks.on_request_done
    assert done is not None

    def record(r: RequestRecord) -> None:
        records.append(r)
        done(r)

    hooks.on_request_done = record
    server = ProxyServer(engine, hooks=hooks, rng=random.Random(4), upstream_ssl=certs.client)
    listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    addresses = await nursery.start(server.serve, listeners)
    return Stack(addresses[0][1], records, metrics), faulty


async def load(stack: Stack) -> list[int]:
    """CLIENTS keep-alive clients send REQUESTS GETs each; the statuses they got."""
    statuses: list[int] = []

    async def client() -> None:
        conn = await Client.connect(stack.port)
        try:
            for _ in range(REQUESTS):
                resp = await conn.request("GET", "/")
                statuses.append(resp.status)
                if resp.header("connection") == "close":
                    await conn.aclose()
                    conn = await Client.connect(stack.port)
        finally:
            await conn.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(client)
    return statuses


def counters(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


RESETS = RetryOn(conditions=("reset",), min_retry_concurrency=CLIENTS)


async def test_without_retry_on_resets_before_the_answer_lose_requests(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """Cloudflare-exact (the default): an HTTP exchange that broke is not retried."""
    stack, faulty = await start(nursery, certs, "reset", None)
    statuses = await load(stack)
    assert len(statuses) == CLIENTS * REQUESTS and faulty.requests > 0
    assert statuses.count(502) == faulty.requests  # every request the endpoint took is lost
    assert not any(r.retried for r in stack.records)


async def test_with_retry_on_no_get_is_lost_to_an_endpoint_resetting_before_answering(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack, faulty = await start(nursery, certs, "reset", RESETS)
    statuses = await load(stack)
    assert statuses == [200] * (CLIENTS * REQUESTS)
    assert faulty.requests > 0
    retried = [r for r in stack.records if r.retried == "retry_on"]
    assert len(retried) == faulty.requests
    for r in retried:
        # one retry, on a fresh connection to another endpoint (the router avoids the one
        # that failed)
        first, second = r.attempts
        assert (first.retry_on, first.error) == ("reset", "upstream_closed")
        assert second.endpoint != first.endpoint and not second.reused
    assert not any(r.budget_refused for r in stack.records)
    retries = counters(stack.metrics, "lb_retries_total")
    labels = frozenset(
        {("load_balancer", "app.example"), ("pool", "p1"), ("reason", "retry_on_reset")}
    )
    assert retries == {labels: faulty.requests}


async def test_a_spent_budget_answers_the_first_failure_and_is_counted(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """A budget of nothing (0 %, no minimum) refuses every retry_on retry: the requests get
    the answer they would get without retry_on, and the refusals are counted."""
    nothing = RetryOn(conditions=("reset",), budget_percent=0, min_retry_concurrency=0)
    stack, faulty = await start(nursery, certs, "reset", nothing)
    statuses = await load(stack)
    assert statuses.count(502) == faulty.requests > 0
    refused = [r for r in stack.records if r.budget_refused]
    assert len(refused) == faulty.requests
    assert all(r.retried is None and r.status == 502 for r in refused)
    assert counters(stack.metrics, "lb_retry_budget_refusals_total") == {
        frozenset({("load_balancer", "app.example")}): faulty.requests
    }


async def test_a_named_status_is_retried_and_an_unnamed_one_relayed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    stack, faulty = await start(
        nursery,
        certs,
        "503",
        RetryOn(conditions=(), statuses=(503,), min_retry_concurrency=CLIENTS),
    )
    assert (await load(stack)) == [200] * (CLIENTS * REQUESTS)
    assert faulty.requests > 0
    assert all(r.attempts[0].status == 503 for r in stack.records if r.retried)
    other, faulty2 = await start(nursery, certs, "503", RetryOn(conditions=(), statuses=(502,)))
    assert (await load(other)).count(503) == faulty2.requests > 0  # relayed as it came


async def test_a_post_is_never_retried_by_retry_on(nursery: trio.Nursery, certs: Certs) -> None:
    stack, faulty = await start(nursery, certs, "reset", RESETS)
    statuses = []
    for _ in range(12):
        async with await Client.connect(stack.port) as c:
            statuses.append((await c.request("POST", "/", body=b"once")).status)
    assert statuses.count(502) == faulty.requests > 0
    assert not any(r.retried for r in stack.records)


@pytest.mark.parametrize("retry_on", [None, RESETS], ids=["cloudflare", "retry_on"])
async def test_a_body_cut_after_bytes_reached_the_client_is_not_retried(
    nursery: trio.Nursery, certs: Certs, retry_on: RetryOn | None
) -> None:
    """A reset mid-response: the head and part of the body are the client's already, so no
    retry can mend it; the client gets a short body and a closed connection either way."""
    stack, faulty = await start(nursery, certs, "truncate", retry_on)
    cut = 0
    for _ in range(12):
        request = b"GET / HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n"
        raw = await raw_exchange(stack.port, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"content-length: %d" % len(BODY) in head.lower() and len(body) < len(BODY):
            cut += 1
    assert cut == faulty.requests > 0
    assert not any(r.retried for r in stack.records)
    assert all(r.error == "upstream_aborted" for r in stack.records if r.endpoint == "p1/e1")


async def _raw_gets(stack: Stack, n: int) -> tuple[list[int], int]:
    """``n`` GETs on connections of their own: the statuses, and how many bodies were cut
    short of their Content-Length."""
    statuses, cut = [], 0
    for _ in range(n):
        request = b"GET / HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n"
        raw = await raw_exchange(stack.port, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        statuses.append(int(head.split(b" ", 2)[1]))
        for line in head.lower().split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length" and len(body) < int(value):
                cut += 1
            if name == b"transfer-encoding" and not body.endswith(b"0\r\n\r\n"):
                cut += 1  # no last chunk
    return statuses, cut


BUFFERED = RetryOn(
    conditions=("reset", "truncated"), buffer_response=65536, min_retry_concurrency=CLIENTS
)


async def test_with_buffer_response_a_body_cut_mid_response_is_retried_whole(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """retry_on.buffer_response: the response is read whole before any byte is relayed, so
    the cut is a failure before the answer and goes to another endpoint: nothing is lost."""
    stack, faulty = await start(nursery, certs, "truncate", BUFFERED)
    statuses, cut = await _raw_gets(stack, 12)
    assert statuses == [200] * 12 and cut == 0
    assert (await load(stack)) == [200] * (CLIENTS * REQUESTS)  # keep-alive clients too
    assert faulty.requests > 0
    retried = [r for r in stack.records if r.retried == "retry_on"]
    assert len(retried) == faulty.requests
    for r in retried:
        first, second = r.attempts
        assert (first.retry_on, first.error) == ("truncated", "upstream_truncated")
        assert second.endpoint != first.endpoint and second.status == 200
    labels = frozenset(
        {("load_balancer", "app.example"), ("pool", "p1"), ("reason", "retry_on_truncated")}
    )
    assert counters(stack.metrics, "lb_retries_total") == {labels: faulty.requests}


async def test_a_response_larger_than_buffer_response_is_streamed_and_cut(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """A Content-Length past the bound is streamed at once: a cut in it stays a short body."""
    small = replace(BUFFERED, buffer_response=len(BODY) - 1)
    stack, faulty = await start(nursery, certs, "truncate", small)
    _, cut = await _raw_gets(stack, 12)
    assert cut == faulty.requests > 0
    assert not any(r.retried for r in stack.records)


@pytest.mark.parametrize("retry_on", [None, RESETS], ids=["cloudflare", "retry_on"])
async def test_without_buffer_response_the_stream_path_never_reads_whole(
    nursery: trio.Nursery, certs: Certs, retry_on: RetryOn | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off (the default, or retry_on without buffer_response), responses stream as before:
    the buffered read is never entered."""
    import lb.proxy.exchange

    async def never(*a: Any, **kw: Any) -> Any:
        raise AssertionError("read_whole called with buffer_response off")

    monkeypatch.setattr(lb.proxy.exchange, "read_whole", never)
    stack, _ = await start(nursery, certs, "truncate", retry_on)
    statuses, cut = await _raw_gets(stack, 6)
    assert statuses == [200] * 6 and cut > 0


async def test_a_chunked_body_cut_within_the_bound_is_retried_and_past_it_streamed(
    nursery: trio.Nursery, certs: Certs
) -> None:
    """A chunked response has no length to check first: it is read until it ends or passes
    the bound.  Cut within the bound: retried, nothing lost.  Past the bound it was already
    being streamed: the client gets the cut."""
    stack, faulty = await start(nursery, certs, "truncate-chunked", BUFFERED)
    statuses, cut = await _raw_gets(stack, 12)
    assert statuses == [200] * 12 and cut == 0 and faulty.requests > 0
    assert all(r.attempts[0].retry_on == "truncated" for r in stack.records if r.retried)
    small = replace(BUFFERED, buffer_response=len(BODY) // 4)
    other, faulty2 = await start(nursery, certs, "truncate-chunked", small)
    _, cut = await _raw_gets(other, 12)
    assert cut == faulty2.requests > 0
    assert not any(r.retried for r in other.records)
