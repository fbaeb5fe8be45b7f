"""Proxy worker processes for ``engine.workers > 1``: one prober, one health view, N acceptors.

Theory of operation
===================

CPython runs one request at a time per process, so a second core needs a second process.
``tunnel-lb run`` (the *parent*) keeps everything that must exist once: the monitor
scheduler (the only prober), the admin listener, reloads and ``/metrics``; it also serves
traffic as worker 0.  :class:`Workers` starts workers ``1 .. N-1`` as child processes
(``tunnel-lb run --worker FILE...``).  Each child opens the same listen addresses with
SO_REUSEPORT, so the kernel spreads new connections across the processes, and runs only
the proxy over an :class:`~lb.engine.Engine` of its own.

The children hold the same health as the parent without probing because the engine is
deterministic: the same configuration swaps and probe results, in the same order, give the
same health.  The parent forwards over each child's stdin, as JSON lines ``{kind: payload}``
(one message type per :class:`Kind`, written by :func:`encode` and read by :func:`decode`,
which rejects anything else):

``{"hello": ...}``
    first: the configuration the parent applied (pickled: the exact object, not the files
    as they are on disk now), the affinity secret (cookies issued by one worker are valid
    at all), the listeners the parent bound at its start (pickled, port 0 resolved: never
    those of a reloaded configuration, which are not rebound) with the (address, port) each
    was configured with (what a later ``engine.listen`` is compared with, as in the parent)
    and a seed.
``{"restore": ...}``
    second: the parent's current vantage states and RTT averages for
    :meth:`~lb.core.book.HealthBook.restore`, the *pending run* of each check to
    replay (see :class:`_Runs`) and the endpoints passive health holds out.  A child
    started at any time converges at once.
``{"probe": ...}``
    every :class:`~lb.core.health.ProbeResult` the parent's engine applies (an observer of
    ``engine.observers.probes``), encoded once for all children.
``{"config": ...}``
    every configuration the parent's engine swaps in (``engine.observers.config``): reloads
    reach the workers in order with the probe results around them.
``{"ejection": ...}``
    every ejection and return of passive health (the health events of the ``passive``
    pseudo vantage point, ``engine.observers.health``): the endpoint's
    :class:`~lb.core.passive.Saved` state right after, for
    :meth:`~lb.engine.Engine.follow`.
``{"shutdown": true}``
    drain and exit.  End of file on stdin (the parent died) does the same.

Children report on stdout: ``{"ready": ...}`` once listening, then about once a second
``{"report": {"metrics": ..., "live": ..., "clients": ..., "active": ...}}``: every counter and
histogram gathered since the previous report (by metric name: all of ``Metrics.events``,
not a list kept here), which the parent adds to its own :class:`~lb.metrics.Metrics`; the
child's requests in flight and open upstream connections (:func:`lb.engine.live_report`),
which the parent keeps in ``Engine.reported`` for its gauges and ``/status`` until the next
report or the child's exit; and its open client connections and active requests, kept the
same way in ``Metrics.worker_client_connections`` and ``Metrics.worker_requests_active``.  The
report is also the heartbeat.  No message is sent per request.

Passive health (``passive_health``) is the one input the children have and the parent
needs: outcomes of real traffic.  One place decides, the parent, because a run of
consecutive failures spread over N processes would otherwise reach no process's threshold.
A child's engine is made with an outcome sink (``Engine(..., outcomes=...)``): it counts
nothing and its book never ejects nor returns an endpoint on its own.  The classified
outcomes of its attempts go to the parent as ``{"outcomes": [[pool, endpoint, status,
connect_failed, detail, n], ...]}`` (run-length encoded, in order, at most
:data:`BATCH_SIZE` per message), sent :data:`BATCH_WINDOW` after the first of a batch or at
once at :data:`BATCH_SIZE`, as soon as the pipe takes them (see :class:`_OutcomeBatch`); the
parent counts them with :meth:`~lb.engine.Engine.count` on arrival, as if its own proxy
had seen them, and its ejections and returns come back to every child as ``ejection``
messages.  The price: an ejection reaches a child a batch window plus a pipe hop after the
failures that caused it, and "consecutive" means in the order the parent receives them.

A child that exits while the parent is not stopping is logged and started again after a
bounded backoff; a child whose input queue overflows (it stopped reading) or that sends
nothing for :data:`SILENT_TIMEOUT` seconds (stopped with SIGSTOP, hung) is killed and
started again: its listening socket would otherwise keep receiving connections from the
kernel that nobody accepts.  See ``docs/workers.md`` for what is per worker.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, ClassVar

import trio

from lb import logs
from lb.children import reap
from lb.config.model import Config, Listener
from lb.core.attempts import Failure
from lb.core.health import Health, HealthEvent, ProbeResult
from lb.core.passive import PASSIVE, Outcome, Saved
from lb.engine import Engine, LiveReport, live_report
from lb.lifecycle import STOP_SIGNALS, receive_signals
from lb.metrics import Metrics
from lb.proxy.listeners import configured_addresses

__all__ = [
    "FROM_CHILD",
    "FROM_PARENT",
    "ChildContext",
    "ConfigSwap",
    "Ejection",
    "Hello",
    "Kind",
    "Message",
    "Outcomes",
    "Probe",
    "ProtocolError",
    "Ready",
    "Report",
    "Restore",
    "Shutdown",
    "Workers",
    "decode",
    "drain_traffic",
    "encode",
    "merge_traffic",
    "run_child",
]

QUEUE_LIMIT = 65536
"""Messages queued for one child; past it the child is deemed stuck and restarted."""
READY_TIMEOUT = 15.0
"""Seconds :meth:`Workers.run` waits for the children's ``ready`` before reporting started."""
FLUSH_INTERVAL = 1.0
"""Seconds between a child's reports (traffic counters and live counts; also its heartbeat)."""
SILENT_TIMEOUT = 10.0
"""A running child silent on stdout for longer (stopped, hung) is killed and restarted."""
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
"""Restart delay of a dead child: doubles per quick death, reset after STABLE seconds."""
STABLE = 60.0
STOP_GRACE = 5.0
"""Seconds past ``engine.drain_timeout`` a stopping child gets before it is killed."""
MAX_RUN = 1000
"""Longest pending run kept per check (``consecutive_up/down`` are at most 1000)."""
BATCH_WINDOW = 0.015
"""Seconds a child holds its first unsent attempt outcome before sending the batch."""
BATCH_SIZE = 256
"""Unsent outcomes that make a child send its batch at once; also the most outcomes one
``outcomes`` message carries (the parent refuses more: counting is synchronous, and a
larger message would hold up its loop)."""
MAX_PENDING = 64 * BATCH_SIZE
"""Unsent outcomes a child keeps while its pipe is blocked; later ones are dropped (and
logged): counting them late would say little, and memory stays bounded."""


