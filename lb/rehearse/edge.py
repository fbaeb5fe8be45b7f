"""The edge stand-in of a rehearsal: Cloudflare's choice of a tunnel's replica, on loopback.

Why a forwarder
===============

The LB dials one address per tunnel endpoint (``connect_to``); which cloudflared replica
serves a request is decided behind that address, by Cloudflare's edge.  The simulator
models that choice in :func:`lb.sim.network.prefer_local`: a replica connected in the
request's entry data center, else the nearest, else any, and never a replica whose tunnel
connection is gone.  To fail ONE replica for real, a rehearsal runs one ``tunnel-lb
connector`` per replica and this forwarder at the tunnel's address; it asks that same
function, with the same inputs, for every request.

What it does, per request
=========================

* the entry data center is the colo of the request's ``CF-Ray`` (the LB passes the client's
  header upstream; the traffic driver sets it per data center); a request without one (the
  LB's probes) goes round-robin over the candidates, as the simulator spreads a probe
  session's attempts;
* among the candidates one is picked uniformly at random (the simulator's draw);
* a replica whose connection is refused (the ``refuse`` of :mod:`lb.connector.faults`) is
  dropped for this request and the choice is made again over the rest: the simulator's edge
  does not use a replica whose tunnel connection is gone.  With none left the answer is
  ``530`` (Cloudflare's "no tunnel connector").  A replica that takes the request and then
  resets before its answer, or cuts its body, is not passed over (the request was sent): the
  LB's connection is cut too, as the simulator's edge uses it and the attempt fails;
* upstream connections are kept alive (a :class:`lb.rehearse.client.Pool` per replica, the
  traffic driver's light client: the process is busy when the traffic is), and bodies are
  buffered: a rehearsal's requests are small (above :data:`MAX_BODY`: 413; a malformed
  request: 400).

Faults of the whole tunnel's edge layer are the edge's own: it holds a
:class:`lb.connector.faults.Faults` with its control port, so ``refuse``, ``blackhole``,
``down``, ``status``, ``latency`` and ``flap`` of a tunnel act on the LB's connections
exactly as on a lone stand-in, until an event of some replicas hands them over to the
replicas' connectors (:func:`lb.rehearse.drive.handovers`).  A handed-over ``status`` is
still the edge's own: the connector tags its answer
(:data:`lb.connector.faults.HANDED_HEADER`), and the edge records no replica for it in
:attr:`Edge.answered` and strips the tag before it answers the LB.  ``docs/rehearse.md`` lists
what this does not model.

Why a process of its own
========================

:func:`main` runs one edge stand-in as its own process, started by
:mod:`lb.rehearse.stack` like a connector.  Inside the rehearsal's process it shared one
event loop with the traffic driver: on a loaded two-core machine that loop fell behind, and
the LB's probes through the edge, which wait on it, timed out (their timeout is scaled, 0.4 s
in the reference rehearsal), so tunnels that worked went unhealthy at start.  Apart, each
process gets its own share of the cores, and a probe waits only for the edge.  The rehearsal
asks for :attr:`Edge.answered` over the process's stdin at the end of the run.

Why the latency comes after the replica's answer
================================================

The simulator asks every layer of a replica at one instant, the attempt's.  A lone stand-in
waits out its latency before it answers; the edge stand-in takes the latency in force when
the request arrives, forwards the request at once and waits that long after the replica's
answer.  The total is the same, and the edge and the replica's connector then look at their
conditions within a millisecond of each other.  Waiting first, the edge would reach the
connector one latency later: a request waiting at the edge while its latency is handed over
to the connectors (or while a tunnel-wide latency replaces a connector's) would pay both,
where the simulator charges one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import ssl
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import trio

from lb.config.model import Datacenter
from lb.connector.faults import HANDED_HEADER, Faults, cut_answer, serve_control
from lb.connector.h11io import H11Stream, reason
from lb.proxy.headers import HOP_BY_HOP, colo_from_ray
from lb.rehearse.client import Answer, BrokenError, CutError, Pool, RefusedError
from lb.sim.network import prefer_local
from lb.sim.scenario import Replica, load_scenario

__all__ = ["ANSWERED", "MAX_BODY", "NO_CONNECTOR", "Edge", "Upstream", "contexts", "main"]

log = logging.getLogger(__name__)

NO_CONNECTOR = 530
"""The answer when no replica takes the request (Cloudflare's error 1033)."""
MAX_BODY = 1 << 20
"""The largest request body the edge buffers (a rehearsal's are empty); above it, 413."""
IDLE = 300.0
"""Seconds an LB connection may stay silent (the LB closes its idle ones much sooner)."""
_GONE = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.ProtocolError,
    ssl.SSLError,
    OSError,
)
ANSWERED = b"answered\n"
"""What the rehearsal writes to an edge process's stdin to get :attr:`Edge.answered` back
(one JSON line on its stdout)."""
_NO_BODY = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


