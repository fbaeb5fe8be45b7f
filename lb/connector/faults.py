"""Faults a running connector can be told to show, and the small HTTP API that tells it.

Why a control port
==================

``tunnel-lb rehearse`` replays a scenario's timeline against real processes, so the stand-in
must be able to fail on command, the way a real tunnel does: stop accepting (``refuse``),
accept and never answer (``blackhole``), answer the edge's 530 (``down``), answer another
status, answer late, or alternate between working and failing (``flap``).  Signals would
carry no parameters and are taken by the stop handling; a loopback HTTP port carries a JSON
body, answers with the state it set, and needs nothing but ``curl`` (``docs/connector.md``).

What each fault does on the wire
================================

* ``refuse``: the listening sockets are closed, so a new connection gets ``ECONNREFUSED``
  (the proxy's 521), and the connections they accepted are closed with them (they run in
  the serving nursery that is cancelled), as when the process behind them stops.
  ``recover`` binds the same port again.
* ``blackhole``: connections are accepted, and no byte is ever answered, on new connections
  and on kept-alive ones alike (the proxy's 522 after its connect or response timeout).
* ``down``: every request is answered ``530`` (Cloudflare's "no tunnel connector").
* ``status``: every request is answered with that status.
* ``latency``: every answer waits that many seconds first (kept across other faults, as in
  the simulator, until ``recover``).
* ``reset``: the request is read, then the connection is dropped before any byte of an
  answer (the proxy's 502, or a ``retry_on`` retry; a failed probe).
* ``truncate``: the answer's head promises a body, half of it is sent, then the connection
  is dropped (a cut response: what ``retry_on.buffer_response`` can retry).
* ``flap``: ``down_for`` seconds of ``how`` (one of the faults above) in every ``period``,
  from the moment it is set, or from ``since`` when the request gives one.

Why a change can be dated
=========================

Any control request may carry ``at``, an instant on ``time.monotonic()`` (which on Linux is
one clock for every process of the machine, the one the LB's log lines carry as ``mono``):
the change is checked at once and comes into force at that instant, so a fault sent ahead
takes effect on time however busy the machine is when it comes due.

A flap's phase is part of what it does: which requests fall in its down parts.  Dated by
the control request's arrival, it would shift by however late that request came (on a
loaded machine, seconds, against a period of one or two seconds at a rehearsal's speeds),
and a flap handed from the edge stand-in to the replicas' connectors in the middle
of its run would restart its period.  So a flap may also carry ``since``, its start on the
same clock: the phase is then counted from that instant, however late the request came.
Before ``since`` the flap is up (it has not started).

With ``"layer": "origin"`` the same faults hit the application behind the connector instead
of the connector itself (the scenario's ``origin:`` target): the connector keeps accepting and
routing, and a request for an application service (an origin URL, or ``hello_world``, which
plays the application) gets what cloudflared answers when its origin fails: ``502`` for a
refused or failed origin, no answer at all for a hung one (the proxy's 524 after its request
timeout), the status of ``status``, the wait of ``latency``, a cut body for ``truncate``
(cloudflared streams the application's body; the wait of ``latency`` comes first, as in the
simulator) and 502 for ``reset``.  ``http_status`` rules
answer without the application, so they stay unaffected, as in the simulator.

A ``status`` (or a flap showing one) may carry ``"handed": true``: the rehearsal's edge
stand-in held it for the whole tunnel and handed it over to the replicas' connectors
(``lb/rehearse/drive.py``).  Such a status is still the edge's own answer, as the simulator
counts it, for no replica; so its answer carries ``x-rehearse-edge-status: 1``, by which the
edge stand-in tells it from the replica's own answer (and strips it before answering the LB).
The tag goes with the answer itself, so the crediting needs no clock: a request retried a
whole failed attempt later, or a hand-over whose POST came late, is counted by what
actually answered it.

Faults the connector cannot make real on one machine are refused with a message naming them
(``unreachable``, ``partition``): whether a host is reachable depends on where the asker is,
and every process here shares one loopback interface.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import trio

from lb.connector.stats import ConnectorStats
from lb.lifecycle import ListenError, host_port

__all__ = ["HANDED_HEADER", "FaultError", "Faults", "cut_answer", "serve_control"]

FAULT_ACTIONS = (
    "refuse",
    "blackhole",
    "down",
    "status",
    "latency",
    "reset",
    "truncate",
    "flap",
    "recover",
)
EDGE, ORIGIN = "edge", "origin"
"""The two layers a fault can hit: the connector itself, or the application behind it."""
UNSUPPORTED = {
    "unreachable": "a host unreachable from the LB cannot be made on one loopback interface",
    "partition": "a partition seen from some places only cannot be made on one machine",
}
_MAX_BODY = 4096
_CUT_BODY = 2048
"""Bytes a ``truncate`` sends of the twice as long body its head promises."""
_INSTANT_RANGE = 86400.0
"""How far ``at`` may lie from now, and a flap's ``since`` from its ``at``: a day, beyond
any rehearsal's timeline, and far too little for a time on another clock (the wall
clock's seconds since 1970)."""
_MAX_HELD = 256
"""Changes held for a later ``at`` at most: far more than a rehearsal sends ahead (one per
timeline event and target; one with more for a single stand-in stops with this refusal), and a
bound on what a runaway client can make the process keep."""
ORIGIN_FAILED = 502
"""cloudflared's answer when its origin refuses, fails or is down."""
HANDED_HEADER = b"x-rehearse-edge-status"
"""Tags (value ``1``) the answer of a ``status`` set with ``"handed": true``."""