# --------------------------------------------------------------------------- protocol


class Kind(StrEnum):
    """The kind of a pipe message: its JSON line is ``{kind: payload}``."""

    HELLO = "hello"
    RESTORE = "restore"
    PROBE = "probe"
    CONFIG = "config"
    EJECTION = "ejection"
    SHUTDOWN = "shutdown"
    READY = "ready"
    REPORT = "report"
    OUTCOMES = "outcomes"


@dataclass(frozen=True, slots=True)
class Hello:
    """Parent to child, first: what the child serves with (see the module docstring)."""

    config: Config
    secret: bytes
    listen: tuple[tuple[str, int], ...]
    """The parent's bound listen addresses (reported back in ``ready``)."""
    listeners: tuple[Listener, ...]
    """The listeners the parent bound at its start (port 0 resolved), which the child binds."""
    opened_as: tuple[tuple[str, int], ...]
    """The configured (address, port) of each of those listeners (port 0 as written): a
    swapped-in ``engine.listen`` entry applies to a listener only while it names these, as
    in the parent (:class:`lb.service.Swappable`), however many reloads came before."""
    worker: int
    seed: int
    kind: ClassVar[Kind] = Kind.HELLO


@dataclass(frozen=True, slots=True)
class Restore:
    """Parent to child, second: states, RTT averages, the pending runs to replay, the
    history beyond the states (when there is one) and the ejections in force."""

    states: tuple[tuple[str, str, str, Health], ...]
    rtt: tuple[tuple[str, str, float], ...]
    replay: tuple[tuple[ProbeResult, int], ...]
    """Each check's pending run: its last result and how many in a row (:class:`_Runs`)."""
    saved: Mapping[str, Any] | None = None
    """The state file's document, when health has a history beyond the states."""
    ejected: tuple[Ejection, ...] = ()
    """The endpoints passive health holds out now, as the parent decided."""
    kind: ClassVar[Kind] = Kind.RESTORE


@dataclass(frozen=True, slots=True)
class Probe:
    """Parent to child: one probe result the parent's engine applied."""

    result: ProbeResult
    kind: ClassVar[Kind] = Kind.PROBE


@dataclass(frozen=True, slots=True)
class ConfigSwap:
    """Parent to child: a configuration the parent's engine swapped in."""

    config: Config
    kind: ClassVar[Kind] = Kind.CONFIG


@dataclass(frozen=True, slots=True)
class Ejection:
    """Parent to child: passive health ejected an endpoint, or returned it (``state``)."""

    pool: str
    endpoint: str
    state: Saved
    """The parent's :meth:`~lb.core.passive.Ejector.state` right after the change."""
    kind: ClassVar[Kind] = Kind.EJECTION


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Parent to child: drain and exit."""

    kind: ClassVar[Kind] = Kind.SHUTDOWN


@dataclass(frozen=True, slots=True)
class Ready:
    """Child to parent, once listening."""

    pid: int
    listen: tuple[tuple[str, int], ...]
    kind: ClassVar[Kind] = Kind.READY


@dataclass(frozen=True, slots=True)
class Report:
    """Child to parent, about once a second (also the heartbeat) and once at exit.

    ``live``, ``clients`` and ``active`` are None in the last report, sent after serving
    stopped, which carries only the remaining traffic counters.
    """

    metrics: Mapping[str, Any]
    """A :func:`drain_traffic` report, merged by :func:`merge_traffic`."""
    live: LiveReport | None = None
    clients: int | None = None
    active: int | None = None
    kind: ClassVar[Kind] = Kind.REPORT


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Child to parent: how its attempts ended (``passive_health``), in order, batched.

    Each row is ``(pool, endpoint, outcome, count)``: ``count`` equal outcomes in a row at
    one endpoint (run-length encoded).
    """

    runs: tuple[tuple[str, str, Outcome, int], ...]
    kind: ClassVar[Kind] = Kind.OUTCOMES


Message = Hello | Restore | Probe | ConfigSwap | Ejection | Shutdown | Ready | Report | Outcomes


class ProtocolError(ValueError):
    """A pipe line that is not a message of this protocol (one line, fit for a log)."""