@dataclass(frozen=True, slots=True)
class Upstream:
    """One replica's connector: the replica and its HTTPS ``host:port``."""

    replica: Replica
    address: str


def _where(u: Upstream) -> tuple[str, ...]:
    return u.replica.datacenters


class Edge:
    """One tunnel's edge; :meth:`serve` runs it, :meth:`choose` is its pure choice."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        datacenters: Mapping[str, Datacenter],
        *,
        server_context: ssl.SSLContext,
        client_context: ssl.SSLContext,
        rng: random.Random,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.faults = Faults()
        self.served: Counter[str] = Counter()
        """Requests answered through each replica (by replica name)."""
        self.answered: dict[str, str] = {}
        """``X-Request-Id`` -> the label of the replica that answered it (the real run's
        ``by_replica``, :mod:`lb.rehearse.real`)."""
        self._dcs = datacenters
        self._server_context = server_context
        self._client_context = client_context
        self._rng = rng
        self._turn = 0

    def choose(self, dc: str, failed: set[str]) -> Upstream | None:
        """The replica for a request entering at ``dc`` ("" if unknown), none of ``failed``
        (replica names); None when every replica failed."""
        usable = [u for u in self.upstreams if u.replica.name not in failed]
        if not usable:
            return None
        chosen = prefer_local(usable, dc, self._dcs, _where)
        if not dc:
            self._turn += 1
            return chosen[self._turn % len(chosen)]
        return chosen[int(self._rng.random() * len(chosen))]

    async def serve(self, task_status: trio.TaskStatus[tuple[str, str]]) -> None:
        """Listen on a free loopback port; report ``(host:port, control URL)``."""
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = int(listener.socket.getsockname()[1])
        pools = {
            u.address: Pool(u.address, tls=self._client_context, read_timeout=IDLE)
            for u in self.upstreams
        }
        try:
            async with trio.open_nursery() as nursery:
                serving = partial(serve_control, self.faults, ("127.0.0.1", 0))
                control = await nursery.start(serving)
                nursery.start_soon(self.faults.serve, partial(self._connection, pools), listener)
                at = (f"127.0.0.1:{port}", f"http://127.0.0.1:{control[1]}/faults")
                task_status.started(at)
        finally:
            with trio.CancelScope(shield=True):
                for pool in pools.values():
                    await pool.aclose()

    async def _connection(self, pools: Mapping[str, Pool], stream: trio.SocketStream) -> None:
        """One connection from the LB: TLS, then requests until either side closes."""
        tls: trio.abc.Stream = stream
        clean = False
        try:
            if not await self.faults.gate(stream):
                return
            tls = trio.SSLStream(stream, self._server_context, server_side=True)
            with trio.fail_after(30):
                await tls.do_handshake()
            clean = await self._serve(pools, H11Stream(tls, h11.SERVER, read_timeout=IDLE))
        except _GONE:
            pass
        except Exception:  # a bug must cost one connection, not the rehearsal
            log.exception("edge_connection_failed")
        finally:
            if clean:  # with TLS close_notify, so a client reading to the end sees one
                with trio.move_on_after(1), contextlib.suppress(*_GONE):
                    await tls.aclose()
            await trio.aclose_forcefully(tls)

    async def _serve(self, pools: Mapping[str, Pool], http: H11Stream) -> bool:
        """Requests on one connection; False when it must be cut rather than closed."""
        while True:
            try:
                event = await http.next_event()
                if not isinstance(event, h11.Request):
                    return True
                body = await _body(http)
            except h11.RemoteProtocolError as exc:
                await _refuse(http, exc.error_status_hint, str(exc))
                return True
            if body is None:
                await _refuse(http, 413, f"a body above {MAX_BODY} bytes")
                return True
            delay = self.faults.latency  # the one in force when the request came
            if not await self.faults.gate(http.stream, wait=False):
                return False
            if not await self._answer(pools, http, event, body, delay):
                return False
            if not http.reusable:
                return True
            http.conn.start_next_cycle()

    async def _answer(
        self,
        pools: Mapping[str, Pool],
        http: H11Stream,
        request: h11.Request,
        body: bytes,
        delay: float,
    ) -> bool:
        """Forward one request at once, and answer ``delay`` seconds after the replica did
        (the module docstring says why); False when the LB's connection must be cut."""
        cut = self.faults.cut()
        if cut is not None:
            await _hold(delay)
            await cut_answer(http.send, cut)
            return False
        status = self.faults.answer()
        if status is not None:
            await _hold(delay)
            await _respond(http, request, status, [], b"")
            return True
        headers = [(n, v) for n, v in request.headers if n not in HOP_BY_HOP and n not in _FRAMING]
        dc = colo_from_ray(next((v for n, v in headers if n == b"cf-ray"), None))
        if not request.target.startswith(b"/"):  # OPTIONS *, or a form the LB never sends upstream
            await _hold(delay)  # an answer of the edge's own, as a status fault's
            await _respond(http, request, 400, [], b"the edge forwards origin-form targets\n")
            return True
        failed: set[str] = set()
        while (up := self.choose(dc, failed)) is not None:
            pool = pools[up.address]
            try:
                answer = await pool.request(request.method, request.target, headers, body)
            except RefusedError:  # refused: Cloudflare's edge tries the next replica
                failed.add(up.replica.name)
                continue
            except BrokenError:
                await _hold(delay)
                return False  # taken, then reset before an answer: so is the LB's connection
            except CutError as broke:
                # Cut mid-body: the LB gets the head and the bytes that came, then the cut.
                await _hold(delay)
                await _cut(http, broke.answer)
                return False
            self.served[up.replica.name] += 1
            rid = next((v for n, v in headers if n == b"x-request-id"), None)
            # A status of the whole tunnel the connector answers for this edge (handed over
            # to it) stays the edge's own, counted for no replica, as in the simulator.
            handed = any(n == HANDED_HEADER for n, _ in answer.headers)
            if rid is not None and not handed:
                self.answered[rid.decode("latin-1")] = up.replica.label or up.replica.name
            kept = [
                (n, v)
                for n, v in answer.headers
                if n not in HOP_BY_HOP and n not in _FRAMING and n != HANDED_HEADER
            ]
            await _hold(delay)
            await _respond(http, request, answer.status, kept, answer.body)
            return True
        await _hold(delay)
        await _respond(http, request, NO_CONNECTOR, [], b"no tunnel connector\n")
        return True