class FaultError(ValueError):
    """A control request that names no fault this connector can show (one line), answered
    with :attr:`status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Condition:
    action: str
    status: int = 0
    period: float = 0.0
    down_for: float = 0.0
    how: str = ""
    since: float = 0.0
    handed: bool = False
    """A ``status`` handed over by the rehearsal's edge stand-in: its answer is tagged
    :data:`HANDED_HEADER` (the module docstring says why)."""


@dataclass(frozen=True, slots=True)
class _Change:
    """One checked control request: what it sets, and from when."""

    at: float
    layer: str
    action: str
    condition: _Condition | None = None
    latency: float = 0.0


def _parse(body: dict[str, object], at: float) -> _Change:
    """Check one control request (:class:`FaultError` naming what is wrong); a flap without
    ``since`` starts at ``at``."""
    action = body.get("do")
    if not isinstance(action, str):
        raise FaultError('expected a JSON object with "do": one of ' + ", ".join(FAULT_ACTIONS))
    layer = body.get("layer", EDGE)
    if layer not in (EDGE, ORIGIN):
        raise FaultError(f'layer: "{EDGE}" (the connector) or "{ORIGIN}" (its application)')
    assert isinstance(layer, str)
    if action == "unreachable" and layer == ORIGIN:
        action = "down"  # cloudflared cannot reach its application: 502, as for down
    if action in UNSUPPORTED:
        raise FaultError(f"{action} cannot be rehearsed: {UNSUPPORTED[action]}")
    if action not in FAULT_ACTIONS:
        raise FaultError(f"unknown fault {action!r}; one of " + ", ".join(FAULT_ACTIONS))
    if "since" in body and action != "flap":
        raise FaultError("since: only a flap has a start (any change can carry at)")
    handed = body.get("handed", False)
    if not isinstance(handed, bool) or (
        handed
        and (
            layer != EDGE
            or not (action == "status" or (action == "flap" and body.get("how") == "status"))
        )
    ):
        raise FaultError("handed: true or false, and only for a status (or a flap's) at the edge")
    if action == "recover":
        return _Change(at, layer, action)
    if action == "latency":
        return _Change(at, layer, action, latency=_number(body, "latency", 0.0, 3600.0))
    if action == "flap":
        period = _number(body, "period", 0.001, 1e9)
        down_for = _number(body, "down_for", 0.0, period) if "down_for" in body else period / 2
        how = body.get("how", "refuse")
        if how == "unreachable" and layer == ORIGIN:
            how = "down"  # as for a lone unreachable above
        if how not in ("refuse", "blackhole", "down", "status"):
            raise FaultError("how: one of refuse, blackhole, down, status")
        status = _status(body) if how == "status" else 0
        since = _instant(body, "since", at) if "since" in body else at
        flap = _Condition("flap", status, period, down_for, str(how), since, handed)
        return _Change(at, layer, action, flap)
    status = _status(body) if action == "status" else 0
    return _Change(at, layer, action, _Condition(action, status, since=at, handed=handed))


class Faults:
    """The fault state of one connector; the server asks it before and while serving."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._conditions: dict[str, _Condition | None] = {EDGE: None, ORIGIN: None}
        self._latency = {EDGE: 0.0, ORIGIN: 0.0}
        self._pending: list[_Change] = []
        """Changes held until their ``at`` (in that order)."""
        self.changed = trio.Event()
        """Set (and replaced) on every change, so waiting tasks re-check."""
        self._serving: set[trio.CancelScope] = set()
        """The scopes serving the listeners (and their connections), cancelled by refuse."""
        self._closing: set[trio.CancelScope] = set()
        """Serving scopes cancelled by refuse whose connections are still being closed."""
        self._closed = trio.Event()
        """Set when every scope of :attr:`_closing` has finished (see :meth:`settled`)."""

    # ------------------------------------------------------------------ control

    def apply(self, body: dict[str, object]) -> dict[str, object]:
        """Apply one control request (``{"do": ..., ...}``); return the new state.

        With ``at`` (an instant on ``time.monotonic()``, the module docstring says why) a
        change comes into force then, not now: it is checked at once and held until then
        (changes due at one instant in the order they came); ``at`` in the past applies it
        at once.  At most ``_MAX_HELD`` changes are held (then :class:`FaultError`, 429).
        An undated ``recover`` also drops the changes held for its layer: "working, and
        stay so" (``docs/connector.md``)."""
        self._due()
        now = self._clock()
        dated = "at" in body
        at = _instant(body, "at", now) if dated else now
        change = _parse(body, at)
        if at > now:
            if len(self._pending) >= _MAX_HELD:
                raise FaultError(
                    f"{_MAX_HELD} changes are already held for a later at; "
                    "send this one when some have come due",
                    429,
                )
            # insort_right: changes of one instant stay in the order they came.
            bisect.insort(self._pending, change, key=lambda c: c.at)
            self._wake()  # waiting tasks count down to it
        else:
            if change.action == "recover" and not dated:
                self._pending = [c for c in self._pending if c.layer != change.layer]
            self._enact(change)
        return self.state()

    def _enact(self, change: _Change) -> None:
        if change.action == "recover":
            self._conditions[change.layer], self._latency[change.layer] = None, 0.0
        elif change.action == "latency":
            self._latency[change.layer] = change.latency
        else:
            self._conditions[change.layer] = change.condition
        self._wake()

    def _due(self) -> None:
        """Enact the held changes whose instant has come (:meth:`current`, which every
        reader goes through, calls this first, so a request is answered by the state of its
        own instant)."""
        if not self._pending:
            return
        now = self._clock()
        while self._pending and self._pending[0].at <= now:
            self._enact(self._pending.pop(0))

    @property
    def latency(self) -> float:
        """Seconds the connector waits before every answer (``latency`` at the edge)."""
        self._due()
        return self._latency[EDGE]

    def state(self) -> dict[str, object]:
        """What the connector shows now (the control API's answer); the application's
        faults under ``origin`` once one was set; ``pending``: the changes held until
        their ``at``."""
        self._due()
        out = self._layer_state(EDGE)
        if self._conditions[ORIGIN] is not None or self._latency[ORIGIN]:
            out["origin"] = self._layer_state(ORIGIN)
        if self._pending:
            out["pending"] = [{"at": c.at, "do": c.action, "layer": c.layer} for c in self._pending]
        return out

    def _layer_state(self, layer: str) -> dict[str, object]:
        c = self._conditions[layer]
        out: dict[str, object] = {
            "fault": self.current(layer)[0] or None,
            "latency": self._latency[layer],
        }
        if c is not None:
            condition: dict[str, object] = {"do": c.action, "status": c.status or None}
            if c.action == "flap":
                condition.update(period=c.period, down_for=c.down_for, how=c.how, since=c.since)
            if c.handed:
                condition["handed"] = True
            out["set"] = condition
        return out

    def _wake(self) -> None:
        if self._in_force(EDGE)[0] == "refuse":
            # Here, not in the serving task: by the time the control request is answered,
            # the listeners and their connections are being closed.
            for scope in self._serving:
                scope.cancel()
            self._closing |= self._serving
            if self._closing and self._closed.is_set():
                self._closed = trio.Event()  # a second change keeps the event waited on
        self.changed.set()
        self.changed = trio.Event()

    async def settled(self) -> None:
        """Until a ``refuse`` has closed the listeners and every connection they accepted
        (at most 5 s), so a client told "refused" cannot still send on one of them."""
        if self._closing:
            with trio.move_on_after(5):
                await self._closed.wait()

    # ------------------------------------------------------------------ the server's side

    def current(self, layer: str = EDGE) -> tuple[str, int]:
        """``(fault, status)`` in force now at ``layer``; ``("", 0)`` when it works (the held
        changes that came due enacted first)."""
        self._due()
        return self._in_force(layer)

    def _in_force(self, layer: str) -> tuple[str, int]:
        """:meth:`current` without enacting held changes (which calls this via :meth:`_wake`)."""
        c = self._conditions[layer]
        if c is None:
            return "", 0
        if c.action != "flap":
            return c.action, c.status
        elapsed = self._clock() - c.since
        if elapsed >= 0 and elapsed % c.period < c.down_for:
            return c.how, c.status
        return "", 0

    def next_toggle(self) -> float:
        """Seconds until the connector's state changes by itself: a flap switches, or a
        held change comes into force (inf: never)."""
        self._due()
        now = self._clock()
        held = max(0.0, self._pending[0].at - now) if self._pending else math.inf
        c = self._conditions[EDGE]
        if c is None or c.action != "flap":
            return held
        elapsed = now - c.since
        if elapsed < 0:  # not started yet: up until it does
            return min(held, -elapsed)
        phase = elapsed % c.period
        return min(held, (c.down_for - phase) if phase < c.down_for else (c.period - phase))

    async def wait_change(self) -> None:
        """Sleep until the fault state may have changed."""
        changed = self.changed
        timeout = self.next_toggle()  # enacts the held changes that are due: sets `changed`
        with trio.move_on_after(timeout):
            await changed.wait()

    async def serve(
        self,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        listener: trio.SocketListener,
    ) -> None:
        """``trio.serve_listeners`` that closes the socket while ``refuse`` is in force and
        binds the same address again afterwards."""
        host, port = listener.socket.getsockname()[:2]
        current: trio.SocketListener | None = listener
        try:
            while True:
                if current is None:
                    while self.current()[0] == "refuse":
                        await self.wait_change()
                    current = (await trio.open_tcp_listeners(port, host=host))[0]
                scope = trio.CancelScope()
                try:
                    with scope:
                        self._serving.add(scope)
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(trio.serve_listeners, handler, [current])
                            while self.current()[0] != "refuse":
                                await self.wait_change()
                            scope.cancel()
                    await trio.aclose_forcefully(current)
                    current = None
                finally:  # the connections are closed by now (the nursery waited for them)
                    self._serving.discard(scope)
                    self._closing.discard(scope)
                    if not self._closing:
                        self._closed.set()
        finally:
            if current is not None:
                await trio.aclose_forcefully(current)

    async def gate(self, stream: trio.abc.Stream, *, wait: bool = True) -> bool:
        """Before a connection's handshake or a request's answer: wait out the latency (not
        with ``wait=False``: the rehearsal's edge stand-in waits after its replica answers),
        hang on ``blackhole`` (until the peer leaves), and say False when the connection
        must be cut (``refuse``)."""
        fault = self.current()[0]
        if fault == "refuse":
            return False
        if fault == "blackhole":
            await _swallow(stream)
            return False
        if wait and self.latency:
            await trio.sleep(self.latency)
        return True

    def answer(self) -> int | None:
        """The status to answer instead of serving (``down``: 530, ``status``), or None."""
        forced = self.forced()
        return None if forced is None else forced[0]

    def forced(self) -> tuple[int, bool] | None:
        """:meth:`answer`, and whether that status was handed over (``handed``: its answer
        carries :data:`HANDED_HEADER`), read at one instant."""
        fault, status = self.current()
        if fault == "down":
            return 530, False
        if fault == "status":
            c = self._conditions[EDGE]
            return status, c is not None and c.handed
        return None

    def cut(self, layer: str = EDGE) -> str | None:
        """``reset`` or ``truncate`` when that fault is in force at ``layer``: the request is
        answered by :func:`cut_answer` and its connection dropped."""
        fault = self.current(layer)[0]
        return fault if fault in ("reset", "truncate") else None

    async def origin_delay(self) -> None:
        """Wait out the application's ``latency`` (before any answer that reaches it, a cut
        one included)."""
        self._due()
        if self._latency[ORIGIN]:
            await trio.sleep(self._latency[ORIGIN])

    async def origin_answer(self, stream: trio.abc.Stream) -> int | None:
        """Before a request reaches the application: wait out its latency, then the status
        cloudflared answers for a failing origin (502, or the fault's status), None when it
        works.  A hung origin (``blackhole``) never answers: this returns only when the
        peer has gone, with 0 (the connection is to be dropped)."""
        await self.origin_delay()
        fault, status = self.current(ORIGIN)
        if not fault:
            return None
        if fault == "status":
            return status
        if fault == "blackhole":
            await _swallow(stream)
            return 0
        return ORIGIN_FAILED