def encode(message: Message) -> bytes:
    """``message`` as one JSON line, ``{kind: payload}``, newline included.

    Probe times travel as CLOCK_MONOTONIC, which both processes share; trio's clocks do not
    (each has a random offset), so this and :func:`decode` run inside trio.
    """
    payload: object
    match message:
        case Hello():
            payload = {
                "config": _pickled(message.config),
                "secret": message.secret.hex(),
                "listen": [list(a) for a in message.listen],
                "listeners": _pickled(message.listeners),
                "opened_as": [list(a) for a in message.opened_as],
                "worker": message.worker,
                "seed": message.seed,
            }
        case Restore():
            restore: dict[str, object] = {
                "states": [[p, e, v, h.value] for p, e, v, h in message.states],
                "rtt": [list(item) for item in message.rtt],
                "replay": [[_probe_json(r), count] for r, count in message.replay],
            }
            if message.saved is not None:
                restore["saved"] = message.saved
            if message.ejected:
                restore["ejected"] = [_ejection_json(e) for e in message.ejected]
            payload = restore
        case Probe():
            payload = _probe_json(message.result)
        case ConfigSwap():
            payload = _pickled(message.config)
        case Ejection():
            payload = _ejection_json(message)
        case Shutdown():
            payload = True
        case Ready():
            payload = {"pid": message.pid, "listen": [list(a) for a in message.listen]}
        case Report():
            report: dict[str, object] = {"metrics": message.metrics}
            if message.live is not None:
                report["live"] = message.live
            if message.clients is not None:
                report["clients"] = message.clients
            if message.active is not None:
                report["active"] = message.active
            payload = report
        case Outcomes():
            payload = [
                [pool, endpoint, o.status, o.connect_failed, o.detail, count]
                for pool, endpoint, o, count in message.runs
            ]
    return json.dumps({message.kind.value: payload}, separators=(",", ":")).encode() + b"\n"


FROM_PARENT = frozenset(
    {Kind.HELLO, Kind.RESTORE, Kind.PROBE, Kind.CONFIG, Kind.EJECTION, Kind.SHUTDOWN}
)
"""What a child accepts (the parent's messages carry the pickled configuration)."""
FROM_CHILD = frozenset({Kind.READY, Kind.REPORT, Kind.OUTCOMES})
"""What the parent accepts: nothing a child sends is ever unpickled."""


def decode(line: bytes | str, accept: frozenset[Kind] = FROM_PARENT | FROM_CHILD) -> Message:
    """The message of one :func:`encode` line, of one of the kinds ``accept``.

    Raises:
        ProtocolError: for a line that is not JSON, not an object with exactly one key, of
            an unknown kind or one not accepted, or whose payload is malformed; the message
            says which.
    """
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("not a JSON line") from None
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ProtocolError("not an object with exactly one key (the message kind)")
    [(name, payload)] = obj.items()
    try:
        kind = Kind(name)
    except ValueError:
        raise ProtocolError(f"unknown message kind {name!r}") from None
    if kind not in accept:
        raise ProtocolError(f"a {kind} message is not expected here")
    try:
        return _DECODERS[kind](payload)
    except Exception as exc:  # whatever a malformed payload (or pickle) raises
        raise ProtocolError(f"malformed {kind} message: {type(exc).__name__}: {exc}") from None


def _decode_hello(obj: Any) -> Hello:
    listeners = tuple(_unpickled_listeners(obj["listeners"]))
    opened_as = tuple(_address(a) for a in obj["opened_as"])
    if len(opened_as) != len(listeners):  # the child pairs them up one by one
        raise ValueError(f"{len(opened_as)} opened_as for {len(listeners)} listeners")
    return Hello(
        config=_unpickled(obj["config"]),
        secret=bytes.fromhex(obj["secret"]),
        listen=tuple(_address(a) for a in obj["listen"]),
        listeners=listeners,
        opened_as=opened_as,
        worker=_int(obj["worker"]),
        seed=_int(obj["seed"]),
    )


def _decode_restore(obj: Any) -> Restore:
    saved = obj.get("saved")
    if saved is not None and not isinstance(saved, dict):
        raise TypeError("saved must be an object")
    return Restore(
        states=tuple((str(p), str(e), str(v), Health(h)) for p, e, v, h in obj["states"]),
        rtt=tuple((str(p), str(v), float(value)) for p, v, value in obj["rtt"]),
        replay=tuple((_probe_from(r), _int(count)) for r, count in obj["replay"]),
        saved=saved,
        ejected=tuple(_ejection_from(e) for e in obj.get("ejected", ())),
    )


def _decode_shutdown(obj: Any) -> Shutdown:
    if obj is not True:
        raise ValueError("the payload of shutdown is true")
    return Shutdown()


def _decode_ready(obj: Any) -> Ready:
    return Ready(pid=_int(obj["pid"]), listen=tuple(_address(a) for a in obj["listen"]))


def _decode_report(obj: Any) -> Report:
    metrics = obj["metrics"]
    if not isinstance(metrics, dict):
        raise TypeError("metrics must be an object")
    clients, active = obj.get("clients"), obj.get("active")
    return Report(
        metrics=metrics,
        live=_live_from(obj["live"]) if "live" in obj else None,
        clients=clients if isinstance(clients, int) and clients >= 0 else None,
        active=active if isinstance(active, int) and active >= 0 else None,
    )


