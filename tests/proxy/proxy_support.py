"""Test doubles for the proxy tests: an HTTPS backend, a raw h11 client, config builders.

The backend is a small trio + h11 server (like a tunnel's ingress service) whose behaviour is
chosen by the request path, so one fixture serves every test:

* ``/`` and anything else: 200 with the backend's name as body and ``x-backend`` header;
* ``/headers``: the request head it received as JSON;
* ``/echo``: streams the request body back (chunked);
* ``/sink``: reads and counts the body, answers the count;
* ``/sink-late?s=S``: the same, but reads nothing of the body for S seconds first;
* ``/stream?n=N``: N bytes in 64 KiB chunks (chunked encoding);
* ``/drip?n=N&s=S``: N chunks of 1 KiB, one every S seconds (chunked encoding);
* ``/status/NNN``: that status, empty body (HEAD, 204, 304 checks);
* ``/slow?s=S``: answers after S seconds;
* ``/ws``: a WebSocket-style upgrade, then echoes raw bytes;
* ``/drop``: reads the body, then closes without answering;
* ``/early``: answers 413 before reading the body, then closes (a reset: the body is unread);
* ``/early-hold``: answers 413 before reading the body, then neither reads nor closes;
* ``/ws-early``: answers 101 before reading the body of the upgrade request;
* ``/stale``: answers, then closes the connection silently (as an idle timeout would);
* ``/stale-race``: answers, then reads the next request head on the connection and closes
  without answering (a server closing an idle connection just as a request arrives);
* ``/keepalive?t=N``: 200 with ``Keep-Alive: timeout=N``;
* ``/garbage``: answers, then writes unsolicited bytes on the idle connection.
"""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import trustme
from waiting import wait_until

from lb.config.model import (
    Config,
    EngineSettings,
    Limits,
    LoadBalancer,
    Origin,
    Pool,
    Rule,
    SessionAffinityAttributes,
)
from lb.engine import Engine as LbEngine
from lb.proxy import Attempt, ProxyHooks, ProxyServer, RequestRecord

LB_HOST = "app.example"
BACKEND_HOST = "backend.local"


def tunnel_address(i: int) -> str:
    """A deterministic tunnel address for endpoint ``i``."""
    return f"00000000-0000-4000-8000-{i:012d}.cfargotunnel.com"


@dataclass
class Certs:
    """One CA, a backend certificate, and the client context that trusts it."""

    ca: trustme.CA
    backend: ssl.SSLContext
    client: ssl.SSLContext
    server_cert: trustme.LeafCert


def make_certs() -> Certs:
    ca = trustme.CA()
    leaf = ca.issue_cert(BACKEND_HOST, LB_HOST, "*.example", "127.0.0.1")
    backend = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(backend)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Certs(ca=ca, backend=backend, client=client, server_cert=leaf)


@dataclass
class Seen:
    """One request as a backend received it."""

    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0
    target: str = ""
    """The request-target exactly as received."""
    version: str = ""
    """The request line's HTTP version (``1.1``)."""


@dataclass
class Backend:
    """A running backend: its port, what it saw, and a way to stop it."""

    name: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    """Connections this backend has closed (their FIN is on the wire)."""
    stray: int = 0
    """Unsolicited bytes sent after a response (``/garbage``)."""
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    async def stop(self) -> None:
        """Stop listening and drop every connection; return once new connects are refused."""
        assert self.scope is not None
        self.scope.cancel()
        await self.stopped.wait()