async def cut_answer(send: Callable[[h11.Response | h11.Data], Awaitable[None]], how: str) -> None:
    """What a ``reset`` or ``truncate`` fault sends before its caller drops the connection:
    nothing, or a 200 head and half of the body it promises."""
    if how == "truncate":
        length = str(2 * _CUT_BODY).encode("ascii")
        await send(h11.Response(status_code=200, headers=[(b"content-length", length)]))
        await send(h11.Data(data=b"x" * _CUT_BODY))


async def _swallow(stream: trio.abc.Stream) -> None:
    """Read and drop whatever the peer sends, never answering, until it closes."""
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _number(body: dict[str, object], key: str, low: float, high: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise FaultError(f"{key}: expected seconds between {low:g} and {high:g}")
    return float(value)


def _instant(body: dict[str, object], key: str, near: float) -> float:
    """An instant on ``time.monotonic()`` (``at``, ``since``), within a day of ``near``."""
    value = body.get(key)
    error = FaultError(
        f"{key}: expected an instant on this machine's time.monotonic(), "
        f"within {_INSTANT_RANGE:g} s of {near:.3f}"
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error
    try:
        instant = float(value)  # a JSON integer of 400 digits overflows here: a 400, no crash
    except OverflowError:
        raise error from None
    if not abs(instant - near) <= _INSTANT_RANGE:  # NaN included
        raise error
    return instant


def _status(body: dict[str, object]) -> int:
    value = body.get("status")
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise FaultError("status: expected an HTTP status 100..599")
    return value


# --------------------------------------------------------------------------- the control API


async def serve_control(
    faults: Faults,
    address: tuple[str, int],
    *,
    stats: ConnectorStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /faults`` (the state) and ``POST /faults`` (a JSON fault) on ``address``,
    and ``GET /stats`` (what ``stats`` counted) when given."""
    try:
        listeners = await trio.open_tcp_listeners(address[1], host=address[0])
    except OSError as exc:
        raise ListenError(host_port(*address), exc) from exc
    sock = listeners[0].socket
    bound = (str(sock.getsockname()[0]), int(sock.getsockname()[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(5):
                await _control_exchange(faults, stats, stream)
        except (trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def _control_exchange(
    faults: Faults, stats: ConnectorStats | None, stream: trio.SocketStream
) -> None:
    conn = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                break
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    status, answer = _control(faults, stats, request, body)
    await faults.settled()
    payload = json.dumps(answer).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def _control(
    faults: Faults, stats: ConnectorStats | None, request: h11.Request | None, body: bytes
) -> tuple[int, object]:
    if request is None:
        return 400, {"error": "no request"}
    path = request.target.decode("latin-1").partition("?")[0]
    if path == "/stats" and stats is not None and request.method == b"GET":
        return 200, {
            "connections": stats.connections,
            "requests": stats.requests,
            "probes": stats.probes,
        }
    if path != "/faults":
        return 404, {"error": "not found; use GET or POST /faults, GET /stats"}
    if request.method == b"GET":
        return 200, faults.state()
    if request.method != b"POST":
        return 405, {"error": "use GET or POST"}
    if len(body) > _MAX_BODY:
        return 413, {"error": "body too large"}
    try:
        parsed = json.loads(body or b"null")
    except ValueError:
        return 400, {"error": "the body is not JSON"}
    if not isinstance(parsed, dict):
        return 400, {"error": 'expected a JSON object such as {"do": "refuse"}'}
    try:
        return 200, faults.apply(parsed)
    except FaultError as exc:
        return exc.status, {"error": str(exc)}