def _decode_outcomes(obj: Any) -> Outcomes:
    if not isinstance(obj, list):
        raise TypeError("expected a list of [pool, endpoint, status, connect_failed, detail, n]")
    runs = []
    total = 0
    for row in obj:
        if not isinstance(row, list) or len(row) != 6:
            raise TypeError(
                f"expected [pool, endpoint, status, connect_failed, detail, n], got {row!r}"
            )
        pool, endpoint, status, connect_failed, detail, count = row
        if not isinstance(pool, str) or not isinstance(endpoint, str):
            raise TypeError(f"pool and endpoint are strings: {row!r}")
        if detail not in _DETAILS:
            raise ValueError(f"detail is empty or a failure's name: {row!r}")
        if not isinstance(connect_failed, bool):
            raise TypeError(f"connect_failed is true or false: {row!r}")
        if not 0 <= _int(status) <= 999 or not 1 <= _int(count) <= BATCH_SIZE:
            raise ValueError(f"status or count out of range: {row!r}")
        total += count
        if total > BATCH_SIZE:
            raise ValueError(f"more than {BATCH_SIZE} outcomes in one message")
        runs.append((pool, endpoint, Outcome(status, connect_failed, detail), count))
    return Outcomes(tuple(runs))


_DETAILS = frozenset({"", *(f.value for f in Failure)})
"""What :func:`~lb.core.passive.outcome_of` puts in ``Outcome.detail``."""


_DECODERS: dict[Kind, Callable[[Any], Message]] = {
    Kind.HELLO: _decode_hello,
    Kind.RESTORE: _decode_restore,
    Kind.PROBE: lambda obj: Probe(_probe_from(obj)),
    Kind.CONFIG: lambda obj: ConfigSwap(_unpickled(obj)),
    Kind.EJECTION: lambda obj: _ejection_from(obj),
    Kind.SHUTDOWN: _decode_shutdown,
    Kind.READY: _decode_ready,
    Kind.REPORT: _decode_report,
    Kind.OUTCOMES: _decode_outcomes,
}


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _address(value: object) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"expected [host, port], got {value!r}")
    return str(value[0]), _int(value[1])


def _pickled(obj: Config | Sequence[Listener]) -> str:
    # Pickle between a parent and the child it started, same code and same user: the
    # child gets exactly the Config the parent applied.  Never used on anything else.
    return base64.b64encode(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).decode()


def _unpickled(text: str) -> Config:
    config = pickle.loads(base64.b64decode(text))
    if not isinstance(config, Config):
        raise TypeError(f"expected a Config, got {type(config).__name__}")
    return config


def _unpickled_listeners(text: str) -> list[Listener]:
    listeners = pickle.loads(base64.b64decode(text))
    if not isinstance(listeners, list | tuple) or not all(
        isinstance(item, Listener) for item in listeners
    ):
        raise TypeError("expected a list of Listener")
    return list(listeners)


def _wire_offset() -> float:
    """What to add to a trio time to send it as CLOCK_MONOTONIC, which both processes share
    (trio's clocks do not: each has a random offset); subtract it from a received one.  One
    offset per message, so that the times in it keep their differences exactly."""
    return time.monotonic() - trio.current_time()


def _probe_json(result: ProbeResult) -> dict[str, Any]:
    return {
        "pool": result.pool,
        "endpoint": result.endpoint,
        "vantage": result.vantage,
        "at": result.at + _wire_offset(),
        "ok": result.ok,
        "reason": result.reason,
        "status": result.status,
        "rtt": result.rtt,
        "member": result.member,
    }


def _probe_from(obj: Mapping[str, Any]) -> ProbeResult:
    return ProbeResult(
        pool=str(obj["pool"]),
        endpoint=str(obj["endpoint"]),
        vantage=str(obj["vantage"]),
        at=float(obj["at"]) - _wire_offset(),
        ok=bool(obj["ok"]),
        reason=str(obj["reason"]),
        status=None if obj["status"] is None else int(obj["status"]),
        rtt=None if obj["rtt"] is None else float(obj["rtt"]),
        member=str(obj.get("member", "")),
    )


def _ejection_json(message: Ejection) -> dict[str, Any]:
    # Times travel as CLOCK_MONOTONIC (see encode), shifted by one offset read once, so that
    # the ejection's length arrives as it left.
    state, offset = message.state, _wire_offset()
    returned = None if state.returned_at is None else state.returned_at + offset
    return {
        "pool": message.pool,
        "endpoint": message.endpoint,
        "ejected": state.ejected,
        "since": state.since + offset,
        "until": state.until + offset,
        "ejections": state.ejections,
        "returned_at": returned,
        "reason": state.reason,
    }


def _ejection_from(obj: Mapping[str, Any]) -> Ejection:
    ejected, returned = obj["ejected"], obj["returned_at"]
    if not isinstance(ejected, bool):
        raise TypeError(f"ejected is true or false, got {ejected!r}")
    offset = _wire_offset()
    state = Saved(
        ejected=ejected,
        since=float(obj["since"]) - offset,
        until=float(obj["until"]) - offset,
        ejections=_int(obj["ejections"]),
        returned_at=None if returned is None else float(returned) - offset,
        reason=str(obj["reason"]),
    )
    return Ejection(str(obj["pool"]), str(obj["endpoint"]), state)


def _live_from(obj: Any) -> LiveReport:
    """A child's :data:`~lb.engine.LiveReport`, checked (malformed parts are dropped)."""
    out: LiveReport = {}
    if isinstance(obj, dict):
        for kind in ("in_flight", "connections"):
            counts = obj.get(kind)
            if isinstance(counts, dict):
                out[kind] = {str(k): n for k, n in counts.items() if isinstance(n, int) and n > 0}
    return out