async def _hold(delay: float) -> None:
    """Wait out the edge's latency before an answer."""
    if delay > 0:
        await trio.sleep(delay)


async def _body(http: H11Stream) -> bytes | None:
    """The request's body, buffered; None when it exceeds :data:`MAX_BODY`."""
    body = b""
    while not isinstance(part := await http.next_event(), h11.EndOfMessage):
        if not isinstance(part, h11.Data):
            raise h11.RemoteProtocolError("the request ended before its body", 400)
        body += part.data
        if len(body) > MAX_BODY:
            return None
    return body


async def _refuse(http: H11Stream, status: int, why: str) -> None:
    """Answer a request the edge will not forward with a one-line error, and close."""
    if http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {reason(status).decode()}: {why}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    await http.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
    await http.send(h11.Data(data=body))
    await http.send(h11.EndOfMessage())


async def _cut(http: H11Stream, answer: Answer) -> None:
    """Relay the head of a response whose body broke off, and the part that came."""
    headers = [(n, v) for n, v in answer.headers if n not in HOP_BY_HOP]
    status = answer.status
    await http.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
    if answer.body:
        await http.send(h11.Data(data=answer.body))


async def _respond(
    http: H11Stream,
    request: h11.Request,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Send one framed response (Content-Length, except where a status or HEAD has none)."""
    if status not in _NO_BODY and request.method != b"HEAD":
        headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
    else:
        body = b""
    await http.send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
    if body:
        await http.send(h11.Data(data=body))
    await http.send(h11.EndOfMessage())


def contexts(cert: Path, ca_file: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The edge's TLS: the stand-ins' certificate towards the LB, the throw-away CA towards
    the connectors."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert))
    return server, ssl.create_default_context(cafile=str(ca_file))


def main(argv: list[str]) -> int:
    """One edge stand-in as a process of its own (the module docstring says why), from a
    JSON spec: ``scenario`` (the scaled scenario file), ``address`` (the tunnel's),
    ``upstreams`` ([replica name, host:port] pairs), ``cert``, ``ca``, ``seed``.

    Prints ``edge: HOST:PORT`` and ``control: URL`` once serving; answers each
    :data:`ANSWERED` line on stdin with :attr:`Edge.answered` as one JSON line; exits at
    the end of stdin (or on SIGTERM)."""
    spec = json.loads(Path(argv[0]).read_text("utf-8"))
    sc = load_scenario(spec["scenario"])
    replicas = {r.name: r for r in sc.replicas[spec["address"]]}
    server, client = contexts(Path(spec["cert"]), Path(spec["ca"]))
    edge = Edge(
        [Upstream(replicas[name], at) for name, at in spec["upstreams"]],
        sc.config.datacenters,
        server_context=server,
        client_context=client,
        rng=random.Random(spec["seed"]),
    )
    trio.run(_child, edge)
    return 0


async def _child(edge: Edge) -> None:
    async with trio.open_nursery() as nursery:
        at, control = await nursery.start(edge.serve)
        _say(f"edge: {at}\ncontrol: {control}\n")
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffered = b""
        while chunk := await stdin.receive_some(4096):
            *lines, buffered = (buffered + chunk).split(b"\n")
            for _ in range(lines.count(ANSWERED.strip())):
                _say(json.dumps(edge.answered) + "\n")
        nursery.cancel_scope.cancel()


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