async def serve_backend(
    name: str,
    ssl_context: ssl.SSLContext | None,
    *,
    port: int = 0,
    task_status: trio.TaskStatus[Backend] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one backend until cancelled (or :meth:`Backend.stop`)."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    plain = listeners[0]
    real_port = plain.socket.getsockname()[1]
    backend = Backend(name=name, port=real_port)
    listener: trio.abc.Listener[Any] = plain
    if ssl_context is not None:
        listener = trio.SSLListener(plain, ssl_context, https_compatible=True)
    with trio.CancelScope() as scope:
        backend.scope = scope
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(backend)
                while True:
                    stream = await listener.accept()
                    backend.connections += 1
                    nursery.start_soon(_backend_conn, backend, stream)
        finally:
            try:
                await trio.aclose_forcefully(listener)  # closed, then raises Cancelled
            finally:
                backend.stopped.set()


async def _backend_conn(backend: Backend, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = await _next(conn, stream)
            if not isinstance(event, h11.Request):
                return
            keep = await _backend_request(backend, conn, stream, event)
            if not keep or conn.our_state is not h11.DONE:
                return
            if conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        try:
            await trio.aclose_forcefully(stream)  # may raise Cancelled once closed
        finally:
            backend.closed += 1


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def _send(conn: h11.Connection, stream: trio.abc.Stream, *events: Any) -> None:
    data = b"".join(conn.send(e) or b"" for e in events)
    await stream.send_all(data)


async def _backend_request(
    backend: Backend, conn: h11.Connection, stream: trio.abc.Stream, req: h11.Request
) -> bool:
    url = urlsplit(req.target.decode())
    query = parse_qs(url.query)
    headers = {n.decode(): v.decode() for n, v in req.headers}
    seen = Seen(
        req.method.decode(),
        url.path,
        headers,
        target=req.target.decode(),
        version=req.http_version.decode(),
    )
    backend.seen.append(seen)
    base = [(b"x-backend", backend.name.encode())]
    path = url.path

    async def body_chunks() -> AsyncIterator[bytes]:
        while True:
            ev = await _next(conn, stream)
            if isinstance(ev, h11.Data):
                seen.body_bytes += len(ev.data)
                yield bytes(ev.data)
            else:
                return

    if path == "/ws-early":  # switches protocols before reading the request body
        switch = h11.InformationalResponse(
            status_code=101, headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
        )
        await _send(conn, stream, switch)
        await trio.sleep_forever()
    if path == "/ws":
        if headers.get("upgrade", "").lower() != "websocket":
            await _send(
                conn,
                stream,
                h11.Response(status_code=400, headers=[*base, (b"content-length", b"0")]),
                h11.EndOfMessage(),
            )
            return True
        async for _ in body_chunks():
            pass
        await _send(
            conn,
            stream,
            h11.InformationalResponse(
                status_code=101,
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), *base],
            ),
        )
        extra, _ = conn.trailing_data
        if extra:
            await stream.send_all(b"echo:" + extra)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return False
            await stream.send_all(b"echo:" + data)
    if path == "/echo":
        await _send(conn, stream, h11.Response(status_code=200, headers=base))
        async for chunk in body_chunks():
            await _send(conn, stream, h11.Data(data=chunk))
        await _send(conn, stream, h11.EndOfMessage())
        return True
    if path == "/drop":
        async for _ in body_chunks():
            pass
        return False
    if path in ("/early", "/early-hold"):
        text = b"too large\n"
        size = (b"content-length", b"%d" % len(text))
        reply = h11.Response(status_code=413, headers=[*base, size])
        await _send(conn, stream, reply, h11.Data(data=text), h11.EndOfMessage())
        if path == "/early-hold":
            await trio.sleep_forever()
        return False
    if path == "/sink-late":
        # A slow endpoint on purpose: it reads nothing of the body for this long.
        await trio.sleep(float(query["s"][0]))
    total = 0
    async for chunk in body_chunks():
        total += len(chunk)
    if path in ("/sink", "/sink-late"):
        body = str(total).encode()
        await _send(
            conn,
            stream,
            h11.Response(status_code=200, headers=[*base, (b"content-length", b"%d" % len(body))]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        return True
    if path == "/stream":
        n = int(query["n"][0])
        await _send(conn, stream, h11.Response(status_code=200, headers=base))
        chunk = b"x" * 65536
        while n > 0:
            piece = chunk[: min(n, 65536)]
            await _send(conn, stream, h11.Data(data=piece))
            n -= len(piece)
        await _send(conn, stream, h11.EndOfMessage())
        return True
    if path == "/drip":
        await _send(conn, stream, h11.Response(status_code=200, headers=base))
        for _ in range(int(query["n"][0])):
            await trio.sleep(float(query["s"][0]))  # a slow endpoint, on purpose
            await _send(conn, stream, h11.Data(data=b"x" * 1024))
        await _send(conn, stream, h11.EndOfMessage())
        return True
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        hdrs = list(base)
        if code not in (204, 304):
            hdrs.append((b"content-length", b"5"))
        events: list[Any] = [h11.Response(status_code=code, headers=hdrs)]
        if code not in (204, 304) and req.method != b"HEAD":
            events.append(h11.Data(data=b"hello"))
        events.append(h11.EndOfMessage())
        await _send(conn, stream, *events)
        return True
    if path == "/slow":
        await trio.sleep(float(query["s"][0]))  # slow on purpose
    if path == "/headers":
        body = json.dumps({"method": seen.method, "headers": headers}).encode()
    else:
        body = backend.name.encode()
    keep_alive = query["t"][0].encode() if path == "/keepalive" else b"5"
    hdrs = [
        *base,
        (b"content-length", b"%d" % len(body)),
        (b"keep-alive", b"timeout=" + keep_alive),
    ]
    await _send(
        conn,
        stream,
        h11.Response(status_code=200, headers=hdrs),
        h11.Data(data=body),
        h11.EndOfMessage(),
    )
    if path == "/garbage":
        await trio.sleep(0.05)  # on purpose: the stray bytes come once the connection is idle
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        backend.stray += 1
    if path == "/stale-race":
        conn.start_next_cycle()
        await _next(conn, stream)  # the next request head arrives: close without answering
        return False
    return path != "/stale"


# ---------------------------------------------------------------------- client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: bytes = b""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class Client:
    """A raw HTTP/1.1 keep-alive client over one TCP connection (h11)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send_head(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> None:
        data = self.conn.send(h11.Request(method=method, target=target, headers=list(headers)))
        assert data is not None
        await self.stream.send_all(data)

    async def send_body(self, chunk: bytes) -> None:
        data = self.conn.send(h11.Data(data=chunk))
        assert data is not None
        await self.stream.send_all(data)

    async def end_body(self) -> None:
        data = self.conn.send(h11.EndOfMessage())
        assert data is not None
        await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def read_response(self, *, count_only: bool = False) -> Response:
        event = await self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await self.next_event()
        assert isinstance(event, h11.Response), event
        body = bytearray()
        total = 0
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.Data):
                total += len(ev.data)
                if not count_only:
                    body += ev.data
            else:
                break
        if count_only:
            body = bytearray(str(total).encode())
        headers = [(n.decode(), v.decode()) for n, v in event.headers]
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Response(event.status_code, headers, bytes(body), event.reason)

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        *,
        host: str = LB_HOST,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Response:
        hdrs = [("host", host), *headers]
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        await self.send_head(method, target, hdrs)
        if body:
            await self.send_body(body)
        await self.end_body()
        return await self.read_response()


async def get(port: int, target: str = "/", **kw: Any) -> Response:
    """One request on a fresh connection."""
    async with await Client.connect(port) as client:
        return await client.request("GET", target, **kw)


async def raw_exchange(port: int, data: bytes, *, seconds: float = 5.0) -> bytes:
    """Send raw bytes; return everything the proxy sends back until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = bytearray()
    try:
        with trio.move_on_after(seconds):
            await stream.send_all(data)
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        await trio.aclose_forcefully(stream)
    return bytes(out)


# ---------------------------------------------------------------------- config


def make_config(
    ports: list[int],
    *,
    weights: list[float] | None = None,
    affinity: str = "",
    zdf: str = "none",
    host_header: str | None = BACKEND_HOST,
    limits: Limits | None = None,
    error_style: str = "cloudflare",
    trusted: tuple[str, ...] = (),
    datacenter: str = "",
    pool_enabled: bool = True,
    fallback_enabled: bool = True,
    drain_timeout: float = 5.0,
    extra_connect: dict[str, str] | None = None,
    rules: tuple[Rule, ...] = (),
) -> Config:
    """One load balancer (``app.example``), one pool of tunnel endpoints, one fallback pool."""
    weights = weights or [1.0] * len(ports)
    header = {"Host": (host_header,)} if host_header else {}
    origins = tuple(
        Origin(name=f"e{i}", address=tunnel_address(i), weight=w, header=header)
        for i, w in enumerate(weights)
    )
    connect_to = {f"{tunnel_address(i)}:443": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    connect_to[f"{tunnel_address(99)}:443"] = "127.0.0.1:1"  # the fallback refuses
    connect_to.update(extra_connect or {})
    pool = Pool(name="p1", origins=origins, enabled=pool_enabled)
    fallback = Pool(
        name="fb",
        origins=(Origin(name="f0", address=tunnel_address(99), header=header),),
        enabled=fallback_enabled,
    )
    lb = LoadBalancer(
        proxied=True,
        name=LB_HOST,
        default_pools=("p1",),
        fallback_pool="fb",
        session_affinity=affinity,
        session_affinity_attributes=SessionAffinityAttributes(zero_downtime_failover=zdf),
        rules=rules,
    )
    engine = EngineSettings(
        limits=limits or Limits(),
        error_style=error_style,
        trusted_proxies=trusted,
        datacenter=datacenter,
        drain_timeout=drain_timeout,
        affinity_secret="test-secret",
    )
    return Config(
        pools=(pool, fallback), load_balancers=(lb,), connect_to=connect_to, engine=engine
    )


@dataclass
class Stack:
    """Backends, engine and a running proxy on a plain-HTTP loopback listener."""

    backends: list[Backend]
    engine: LbEngine
    server: ProxyServer
    port: int
    records: list[RequestRecord]
    retries: list[tuple[str, Attempt]]

    async def settled(self) -> list[RequestRecord]:
        """The records, once every request the proxy has read is reported.

        A record is reported just after the response's last write, so a client can see the
        response a moment before the record exists.
        """
        await wait_until(lambda: not self.server.active_requests)
        return self.records


async def start_stack(
    nursery: trio.Nursery,
    certs: Certs,
    n: int = 2,
    *,
    seed: int = 1,
    listeners: list[Any] | None = None,
    **config: Any,
) -> Stack:
    """Start ``n`` backends and a proxy in front of them (see :func:`make_config`)."""
    backends = [await nursery.start(serve_backend, f"b{i}", certs.backend) for i in range(n)]
    cfg = make_config([b.port for b in backends], **config)
    engine = LbEngine(cfg, now=trio.current_time())
    records: list[RequestRecord] = []
    retries: list[tuple[str, Attempt]] = []
    hooks = ProxyHooks(on_request_done=records.append, on_retry=lambda r, a: retries.append((r, a)))
    server = ProxyServer(engine, hooks=hooks, rng=random.Random(seed), upstream_ssl=certs.client)
    if listeners is None:
        listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    addresses = await nursery.start(server.serve, listeners)
    return Stack(backends, engine, server, addresses[0][1], records, retries)


async def open_websocket(client: Client) -> h11.InformationalResponse:
    """Send a WebSocket upgrade for ``/ws`` through the proxy and expect the 101."""
    await client.send_head(
        "GET",
        "/ws",
        [
            ("host", LB_HOST),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ],
    )
    await client.end_body()
    event = await client.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    return event