def drain_traffic(metrics: Metrics) -> dict[str, list[list[Any]]]:
    """Take every counter and histogram gathered so far out of ``metrics`` (child side).

    Every one of :attr:`Metrics.events <lb.metrics.Metrics.events>`, keyed by metric name:
    the same table the exposition reads, so a counter added there is reported without a
    change here.  The child's :class:`Metrics` is never scraped, so its values are moved out
    (and reset) rather than diffed: a report costs O(label sets), not O(requests).
    """
    out: dict[str, list[list[Any]]] = {}
    for name, store in metrics.events.items():
        taken = store.take()
        if taken:
            out[name] = taken
    if metrics.websockets_open:  # net opens minus closes since the last report
        opened, metrics.websockets_open = metrics.websockets_open, {}
        out["websockets_open"] = [[[lb], n] for lb, n in opened.items() if n]
    return out


def merge_traffic(metrics: Metrics, report: Mapping[str, Any]) -> None:
    """Add a child's :func:`drain_traffic` report to the parent's ``metrics``."""
    for key, delta in report.get("websockets_open", ()):
        name = str(key[0]) if isinstance(key, list) and key else ""
        if isinstance(delta, int):
            metrics.websockets_open[name] = metrics.websockets_open.get(name, 0) + delta
    for name, store in metrics.events.items():
        store.merge(report.get(name, ()))


# --------------------------------------------------------------------------- parent side


class _Runs:
    """The pending run of each check: the last result and how many in a row had its ``ok``.

    A :class:`~lb.core.health.Check` is fully described by its state and the run of
    results since its last transition that disagree with it (a run that agrees changes
    nothing; one that disagrees is shorter than the threshold, else it would have turned
    the state).  That run is the trailing run of the result stream when its polarity
    differs from the state, or any trailing run while the state is unknown.  So a new
    child gets the states via ``restore`` plus this run replayed, without this module
    knowing any threshold: it only counts equal results in a row.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[str, str, str], tuple[ProbeResult, int]] = {}

    def observe(self, result: ProbeResult) -> None:
        key = (result.pool, result.endpoint, result.vantage)
        prev = self.last.get(key)
        count = min(prev[1] + 1, MAX_RUN) if prev and prev[0].ok == result.ok else 1
        self.last[key] = (result, count)

    def forget_unknown(self, engine: Engine) -> None:
        """After a reload: checks a reload recreated are unknown with no run yet.

        Unknown checks that were kept lose their pending run here, so a child started
        later may need that many more results than the parent: late, never early.
        """
        for pool in engine.book.snapshot().pools.values():
            for ep in pool.endpoints:
                for vantage, health in ep.vantage_health.items():
                    if health is Health.UNKNOWN:
                        self.last.pop((pool.name, ep.name, vantage), None)
        live = {(t.pool, t.endpoint) for t in engine.targets()}
        for key in [k for k in self.last if (k[0], k[1]) not in live]:
            del self.last[key]

    def restore_message(self, engine: Engine) -> Restore:
        snapshot = engine.book.snapshot()
        states: list[tuple[str, str, str, Health]] = []
        replay: list[tuple[ProbeResult, int]] = []
        rtt: list[tuple[str, str, float]] = []
        for pool in snapshot.pools.values():
            rtt.extend((pool.name, vantage, value) for vantage, value in pool.rtt.items())
            for ep in pool.endpoints:
                for vantage, health in ep.vantage_health.items():
                    states.append((pool.name, ep.name, vantage, health))
                    run = self.last.get((pool.name, ep.name, vantage))
                    if run is None:
                        continue
                    result, count = run
                    agrees = health is not Health.UNKNOWN and (
                        (health is Health.HEALTHY) == result.ok
                    )
                    if not agrees:
                        # rtt=None: the averages travel in "rtt", do not count them twice
                        replay.append((replace(result, rtt=None), count))
        saved = None
        if _extended(engine.config):
            # Flap-damping penalties and recovery times (slow_start) have a history the
            # states do not carry: they travel as the state file's document.
            saved = engine.save_state(now=trio.current_time(), wall=time.time())
        ejected = tuple(
            Ejection(pool.name, ep.name, ejector.state())
            for pool in snapshot.pools.values()
            for ep in pool.endpoints
            if (ejector := engine.book.passive(pool.name, ep.name)) is not None and ejector.ejected
        )
        return Restore(tuple(states), tuple(rtt), tuple(replay), saved, ejected)


@dataclass(slots=True)
class _Slot:
    """One child worker's place: its queue while it runs, its process and backoff."""

    index: int
    queue: trio.MemorySendChannel[bytes] | None = None
    process: trio.Process | None = None
    ready: trio.Event | None = None
    backoff: float = BACKOFF_FIRST
    last_seen: float | None = None
    """trio time of the child's last report; None until its first (``ready``)."""


