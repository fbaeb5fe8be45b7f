"""The connector's HTTPS (and optional plain HTTP) server: trio + h11.

Each accepted connection gets one task that reads requests with h11, routes each through
the ingress rules (R48) and answers locally (``http_status``, ``hello_world``) or via
:class:`~lb.connector.proxy.OriginClient`.  Nothing a client sends may crash the server:
malformed requests get 400 (or h11's more precise hint, e.g. 431) and the connection is
closed; stalled or broken connections are dropped quietly after ``idle_timeout``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

from lb.config.hosts import split_host_port
from lb.connector.config import ConnectorConfig
from lb.connector.faults import HANDED_HEADER, ORIGIN, Faults, cut_answer
from lb.connector.h11io import H11Stream, reason
from lb.connector.ingress import Bastion, HelloWorld, HttpStatus, TcpService, match_rule
from lb.connector.proxy import AbortConnectionError, OriginClient
from lb.connector.stats import ConnectorStats, RequestRecord
from lb.connector.streams import serve_stream
from lb.connector.tls import current_sni, install_sni_capture, server_context
from lb.lifecycle import ListenError, host_port

__all__ = ["serve_connector"]

log = logging.getLogger("lb.connector")

_CLOSES = random.Random()
"""When connections close at random (``random_closes``): nothing to replay, so unseeded."""
MAX_DRAIN = 1 << 20
"""Request-body bytes a local answer reads and discards to keep the connection alive."""
CLOSE_TIMEOUT = 1.0
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)
"""Errors meaning the client connection is unusable: it is dropped without an answer."""


@dataclass(slots=True)
class _Client:
    """The client side of one connection (the proxy's ``Downstream``)."""

    http: H11Stream
    peer: str
    tls: bool
    sni: str | None
    answered: Callable[[int], None]
    """Records the current request; called right before its response's last byte."""
    method: bytes = b""
    extra: tuple[tuple[bytes, bytes], ...] = ()
    """Headers of every local answer (``Keep-Alive: timeout=N`` when announced)."""

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes | None,
        tags: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer locally (with ``tags``, more headers); a request body is drained first so
        keep-alive survives."""
        headers = [(b"content-length", str(len(body)).encode("ascii")), *self.extra, *tags]
        if content_type:
            headers.append((b"content-type", content_type))
        if not await self._drain():
            headers.append((b"connection", b"close"))
        await self.http.send(
            h11.Response(status_code=status, headers=headers, reason=reason(status))
        )
        if body and self.method != b"HEAD":
            await self.http.send(h11.Data(data=body))
        self.answered(status)
        await self.http.send(h11.EndOfMessage())

    async def _drain(self) -> bool:
        """Discard the request body up to MAX_DRAIN; False when more was left unread."""
        seen = 0
        while self.http.conn.their_state is h11.SEND_BODY:
            event = await self.http.next_event()
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > MAX_DRAIN:
                    return False
        return True


def _header(request: h11.Request, name: bytes) -> str:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _path(target: str) -> str:
    """The path the rules' regexes search: query dropped, absolute-form reduced to its path."""
    if not target.startswith("/") and "://" in target:
        return urlsplit(target).path or "/"
    return target.partition("?")[0]


class _Server:
    """One running connector: its TLS context, origin client, listeners and stats."""

    def __init__(
        self, config: ConnectorConfig, stats: ConnectorStats, faults: Faults | None = None
    ) -> None:
        self.config = config
        self.stats = stats
        self.faults = faults if faults is not None else Faults()
        self.rules = config.ingress
        self.origin = OriginClient(
            connect_timeout=config.connect_timeout,
            ssl_context=config.origin_ssl_context,
            no_tls_verify=config.no_tls_verify,
            ca_pool=config.ca_pool,
        )
        names = [r.hostname for r in config.ingress if r.hostname not in (None, "", "*")]
        listen_host = split_host_port(config.listen)[0]
        wildcard_bind = listen_host in ("0.0.0.0", "::")
        extra = [] if wildcard_bind else [listen_host]
        self.ssl_context = config.ssl_context or server_context(
            config.certificate,
            config.key,
            [*(n for n in names if n), "localhost", "127.0.0.1", "::1", *extra],
        )
        install_sni_capture(self.ssl_context)

    async def run(self, task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
        specs = [(self.config.listen, True)]
        if self.config.listen_http:
            specs.append((self.config.listen_http, False))
        listeners: list[tuple[trio.SocketListener, bool]] = []
        try:
            for address, tls in specs:
                host, port = split_host_port(address)
                try:
                    bound_now = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:  # in use, not an address of this host: say which
                    raise ListenError(host_port(host, port), exc) from exc
                listeners += [(lsn, tls) for lsn in bound_now]
            bound = [
                (str(lsn.socket.getsockname()[0]), int(lsn.socket.getsockname()[1]))
                for lsn, _ in listeners
            ]
            for (host, port), (_, tls) in zip(bound, listeners, strict=True):
                shown = f"[{host}]" if ":" in host else host
                self.stats.listening.append(f"{'https' if tls else 'http'}://{shown}:{port}")
            async with trio.open_nursery() as nursery:
                for listener, tls in listeners:
                    handler = partial(self._connection, tls=tls)
                    nursery.start_soon(self.faults.serve, handler, listener)
                log.info(
                    "connector_listening",
                    extra={"fields": {"tunnel": self.config.tunnel, "urls": self.stats.listening}},
                )
                task_status.started(bound)
        finally:
            # Shielded: we are usually being cancelled, and under cancellation trio lets
            # only the first await of a cleanup run. Every close here is immediate.
            with trio.CancelScope(shield=True):
                for listener, _ in listeners:
                    await trio.aclose_forcefully(listener)
                await self.origin.aclose()

    async def _connection(self, stream: trio.SocketStream, *, tls: bool) -> None:
        """One client connection, from TLS handshake to close; never raises."""
        self.stats.connections += 1
        slot: list[str | None] = []
        current_sni.set(slot)  # this task's context; the SNI callback fills it
        client_stream: trio.abc.Stream = stream
        clean = False
        peer = "?"
        try:
            peer = str(stream.socket.getpeername()[0])  # OSError if the client already left
            if not await self.faults.gate(stream):
                return  # a fault (lb.connector.faults): cut or never answered
            if tls:
                # Not https_compatible: our closes send close_notify, so even strict
                # clients reading to EOF see a clean end.
                client_stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.fail_after(self.config.idle_timeout):
                    await client_stream.do_handshake()
                self.stats.record_sni(slot[0] if slot else None)
            http = H11Stream(client_stream, h11.SERVER, read_timeout=self.config.idle_timeout)
            sni = slot[0] if slot else None
            client = _Client(http, peer, tls, sni, answered=lambda status: None)
            idle = self.config.keep_alive_idle
            if self.config.keep_alive_announce and idle is not None:
                client.extra = ((b"keep-alive", f"timeout={idle:g}".encode()),)
            await self._serve(client)
            clean = True
        except _GONE:
            pass
        except Exception:  # a bug must cost one connection, not the server
            log.exception("connector_connection_failed", extra={"fields": {"peer": peer}})
        finally:
            if clean:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await client_stream.aclose()
            await trio.aclose_forcefully(client_stream)

    async def _serve(self, client: _Client) -> None:
        """Answer requests on one connection until either side wants it closed."""
        close_at = trio.current_time() + self._random_close()
        first = True
        while True:
            try:
                if first:
                    event = await client.http.next_event()
                else:
                    idle = self.config.keep_alive_idle
                    wait = close_at - trio.current_time()
                    if idle is not None:
                        wait = min(wait, idle)
                    event = h11.ConnectionClosed()
                    with trio.move_on_after(max(0.0, wait)):
                        event = await client.http.next_event()
                first = False
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed: the client is done, or we close an idle one
                self.stats.note_request(_header(event, b"user-agent"))
                if not await self.faults.gate(client.http.stream):
                    return
                await self._handle(client, event)
            except h11.RemoteProtocolError as exc:
                await self._reject(client, exc)
                return
            except AbortConnectionError:
                return
            if not client.http.reusable:
                return
            client.http.conn.start_next_cycle()

    def _random_close(self) -> float:
        """Seconds until this connection's random close (inf without ``random_closes``)."""
        rate = self.config.random_closes
        return _CLOSES.expovariate(rate) if rate > 0 else math.inf

    async def _reject(self, client: _Client, exc: h11.RemoteProtocolError) -> None:
        """Answer a malformed request with h11's status hint (400, 431...) and close."""
        log.info("bad_request", extra={"fields": {"peer": client.peer, "error": str(exc)}})
        if client.http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # the response already started: all we can do is close
        status = exc.error_status_hint
        body = f"{status} {reason(status).decode()}: {exc}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        await client.http.send(
            h11.Response(status_code=status, headers=headers, reason=reason(status))
        )
        await client.http.send(h11.Data(data=body))
        self._record_rejected(client.peer, client.tls, client.sni, status)
        await client.http.send(h11.EndOfMessage())

    async def _handle(self, client: _Client, request: h11.Request) -> None:
        client.method = request.method
        host = _header(request, b"host")
        target = request.target.decode("latin-1")
        path = _path(target)
        index = match_rule(self.rules, host, path)
        client.answered = partial(self._record, client, host, target, index)
        service = self.rules[index].parsed_service
        application = not isinstance(service, HttpStatus | TcpService | Bastion)
        # The simulator's order (lb/sim/network.py, ``Network._through``): the connector's
        # own fault (a cut, then a status or ``down``'s 530), then the rule, then the
        # application; a fault of the connector hides one of the application behind it.
        cut = self.faults.cut()
        if cut is not None:
            await cut_answer(client.http.send, cut)
            raise AbortConnectionError  # dropped before (reset) or inside (truncate) the body
        forced = self.faults.forced()
        if forced is not None:
            status, handed = forced
            await client.respond(status, b"", None, ((HANDED_HEADER, b"1"),) if handed else ())
        elif isinstance(service, HttpStatus):
            await client.respond(service.code, b"", None)
        elif application and self.faults.cut(ORIGIN) == "truncate":
            # cloudflared streams the body (a reset application: its 502); the application's
            # latency comes first, as the simulator adds it to the cut answer
            await self.faults.origin_delay()
            await cut_answer(client.http.send, "truncate")
            raise AbortConnectionError
        elif (
            not isinstance(service, TcpService | Bastion)
            and (failed := await self.faults.origin_answer(client.http.stream)) is not None
        ):
            if not failed:
                raise AbortConnectionError  # a hung application: the client gave up
            await client.respond(failed, b"", None)
        elif isinstance(service, HelloWorld):
            hello = self._hello(client, request, host, path, index)
            await client.respond(200, hello, b"application/json")
        elif isinstance(service, TcpService | Bastion):
            await serve_stream(
                client,
                request,
                service,
                allow=self.config.bastion_allow,
                connect_timeout=self.config.connect_timeout,
                stats=self.stats,
            )
        else:
            await self.origin.forward(client, request, service)

    def _hello(
        self, client: _Client, request: h11.Request, host: str, path: str, index: int
    ) -> bytes:
        """The ``hello_world`` body: enough to tell which tunnel replica served a request."""
        body = {
            "tunnel": self.config.tunnel,
            "replica": self.config.replica,
            "datacenter": self.config.datacenter,
            "host": host,
            "path": path,
            "method": request.method.decode("latin-1"),
            "sni": client.sni,
            "rule": index,
        }
        return json.dumps(body).encode() + b"\n"

    def _record_rejected(self, peer: str, tls: bool, sni: str | None, status: int) -> None:
        """A request refused before routing (malformed): rule -1, no method or host."""
        log.info("request_rejected", extra={"fields": {"peer": peer, "status": status}})
        self.stats.record(RequestRecord("", "", "", -1, status, sni, tls))

    def _record(self, client: _Client, host: str, target: str, rule: int, status: int) -> None:
        method = client.method.decode("latin-1")
        fields = {"peer": client.peer, "method": method, "host": host, "target": target}
        log.info("request", extra={"fields": {**fields, "rule": rule, "status": status}})
        self.stats.record(RequestRecord(method, host, target, rule, status, client.sni, client.tls))


async def serve_connector(
    config: ConnectorConfig,
    *,
    stats: ConnectorStats | None = None,
    faults: Faults | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a connector until cancelled.

    ``task_status.started`` receives the bound ``(host, port)`` addresses: the HTTPS
    listeners first, then the plain-HTTP ones (one each for an IP address; a name like
    ``localhost`` may bind IPv4 and IPv6 separately).  Use ``nursery.start`` to learn the
    ports chosen for port 0.  Pass ``stats`` to observe requests, statuses and SNI, and
    ``faults`` to make it fail on command (:mod:`lb.connector.faults`).
    """
    server = _Server(config, stats if stats is not None else ConnectorStats(), faults)
    await server.run(task_status)