class Workers:
    """Starts, feeds, restarts and stops the child proxy workers of one parent.

    Args:
        engine: the parent's engine (the one the scheduler feeds).
        metrics: the parent's metrics; children's traffic counters are added to it.
        count: child processes to run (``engine.workers - 1``).
        command: argv that starts one child (``tunnel-lb run --worker FILE...``).
        seeds: gives each started child a steering seed.
        listen: the listener specs the parent's sockets are bound with; the configuration
            in force when this object is made by default.  Children always get these (with
            the bound addresses), never a reloaded ``engine.listen``: listeners are only
            rebound by a restart.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        count: int,
        command: Sequence[str],
        seeds: Callable[[], int],
        listen: Sequence[Listener] | None = None,
    ) -> None:
        self.engine = engine
        self.listen: list[Listener] = list(
            engine.config.engine.listen if listen is None else listen
        )
        """The listener specs as bound at start; with :attr:`addresses` after ``run``."""
        self.opened_as = configured_addresses(self.listen)
        """The configured (address, port) of each listener, port 0 unresolved."""
        self.metrics = metrics
        self.command = list(command)
        self.seeds = seeds
        self.slots = [_Slot(i) for i in range(1, count + 1)]
        self.addresses: list[tuple[str, int]] = []
        self.stopping = trio.Event()
        """Set once the parent drains: children are told to stop and not restarted."""
        self._runs = _Runs()
        self._done = trio.Event()
        engine.observers.probes.append(self._on_probe)
        engine.observers.config.append(self._on_config)
        engine.observers.health.append(self._on_health)

    # ------------------------------------------------------------------ engine observers

    def _on_probe(self, result: ProbeResult) -> None:
        self._runs.observe(result)
        self._broadcast(encode(Probe(result)))

    def _on_config(self, config: Config) -> None:
        self._runs.forget_unknown(self.engine)
        self._broadcast(encode(ConfigSwap(config)))

    def _on_health(self, event: HealthEvent) -> None:
        """Passive health's ejections and returns, decided here only, reach every child
        (after the probe result that caused a return: probe observers are called first)."""
        if event.vantage != PASSIVE:
            return
        ejector = self.engine.book.passive(event.pool, event.endpoint)
        if ejector is not None:
            self._broadcast(encode(Ejection(event.pool, event.endpoint, ejector.state())))

    def count_outcomes(self, message: Outcomes) -> None:
        """Count a child's attempt outcomes as if this process's proxy had seen them now."""
        now = trio.current_time()
        for pool, endpoint, outcome, n in message.runs:
            for _ in range(n):
                self.engine.count(pool, endpoint, outcome, now=now)

    def _broadcast(self, line: bytes) -> None:
        for slot in self.slots:
            self._send(slot, line)

    def _send(self, slot: _Slot, line: bytes) -> None:
        if slot.queue is None:
            return
        try:
            slot.queue.send_nowait(line)
        except trio.WouldBlock:
            logs.event("worker_stuck", logging.ERROR, worker=slot.index, queued=QUEUE_LIMIT)
            slot.queue = None  # it gets a fresh restore when it starts again
            if slot.process is not None:
                slot.process.kill()
        except trio.ClosedResourceError:
            slot.queue = None

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self,
        addresses: Sequence[tuple[str, int]],
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the children running until ``shutdown``; ``started`` once they are ready.

        Args:
            addresses: the parent's bound listen addresses, which the children share.
            shutdown: set when the parent drains; the children are told to drain too.
        """
        self.addresses = list(addresses)
        self.listen = [
            replace(spec, address=host, port=int(port))
            for spec, (host, port) in zip(self.listen, self.addresses, strict=True)
        ]
        try:
            async with trio.open_nursery() as nursery:
                for slot in self.slots:
                    slot.ready = trio.Event()
                    nursery.start_soon(self._keep, slot)
                with trio.move_on_after(READY_TIMEOUT):
                    for slot in self.slots:
                        assert slot.ready is not None
                        await slot.ready.wait()
                task_status.started()
                await shutdown.wait()
                self.stopping.set()
                self._broadcast(encode(Shutdown()))
                for slot in self.slots:
                    if slot.queue is not None:
                        slot.queue.close()
                nursery.cancel_scope.deadline = (
                    trio.current_time() + self.engine.config.engine.drain_timeout + STOP_GRACE
                )
        finally:
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    logs.event("worker_killed", logging.WARNING, worker=slot.index)
                    await reap(slot.process)
            self._done.set()

    async def stopped(self) -> None:
        """Wait until every child has exited (after ``shutdown`` was set)."""
        await self._done.wait()

    async def _keep(self, slot: _Slot) -> None:
        """Run one child; start it again after a bounded backoff when it dies."""
        while not self.stopping.is_set():
            started = trio.current_time()
            code = await self._run_one(slot)
            if self.stopping.is_set():
                if code != 0:
                    logs.event("worker_exited", logging.WARNING, worker=slot.index, code=code)
                return
            logs.event(
                "worker_died", logging.ERROR, worker=slot.index, code=code, restart=slot.backoff
            )
            if trio.current_time() - started > STABLE:
                slot.backoff = BACKOFF_FIRST
            await trio.sleep(slot.backoff)
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    async def _run_one(self, slot: _Slot) -> int | None:
        send, receive = trio.open_memory_channel[bytes](QUEUE_LIMIT)
        # Queue the hello and the restore before any later probe result: no await between
        # reading the engine and registering the queue, so nothing is missed or doubled.
        hello = Hello(
            config=self.engine.config,
            secret=self.engine.secret,
            listen=tuple(self.addresses),
            listeners=tuple(self.listen),
            opened_as=tuple(self.opened_as),
            worker=slot.index,
            seed=self.seeds(),
        )
        send.send_nowait(encode(hello))
        send.send_nowait(encode(self._runs.restore_message(self.engine)))
        slot.queue = send
        try:
            process = await trio.lowlevel.open_process(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:
            slot.queue = None
            logs.event("worker_spawn_failed", logging.ERROR, worker=slot.index, error=str(exc))
            return None
        slot.process = process
        slot.last_seen = None
        logs.event("worker_started", worker=slot.index, pid=process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, process, receive)
                nursery.start_soon(self._read, slot, process)
                nursery.start_soon(self._watch, slot, process)
                code = await process.wait()
                nursery.cancel_scope.deadline = trio.current_time() + 1.0  # finish reading
        finally:
            slot.queue = None
            self.engine.reported.pop(slot.index, None)  # its requests ended with it
            self.metrics.worker_client_connections.pop(slot.index, None)  # its clients too
            self.metrics.worker_requests_active.pop(slot.index, None)  # and their requests
            send.close()
            if process.returncode is None:
                await reap(process)
        return code

    async def _write(
        self, process: trio.Process, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        """Copy queued messages to the child's stdin, batching what is already queued."""
        assert process.stdin is not None
        stdin = process.stdin
        try:
            async for first in receive:
                batch = [first]
                while len(batch) < 256:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await stdin.send_all(b"".join(batch))
            await stdin.aclose()  # the queue was closed: shutdown was the last message
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the child exited; _keep restarts it

    async def _watch(self, slot: _Slot, process: trio.Process) -> None:
        """Kill a child that stopped reporting (SIGSTOP, a hung loop): the kernel keeps
        handing it connections that nobody accepts.  :meth:`_keep` starts it again.

        A child reports at least every :data:`FLUSH_INTERVAL` once ready; before that it
        gets :data:`READY_TIMEOUT` to start.  Not while stopping: draining is bounded by
        the stop deadline of :meth:`run`.
        """
        started = trio.current_time()
        while process.returncode is None:
            await trio.sleep(min(1.0, SILENT_TIMEOUT / 4))
            if self.stopping.is_set():
                return
            now = trio.current_time()
            if slot.last_seen is None:
                silent, limit = now - started, max(READY_TIMEOUT, SILENT_TIMEOUT)
            else:
                silent, limit = now - slot.last_seen, SILENT_TIMEOUT
            if silent > limit:
                logs.event(
                    "worker_silent",
                    logging.ERROR,
                    worker=slot.index,
                    pid=process.pid,
                    silent=round(silent, 1),
                )
                process.kill()
                return

    async def _read(self, slot: _Slot, process: trio.Process) -> None:
        """Handle the child's reports until its stdout closes."""
        assert process.stdout is not None
        async for message in _messages(process.stdout, FROM_CHILD):
            slot.last_seen = trio.current_time()
            match message:
                case Report():
                    merge_traffic(self.metrics, message.metrics)
                    self.engine.reported[slot.index] = message.live or {}
                    if message.clients is not None:
                        self.metrics.worker_client_connections[slot.index] = message.clients
                    if message.active is not None:
                        self.metrics.worker_requests_active[slot.index] = message.active
                case Outcomes():
                    self.count_outcomes(message)
                case Ready():
                    listen = [list(a) for a in message.listen]
                    logs.event("worker_ready", worker=slot.index, pid=message.pid, listen=listen)
                    if slot.ready is not None:
                        slot.ready.set()


async def _messages(
    stream: trio.abc.ReceiveStream, accept: frozenset[Kind]
) -> AsyncIterator[Message]:
    """The messages of ``stream``, one per line, until its end; bad lines are logged and
    skipped."""
    buffer = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            try:
                message = decode(raw, accept)
            except ProtocolError as exc:
                line = raw[:200].decode("latin-1")
                logs.event("worker_bad_message", logging.ERROR, error=str(exc), line=line)
                continue
            yield message


# --------------------------------------------------------------------------- child side


class _OutcomeBatch:
    """A child's attempt outcomes not yet sent to the parent, run-length encoded in order.

    :meth:`add` is the child engine's outcome sink (synchronous, called by the proxy after
    every attempt); :meth:`run` sends a batch :data:`BATCH_WINDOW` after its first outcome,
    or at once when :data:`BATCH_SIZE` are waiting, as soon as the pipe takes it: a burst of
    failures costs one pipe message, and an ejection is decided a window plus a pipe hop
    late.  A message carries at most :data:`BATCH_SIZE` outcomes; while the pipe is blocked
    at most :data:`MAX_PENDING` wait, later ones are dropped and counted in ``dropped``.
    """

    def __init__(self) -> None:
        self.runs: deque[tuple[str, str, Outcome, int]] = deque()
        self.size = 0
        self.dropped = 0
        self.queued = trio.Event()
        self.full = trio.Event()

    def add(self, pool: str, endpoint: str, outcome: Outcome) -> None:
        if self.size >= MAX_PENDING:
            self.dropped += 1
            return
        last = self.runs[-1] if self.runs else None
        if last is not None and last[:3] == (pool, endpoint, outcome) and last[3] < BATCH_SIZE:
            self.runs[-1] = (pool, endpoint, outcome, last[3] + 1)
        else:
            self.runs.append((pool, endpoint, outcome, 1))
        self.size += 1
        self.queued.set()
        if self.size >= BATCH_SIZE:
            self.full.set()

    def take(self) -> Outcomes | None:
        """The oldest waiting outcomes, at most :data:`BATCH_SIZE`, as one message (None when
        there are none); what is left stays queued."""
        if not self.runs:
            return None
        taken: list[tuple[str, str, Outcome, int]] = []
        room = BATCH_SIZE
        while self.runs and room:
            pool, endpoint, outcome, n = self.runs.popleft()
            if n > room:
                self.runs.appendleft((pool, endpoint, outcome, n - room))
                n = room
            taken.append((pool, endpoint, outcome, n))
            room -= n
        self.size -= BATCH_SIZE - room
        if not self.runs:
            self.queued = trio.Event()
        if self.size < BATCH_SIZE:
            self.full = trio.Event()
        return Outcomes(tuple(taken))

    async def run(self, send: Callable[[Outcomes], Awaitable[None]]) -> None:
        while True:
            await self.queued.wait()
            with trio.move_on_after(BATCH_WINDOW):
                await self.full.wait()
            message = self.take()
            if message is not None:
                await send(message)
            if self.dropped:
                logs.event("worker_outcomes_dropped", logging.WARNING, outcomes=self.dropped)
                self.dropped = 0


@dataclass(slots=True)
class ChildContext:
    """What a child needs to start serving, from the parent's ``hello``."""

    engine: Engine
    listen: list[Listener]
    opened_as: list[tuple[str, int]]
    """The configured (address, port) of each of :attr:`listen` (:attr:`Hello.opened_as`)."""
    worker: int
    seed: int


async def run_child(
    serve: Callable[..., Awaitable[None]],
    metrics: Metrics,
) -> None:
    """The child's control loop around ``serve`` (the proxy), on stdin/stdout pipes.

    ``serve(ctx, shutdown, task_status=...)`` must listen, call ``task_status.started()``
    and return once ``shutdown`` is set and it has drained.  ``metrics`` collects its
    traffic counters, reported to the parent every :data:`FLUSH_INTERVAL`.

    The pipes are taken off fds 0 and 1 first, and fd 1 is pointed at stderr, so that a
    stray ``print`` can never corrupt the protocol.
    """
    control_in = trio.lowlevel.FdStream(os.dup(0))
    control_out = trio.lowlevel.FdStream(os.dup(1))
    os.dup2(2, 1)
    shutdown = trio.Event()
    messages = _messages(control_in, FROM_PARENT)
    hello = await anext(messages, None)
    if not isinstance(hello, Hello):
        raise RuntimeError("the first message from the parent must be hello")
    # Passive health is decided by the parent alone (it sees every worker's outcomes): this
    # engine sends its outcomes there and follows the parent's ejections.
    outcomes = _OutcomeBatch()
    engine = Engine(
        hello.config, now=trio.current_time(), secret=hello.secret, outcomes=outcomes.add
    )
    # The parent's listeners as bound at its start (port 0 resolved): not the listeners of
    # ``config``, which a reload may have changed without rebinding anything.
    ctx = ChildContext(
        engine, list(hello.listeners), list(hello.opened_as), hello.worker, hello.seed
    )
    send_lock = trio.Lock()

    async def report(message: Ready | Report | Outcomes) -> None:
        # Shielded: a line cut in half by a cancellation would corrupt the next one.
        with trio.CancelScope(shield=True):
            async with send_lock:
                try:
                    await control_out.send_all(encode(message))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    shutdown.set()  # the parent is gone

    async def control() -> None:
        async for message in messages:
            if not _apply(engine, message):
                break
        if not shutdown.is_set():
            logs.event("worker_draining", worker=ctx.worker)
        shutdown.set()  # shutdown message, or end of file: the parent is gone

    async def flush() -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            # Something every interval, traffic or not: the parent kills a silent child.
            await report(
                Report(
                    metrics=drain_traffic(metrics),
                    live=live_report(engine.live),
                    clients=metrics.client_connections,
                    active=metrics.requests_active,
                )
            )

    def on_signal(signum: int) -> None:
        # SIGHUP is ignored (the parent forwards reloads); SIGTERM/SIGINT drain, which
        # also covers a Ctrl-C sent to the whole process group.
        if signum in STOP_SIGNALS:
            shutdown.set()

    served = trio.Event()

    async def serving(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(ctx, shutdown, task_status=task_status)
        finally:
            served.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(receive_signals, on_signal)  # a signal recorded earlier too
        nursery.start_soon(control)
        await nursery.start(serving)
        await report(Ready(pid=os.getpid(), listen=hello.listen))
        nursery.start_soon(flush)
        nursery.start_soon(outcomes.run, report)
        await served.wait()  # shutdown was set and the proxy has drained
        nursery.cancel_scope.cancel()
    while (last := outcomes.take()) is not None:
        await report(last)
    traffic = drain_traffic(metrics)
    if traffic:
        await report(Report(metrics=traffic))
    await control_out.aclose()


def _apply(engine: Engine, message: Message) -> bool:
    """Apply one of the parent's messages to the child's ``engine``; False for shutdown."""
    match message:
        case Probe():
            engine.apply(message.result)
        case ConfigSwap():
            engine.reconfigure(message.config, now=trio.current_time())
        case Ejection():
            engine.follow(message.pool, message.endpoint, message.state)
        case Restore():
            _restore(engine, message)
        case Shutdown():
            return False
        case _:
            logs.event("worker_bad_message", logging.ERROR, error=f"unexpected {message.kind}")
    return True


def _extended(config: Config) -> bool:
    """Whether health has a history beyond the states (flap damping, slow start)."""
    return config.engine.flap_damping is not None or any(
        p.slow_start or any(o.slow_start for o in p.origins) for p in config.pools
    )


def _restore(engine: Engine, message: Restore) -> None:
    states = {(p, e, v): health for p, e, v, health in message.states}
    rtt = {(p, v): value for p, v, value in message.rtt}
    engine.book.restore(states, rtt)
    if message.saved is not None:
        engine.load_state(
            message.saved, now=trio.current_time(), wall=time.time(), max_age=float("inf")
        )
    for ejection in message.ejected:
        engine.follow(ejection.pool, ejection.endpoint, ejection.state)
    for result, count in message.replay:
        for _ in range(count):
            engine.apply(result)
