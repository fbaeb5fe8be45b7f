"""Driving a real stack: the scenario's users, open-loop, and its timeline, in real time.

Traffic is open-loop and paced like the simulator's: per data center and per tick, the
requests due by the tick's end (the integral of the rate) start evenly spread over the tick,
each in its own task, whether or not earlier ones have been answered.  A request carries the
scenario's Host and path, its client's address (``CF-Connecting-IP``), its entry data center
(``CF-Ray: <hex>-<DC>``, believed because the LB trusts loopback), an ``X-Request-Id``, the
client's ``__cflb`` cookie when it is a cookie-keeping client, and its affinity headers.

The timeline runs beside it: network events become a ``POST /faults`` to the endpoint's
stand-in (:mod:`lb.connector.faults`), or to the one replica's they name (:func:`_controls`);
a fault of a whole tunnel held by its edge stand-in is handed to the replicas' connectors
once an event changes only some of them, and a latency of the whole tunnel replaces the
latency the connectors hold (:func:`handovers`), as the simulator keeps one condition list
per replica;
``disable`` / ``enable`` / ``weight`` rewrite the LB's configuration file and ``POST /reload``
it, as an operator would.

Why the faults are dated
========================

A fault sent at its time takes effect when its POST arrives, which on a busy machine is
seconds later; a flap would then run out of the simulator's phase for good.  So each fault
POST carries its instant on the clock every process shares (``at``, and a flap its own
start, ``since``) and is sent ahead: the stand-ins enact it at that instant
(:mod:`lb.connector.faults`).  What is still late (a POST that arrives after its time, a
reload) is measured, with how far behind its schedule the driver itself ran, and a run too
late to compare says so (:attr:`lb.rehearse.Rehearsal.inconclusive`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from lb.rehearse.client import ClientError, Pool
from lb.rehearse.stack import Stack
from lb.rehearse.stalls import Samples, spent
from lb.sim.network import conditions_after
from lb.sim.scenario import ORIGIN, ConfigEvent, MemberEvent, NetEvent, Scenario, Traffic
from lb.sim.spec import TimelineAction

__all__ = [
    "CONNECTIONS",
    "Driven",
    "Handover",
    "Sent",
    "drive",
    "handovers",
    "unrehearsable",
]

CONNECTIONS = 256
"""The most connections the traffic keeps open to the LB at once (more requests wait)."""


@dataclass(slots=True)
class Sent:
    """One request as the driver saw it."""

    at: float
    """Seconds after the start when it was sent."""
    datacenter: str
    status: int = 0
    """The status the client got; 0 when the connection failed or timed out."""


def unrehearsable(sc: Scenario) -> list[str]:
    """Why parts of ``sc`` cannot be made real on one machine (empty: it can be rehearsed)."""
    out: list[str] = []
    unseen: list[str] = []
    for e in sc.events:
        what = _named(e)
        if e.scope:
            out.append(
                f"{what}: seen_from (a fault seen from some places only) cannot be made "
                "real on one machine: every process here shares one loopback interface"
            )
        elif _how(e) == TimelineAction.UNREACHABLE and e.layer != ORIGIN:
            out.append(f"{what}: unreachable needs a route that fails, not one loopback")
        elif _edged(sc, e) and not _whole(e) and _hangs(e):
            out.append(
                f"{what}: {_how(e)} on one replica would not be avoided: the edge stand-in "
                "learns that a replica is gone only from a refused connection (Cloudflare's "
                "edge, from the tunnel connection's heartbeats)"
            )
        elif e.layer != ORIGIN and not (_edged(sc, e) and not _whole(e)) and _unseen(e):
            unseen.append(what)  # no edge stand-in to pass over the stand-in it fails
    out += _unhandable(sc)
    out += [
        f"network.keep_alive of {address}: the edge stand-in in front of its replicas keeps "
        "its own connections to them, so their closes do not reach the LB"
        for address in sorted(sc.keep_alive)
        if len(sc.replicas.get(address, ())) > 1
    ]
    edged = {r.label for rs in sc.replicas.values() if len(rs) > 1 for r in rs}
    out += [
        f"expect {x.name!r}: replica {x.replica} is its tunnel's only one, so no edge "
        "stand-in counts its traffic"
        for x in sc.expectations
        if x.replica and x.replica not in edged
    ]
    out += [
        f"traffic {t.datacenter}: long-lived sessions (sessions:) are not driven by a "
        "rehearsal, which sends requests only"
        for t in sc.traffic
        if t.sessions_rate
    ]
    if sc.members:
        names = ", ".join(m.name for m in sc.members)
        out.append(
            f"cluster ({names}): a rehearsal runs one `tunnel-lb run`, not a cluster of "
            "replicas sharing a store"
        )
    out += [
        f"{_named(m)}: member {m.member!r} cannot be "
        f"{'partitioned from the store' if m.action == 'partition' else m.action + 'ed'} "
        "without a cluster"
        for m in sc.member_events
    ]
    if unseen:
        out += [
            f"expect {x.name!r}: probes are counted as the stand-ins receive them, and "
            f"{', '.join(unseen)} keeps probe attempts from reaching a stand-in"
            for x in sc.expectations
            if x.kind == "probes"
        ]
    if any(m.type == "tcp" for m in sc.config.monitors):
        out += [
            f"expect {x.name!r}: probes are counted as HTTP requests at the stand-ins, and "
            "a tcp monitor sends none"
            for x in sc.expectations
            if x.kind == "probes"
        ]
    return out


def _edged(sc: Scenario, e: NetEvent) -> bool:
    """Whether ``e`` is an edge event of a tunnel that has an edge stand-in."""
    return len(sc.replicas.get(e.address, ())) > 1 and e.layer != ORIGIN and not e.scope


def _whole(e: NetEvent) -> bool:
    """Whether ``e`` is an edge event of its whole address: the edge stand-in's own.

    Said by the target's kind (:attr:`lb.sim.scenario.NetEvent.wide`: ``tunnel:`` or
    ``endpoint:``, every replica; the scenario loader refuses a ``tunnel:`` naming one), as
    the simulator says it, never by how many replicas the event names: a ``replica:`` of a
    tunnel with one replica names every replica and is still that replica's."""
    return e.wide and e.layer != ORIGIN


@dataclass(frozen=True, slots=True)
class Handover:
    """What :func:`drive` does around one edge event of a tunnel with an edge stand-in,
    besides sending the event where :func:`_controls` says."""

    held: tuple[NetEvent, ...] = ()
    """An event of some replicas: the tunnel-wide conditions the edge stand-in holds until
    then, set on the connectors of the replicas the event does not recover and cleared at
    the edge (:func:`_posts` says in which order)."""
    slow: tuple[tuple[str, NetEvent], ...] = ()
    """A tunnel-wide ``latency``: the replicas whose connectors hold a latency (by name,
    with the event that set it: one of that replica, or a hand-over's).  The new one
    replaces it in the simulator, so :func:`_posts` sets these connectors' to 0 before the
    edge stand-in takes the new one.  A tunnel-wide fault moves nothing (one the edge
    answers alone, which would leave such a latency unpaid, is refused by
    :func:`_unhandable`)."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One edge event of a tunnel with an edge stand-in, and what the stand-ins hold once
    :func:`drive` has applied it."""

    event: NetEvent
    plan: Handover
    edge: tuple[NetEvent, ...]
    """The conditions the edge stand-in holds (those of the whole tunnel)."""
    connectors: dict[str, tuple[NetEvent, ...]]
    """Replica name -> the conditions its connector holds."""


def _steps(sc: Scenario) -> list[_Step]:
    """Every edge event of a tunnel with an edge stand-in, in timeline order, with its
    hand-over and the conditions each stand-in holds after it.

    Each stand-in's conditions follow the simulator's own rule for one replica
    (:func:`lb.sim.network.conditions_after`), applied to exactly what :func:`_posts` sends
    it, so the rehearsal's state is derived the way the simulator derives its own; what the
    two cannot make identical is refused by :func:`_unhandable`.
    """
    edges: dict[str, list[NetEvent]] = {}
    held_by: dict[str, dict[str, list[NetEvent]]] = {}
    out: list[_Step] = []
    for e in sorted(sc.events, key=lambda e: (e.at, e.index)):
        if not _edged(sc, e):
            continue
        every = sorted(r.name for r in sc.replicas[e.address])
        edge = edges.get(e.address, [])
        conns = held_by.setdefault(e.address, {n: [] for n in every})
        plan = Handover()
        if _whole(e):
            if e.action == TimelineAction.RECOVER:  # _controls sends it to every stand-in
                conns = {n: [] for n in every}
            elif e.action == TimelineAction.LATENCY:
                slow = tuple((n, c) for n in every for c in conns[n] if _latency(c))
                plan = Handover(slow=slow)
                conns = {n: [c for c in cs if not _latency(c)] for n, cs in conns.items()}
            edge = conditions_after(edge, e)
        else:
            if edge:
                plan = Handover(held=tuple(edge))
                cleared = set(e.replicas) if e.action == TimelineAction.RECOVER else set()
                for n in every:
                    for c in edge if n not in cleared else ():
                        conns[n] = conditions_after(conns[n], c)
                edge = []
            for n in e.replicas:
                conns[n] = conditions_after(conns[n], e)
        edges[e.address], held_by[e.address] = edge, conns
        frozen = {n: tuple(cs) for n, cs in conns.items()}
        out.append(_Step(e, plan, tuple(edge), frozen))
    return out


def handovers(sc: Scenario) -> dict[int, Handover]:
    """Edge events of tunnels with an edge stand-in (by ``index``) -> what moves between the
    edge stand-in and the replicas' connectors around them (events with nothing to move are
    left out).

    The simulator keeps the conditions of each replica: a fault of the whole tunnel is one
    condition per replica, and a later event of one replica (a ``recover`` included) changes
    that replica's only; a later ``latency`` of the whole tunnel replaces each replica's.
    The edge stand-in holds a tunnel-wide condition once, in front of every replica, and
    the connectors their own, and latencies held by both add up.  So before an event of
    some replicas :func:`drive` hands what the edge holds to the replicas' connectors (the
    replicas the event clears excepted) and clears the edge's (:attr:`Handover.held`); a
    tunnel-wide ``latency`` clears the latency the connectors hold
    (:attr:`Handover.slow`).  Either way no replica's latency is held by both for longer
    than the POSTs of one step.
    """
    return {s.event.index: s.plan for s in _steps(sc) if s.plan != Handover()}


def _unhandable(sc: Scenario) -> list[str]:
    """Why a step of :func:`_steps` cannot be made identical to the simulator."""
    out: list[str] = []
    labels = {(a, r.name): r.label or r.name for a, rs in sc.replicas.items() for r in rs}
    # A fault of the whole tunnel other than a flap is the edge stand-in's own answer, so
    # the faults the connectors hold (their own or handed over) are not reached while it
    # lasts, as the simulator's replaces each replica's; what it cannot hide is refused
    # below (a flap's up part, a connector's latency the edge's answer would skip).
    all_refusing: dict[str, bool] = {}
    kept: set[int] = set()  # edge flaps refused already for a connector's fault they show
    steps = _steps(sc)
    for step, end in zip(steps, _ends(steps, sc.duration), strict=True):
        e, plan = step.event, step.plan
        what = _named(e)
        out += [
            f"{what}: {_how(c)} of every replica ({_named(c)}) would then hold only the "
            "others, and the edge stand-in would not avoid them: it learns that a replica is "
            "gone only from a refused connection"
            for c in plan.held
            if _hangs(c)
        ]
        tunnel_fault = _whole(e) and e.action not in (
            TimelineAction.RECOVER,
            TimelineAction.LATENCY,
        )
        # The edge's flap lasts until a fault or a hand-over takes it away, a tunnel-wide
        # latency aside: each step it outlives checks its own span, once per flap.
        flap = next((c for c in step.edge if c.action == TimelineAction.FLAP), None)
        faulted = [
            (n, c)
            for n, cs in step.connectors.items()
            for c in cs
            if flap is not None
            and not _latency(c)
            and _meet(_down_parts(c, e.at, end), _up_parts(flap, e.at, end))
        ]
        if flap is not None and faulted and flap.index not in kept:
            kept.add(flap.index)
            own = ", ".join(f"{labels[e.address, n]} ({_named(c)})" for n, c in faulted)
            out.append(
                f"{_named(flap)}: the connector of {own} would keep that fault, where the "
                "simulator's flap of every replica replaces it (the replica answers in the "
                "flap's up part, when the edge stand-in forwards to that connector)"
            )
        elif (
            tunnel_fault
            and _how(e) in _ANSWERED
            and (latent := [(n, c) for n, c in _paid(sc, e, step) if _latency(c)])
        ):
            slow = ", ".join(f"{labels[e.address, n]} ({_named(c)})" for n, c in latent)
            out.append(
                f"{what}: the edge stand-in answers it itself, without reaching "
                f"a replica, so the latency held by the connector of {slow} would not be "
                "paid, where the simulator adds it to that replica's answer"
            )
        refusing = [
            (n, c)
            for n, cs in step.connectors.items()
            for c in cs
            if _how(c) == TimelineAction.REFUSE
        ]
        every = (
            len(refusing) == len(step.connectors)
            and all(_latency(c) for c in step.edge)
            and _together([c for _, c in refusing], e.at, end)
        )
        if every and not all_refusing.get(e.address, False):  # once, where it starts
            by = ", ".join(f"{labels[e.address, n]} ({_named(c)})" for n, c in refusing)
            flaps = any(c.action == TimelineAction.FLAP for _, c in refusing)
            when = "can then refuse at once" if flaps else "would then refuse"
            out.append(
                f"{what}: every replica's connector {when} ({by}), and the edge "
                "stand-in answers 530 when no replica takes a connection, where the "
                "simulator shows a refused one"
            )
        all_refusing[e.address] = every
    return out


def _paid(sc: Scenario, e: NetEvent, step: _Step) -> list[tuple[str, NetEvent]]:
    """The conditions of the connectors whose latency the simulator adds to an answer of a
    fault ``e`` of the whole tunnel: every replica's (each answers it), but for a ``down``
    only its first replica's (the simulator's 530, with every replica down, is the first
    one's answer)."""
    if _how(e) == TimelineAction.DOWN:
        first = sc.replicas[e.address][0].name
        return [(first, c) for c in step.connectors[first]]
    return [(n, c) for n, cs in step.connectors.items() for c in cs]


def _ends(steps: list[_Step], duration: float) -> list[float]:
    """When each step's state gives way: its tunnel's next step, or the scenario's end."""
    out = [duration] * len(steps)
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        if (j := last.get(step.event.address)) is not None:
            out[j] = step.event.at
        last[step.event.address] = i
    return out


def _together(conds: list[NetEvent], start: float, end: float) -> bool:
    """Whether every refusal of ``conds`` is in force at once somewhere in ``[start, end)``.

    A ``flap`` refuses in its down parts only (from its own time, on a connector as in the
    simulator): two flaps never down together leave the edge stand-in a replica to pass to.
    """
    spans = [(start, end)]
    for c in conds:
        spans = _meet(spans, _down_parts(c, start, end))
    return bool(spans)


def _meet(
    xs: list[tuple[float, float]], ys: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The overlaps of two sorted lists of disjoint spans (one pass over both)."""
    out: list[tuple[float, float]] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if lo < hi:
            out.append((lo, hi))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def _up_parts(c: NetEvent, start: float, end: float) -> list[tuple[float, float]]:
    """The spans of ``[start, end)`` in which ``c`` is not in force (a flap's up parts)."""
    out: list[tuple[float, float]] = []
    at = start
    for lo, hi in _down_parts(c, start, end):
        if at < lo:
            out.append((at, lo))
        at = hi
    return [*out, (at, end)] if at < end else out


def _down_parts(c: NetEvent, start: float, end: float) -> list[tuple[float, float]]:
    """The spans of ``[start, end)`` in which ``c`` is in force (all of it but a flap's
    up parts)."""
    if c.action != TimelineAction.FLAP:
        return [(start, end)]
    out: list[tuple[float, float]] = []
    k = max(0, math.floor((start - c.at) / c.period))
    while (at := c.at + k * c.period) < end:
        lo, hi = max(at, start), min(at + c.down_for, end)
        if lo < hi:
            out.append((lo, hi))
        k += 1
    return out


_ANSWERED = frozenset(
    {TimelineAction.STATUS, TimelineAction.DOWN, TimelineAction.RESET, TimelineAction.TRUNCATE}
)
"""Edge faults the edge stand-in answers itself, without forwarding to a replica."""


def _named(e: NetEvent | MemberEvent) -> str:
    """How a refusal names a timeline entry."""
    return e.label or f"{e.action} at {e.at:g}s"


def _latency(e: NetEvent) -> bool:
    """Whether a condition is a latency (which adds to a fault rather than replacing it)."""
    return e.action == TimelineAction.LATENCY


def _how(e: NetEvent) -> str:
    """The fault an event shows (a flap's ``how``)."""
    return e.how if e.action == TimelineAction.FLAP else e.action


def _hangs(e: NetEvent) -> bool:
    """Whether an edge fault leaves a replica's connection open but useless."""
    return _how(e) in (TimelineAction.BLACKHOLE, TimelineAction.DOWN)


def _unseen(e: NetEvent) -> bool:
    """Whether a fault keeps probe requests from reaching the stand-in (no connection, or
    a connection that never carries a request)."""
    return _how(e) in (TimelineAction.REFUSE, TimelineAction.BLACKHOLE)


def _client_headers(
    t: Traffic, c: int, index: int, affinity: tuple[str, ...]
) -> list[tuple[bytes, bytes]]:
    ip = f"{10 + (c >> 16)}.{index % 256}.{(c >> 8) & 255}.{c & 255}"
    headers = [(b"host", t.host.encode("ascii")), (b"cf-connecting-ip", ip.encode("ascii"))]
    if c < round(t.headers * t.clients):
        value = f"{t.datacenter}-{c}".encode("ascii")
        for name in affinity:
            lowered = name.lower()
            if not lowered.startswith("cookie"):
                headers.append((lowered.encode("ascii"), value))
    return headers


async def _users(
    sc: Scenario,
    t: Traffic,
    index: int,
    pool: Pool,
    wait: float,
    start: float,
    driven: Driven,
    nursery: trio.Nursery,
    begun: float,
) -> None:
    """One data center's users, open-loop; ``driven.behind`` gets how late the requests
    due once the driver had ``begun`` (trio time) were sent (measured in :func:`_one`, as
    each goes to the client: a task started on time can still wait for this process)."""
    sent, mono = driven.sent, driven.mono
    rng = random.Random(f"{sc.seed}:rehearse:{t.datacenter}")
    lb = sc.config.load_balancer(t.host)
    affinity = lb.session_affinity_attributes.headers if lb is not None else ()
    keepers = round(t.cookies * t.clients)
    cookies: dict[int, str] = {}
    target = t.path.encode("ascii")
    ray = f"-{t.datacenter}".encode("ascii")
    for when in _schedule(sc, t):
        await trio.sleep_until(start + when)
        # The requests due before the driver ran are not "behind" it.
        scheduled = start + when if start + when >= begun else None
        c = int(rng.random() * t.clients)
        n = len(sent)
        rid = f"rh-{t.datacenter}-{n}"
        headers = _client_headers(t, c, index, affinity)
        headers.append((b"cf-ray", b"%x" % n + ray))
        headers.append((b"x-request-id", rid.encode("ascii")))
        if c in cookies:
            headers.append((b"cookie", f"__cflb={cookies[c]}".encode("latin-1")))
        record = Sent(time.monotonic() - mono, t.datacenter)
        sent[rid] = record
        nursery.start_soon(
            _one, pool, target, headers, wait, record, cookies, c, c < keepers, driven, scheduled
        )


def _schedule(sc: Scenario, t: Traffic) -> list[float]:
    """When each of ``t``'s requests is due (seconds after time 0), as the simulator paces
    them: per tick, the requests due by its end (the integral of the rate), evenly spread
    over it."""
    out: list[float] = []
    done = 0
    k = 0
    while k * sc.tick < sc.duration - 1e-9:
        at = k * sc.tick
        length = min(sc.tick, sc.duration - at)
        due = int(t.total(at + length) + 1e-6)
        n, done = due - done, due
        out += [at + j * length / n for j in range(n)]
        k += 1
    return out


async def _one(
    pool: Pool,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    wait: float,
    record: Sent,
    cookies: dict[int, str],
    c: int,
    keeps: bool,
    driven: Driven,
    due: float | None,
) -> None:
    """Send one request (given up after ``wait`` seconds: status 0); ``driven.behind`` gets
    how late after ``due`` (trio time, None: not counted) it was handed to the client."""
    if due is not None:
        driven.behind = max(driven.behind, trio.current_time() - due)
    with trio.move_on_after(wait):
        try:
            answer = await pool.request(b"GET", target, headers)
        except ClientError:
            return
        record.status = answer.status
        cookie = answer.cookie("__cflb")
        if keeps and cookie:
            cookies[c] = cookie


def _config_changed(raw: dict[str, Any], c: ConfigEvent) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for p in out.get("pools", []):
        if p.get("name") != c.pool:
            continue
        if c.endpoint is None:
            p["enabled"] = c.action == TimelineAction.ENABLE
            continue
        for o in p.get("origins", []):
            if o.get("name") == c.endpoint:
                if c.action == TimelineAction.WEIGHT:
                    o["weight"] = c.weight
                else:
                    o["enabled"] = c.action == TimelineAction.ENABLE
    return out


def _fault_body(e: NetEvent, anchor: float, *, handed: bool = False) -> dict[str, object]:
    """The ``POST /faults`` body of ``e`` (:mod:`lb.connector.faults`; the connector shows
    an ``unreachable`` application, also a flap's, as ``down``: cloudflared's 502).

    A flap carries its start on the shared monotonic clock, ``anchor`` (time 0) plus its
    time in the timeline, ``since``: its phase is then the simulator's however late the
    POST arrives, and however long after its start it is handed over to a connector.
    ``handed``: the edge stand-in hands ``e`` over to a connector; a status is then marked
    ``handed``, so the connector tags its answer and the edge stand-in counts it for no
    replica, as the simulator counts the edge's own."""
    body: dict[str, object] = {"do": e.action}
    if e.layer == ORIGIN:
        body["layer"] = "origin"  # the application behind the stand-in fails, not it
    if _how(e) == TimelineAction.STATUS:
        body["status"] = e.status
        if handed:
            body["handed"] = True
    if e.action == TimelineAction.LATENCY:
        body["latency"] = e.latency
    if e.action == TimelineAction.FLAP:
        body.update(period=e.period, down_for=e.down_for, how=e.how, since=anchor + e.at)
    return body


def _controls(stack: Stack, e: NetEvent) -> list[str]:
    """The control ports an event goes to.  A tunnel with an edge stand-in: an edge fault of
    the whole tunnel (:func:`_whole`, by its target's kind) is the edge's own (its recover
    clears the replicas' too, as a tunnel-wide
    recover does in the simulator: theirs first, as the edge's fault hides them until it
    goes); a fault of some replicas, or of the application behind them, goes to those
    replicas' connectors only (:func:`_posts`)."""
    replicas = {name: url for (a, name), url in stack.replica_control.items() if a == e.address}
    if not replicas:
        return [stack.control[e.address]]
    if _whole(e):
        edge = [stack.control[e.address]]
        if e.action == TimelineAction.RECOVER:  # connectors first: none exposed meanwhile
            return [replicas[n] for n in sorted(replicas)] + edge
        return edge
    return [replicas[n] for n in e.replicas]


async def _timeline(
    sc: Scenario, stack: Stack, client: httpx.AsyncClient, start: float, lags: list[float]
) -> None:
    """Apply every event at its time; ``lags`` gets how late each took effect.

    A network event's POSTs are sent ahead, from the start, each dated with its instant on
    the clock every process shares (``at``: time 0's ``mono`` plus its time), and each
    stand-in enacts it at that instant (:mod:`lb.connector.faults`), so a busy machine
    delays a fault only if its POST arrives after its time; its lag is how late the POSTs
    were answered after it (0 when before).  A configuration change is a reload at its
    time (the LB takes no date): its lag is how late the reload was answered."""
    handed = handovers(sc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_changes, sc, stack, client, start, lags)
        for e in sorted(sc.events, key=lambda e: (e.at, e.index)):
            for url, body in _posts(stack, e, handed.get(e.index, Handover())):
                r = await client.post(url, json={**body, "at": stack.anchor + e.at})
                if r.status_code != 200:
                    raise RuntimeError(f"the stand-in refused {e.label}: {r.text.strip()}")
            lags.append(max(0.0, trio.current_time() - start - e.at))


async def _changes(
    sc: Scenario, stack: Stack, client: httpx.AsyncClient, start: float, lags: list[float]
) -> None:
    """Each ``disable`` / ``enable`` / ``weight``: the LB's configuration rewritten and
    reloaded at its time."""
    for c in sorted(sc.changes, key=lambda c: (c.at, c.index)):
        await trio.sleep_until(start + c.at)
        await stack.reload(client, _config_changed(stack.raw_config, c))
        lags.append(trio.current_time() - start - c.at)


def _posts(stack: Stack, e: NetEvent, plan: Handover) -> list[tuple[str, dict[str, object]]]:
    """The POSTs that apply ``e``, in order: those of ``plan.held`` (the tunnel-wide
    conditions the edge stand-in holds, to the replicas ``e`` does not clear, and the edge's
    cleared), then ``e``'s own (:func:`_controls`); for a tunnel-wide ``latency``, the
    latency of ``plan.slow``'s connectors set to 0 first.

    Consistency comes from the shared clock: every POST of a step is dated with the step's
    one instant (:func:`_timeline`), sent ahead, and each stand-in enacts the changes of one
    instant together, in the order they came, so every stand-in switches at that instant and
    no request sees half a hand-over.  The order below still matters within one stand-in
    (a ``recover`` before the fault set after it), and across stand-ins only when the POSTs
    arrive after their instant (the run's ``lag``): then a step that hands over a fault
    adds before it takes away, so no replica is without its fault, and a step that moves
    only latencies takes away first, so a request between two POSTs pays less than either
    side's latency, never the sum."""
    cleared = set(e.replicas) if e.action == TimelineAction.RECOVER else set()
    keep = sorted(
        name for (a, name) in stack.replica_control if a == e.address and name not in cleared
    )
    handed = [
        (stack.replica_control[(e.address, n)], _fault_body(c, stack.anchor, handed=True))
        for n in keep
        for c in plan.held
    ]
    recover: dict[str, object] = {"do": TimelineAction.RECOVER}
    unheld = [(stack.control[e.address], recover)] if plan.held else []
    posts = unheld + handed if all(map(_latency, plan.held)) else handed + unheld
    if e.action == TimelineAction.LATENCY:
        unslow: dict[str, object] = {"do": TimelineAction.LATENCY, "latency": 0.0}
        posts += [(stack.replica_control[(e.address, n)], unslow) for n, _ in plan.slow]
    return posts + [(url, _fault_body(e, stack.anchor)) for url in _controls(stack, e)]


@dataclass(slots=True)
class Driven:
    """What :func:`drive` measured."""

    mono: float
    """``time.monotonic()`` of time 0."""
    sent: dict[str, Sent]
    """Every request sent, by request id."""
    lag: float = 0.0
    """The latest a timeline event took effect after its time (seconds)."""
    probes: int = 0
    """Probe requests the stand-ins received in ``[0, duration]``."""
    probe_duration: float = 0.0
    """How long the LB's slowest probe took, to its histogram bucket (seconds)."""
    timed_out: list[tuple[str, float, float, int]] = field(default_factory=list)
    """``(pool/endpoint, after, by, n)``: ``n`` of the LB's checks first counted in a reading
    of its counter, so timed out after ``after`` (when the previous reading's GET was sent:
    a check counted then may have been sent up to a probe timeout before, which
    :func:`lb.rehearse.stalls.unexplained` adds) and by ``by`` (when this reading's GET
    returned), in scenario seconds.  ``after`` is ``-inf`` when a reading in between failed
    (a gap): such a window is never the machine's."""
    gaps: int = 0
    """Readings of the LB's counter that failed (an HTTP error or a timeout)."""
    samples: Samples = field(default_factory=list)
    """How long each of the stack's processes had run and waited for a CPU, read every
    :data:`SAMPLE` seconds over ``[0, duration]`` (scenario seconds)."""
    starved: float | None = None
    """Seconds the stack's processes waited for a CPU per second they ran, over ``[0,
    duration]`` (None where the kernel does not say): reported, it decides nothing."""
    behind: float = 0.0
    """How far behind its schedule the driver sent a request (seconds): how long this
    process was kept from running (the edge stand-ins run in their own)."""


SAMPLE = 0.25
"""Seconds between two readings of the stack's CPU times (``/proc``, a cheap synchronous
read); the LB's probe counter is read every other one (an HTTP GET of its metrics)."""


async def _at_the_end(
    sc: Scenario, stack: Stack, client: httpx.AsyncClient, start: float, out: Driven
) -> None:
    """Until the scenario's end, how long the stack's processes waited for a CPU and the
    LB's checks that timed out, read every :data:`SAMPLE` seconds (when a timeout was the
    machine's, :mod:`lb.rehearse.stalls` tells from them); at the end, the probe requests
    the stand-ins received since time 0 (the simulator counts the attempts of ``[0,
    duration]``) and the LB's probe duration."""
    # (sent, returned, counts): when each GET of the counter was sent and returned (scenario
    # seconds, taken as they are: the last may come after the end); counts None: it failed.
    readings: list[tuple[float, float, dict[str, int] | None]] = []

    async def read() -> None:
        sent = trio.current_time() - start
        try:
            counts: dict[str, int] | None = await stack.probe_timeouts(client)
        except httpx.HTTPError:
            counts = None
            out.gaps += 1
        readings.append((sent, trio.current_time() - start, counts))

    k = 0
    while True:
        now = trio.current_time() - start
        out.samples.append((now, stack.cpu()))
        if k % 2 == 0 or now >= sc.duration:
            await read()
        if now >= sc.duration:
            break
        # After a slow GET, skip the ticks missed rather than catch up back to back.
        k = max(k + 1, math.floor((trio.current_time() - start) / SAMPLE) + 1)
        await trio.sleep_until(start + min(sc.duration, k * SAMPLE))
    if readings[-1][2] is None:
        await read()  # one more try: a check counted after the last good reading is lost
    previous: tuple[float, dict[str, int]] | None = None
    gap = False
    for sent, returned, counts in readings:
        if counts is None:
            gap = True
            continue
        if previous is not None:
            after, a = previous
            after = -math.inf if gap else after
            out.timed_out += [
                (e, after, returned, n - a.get(e, 0)) for e, n in counts.items() if n > a.get(e, 0)
            ]
        previous, gap = (sent, counts), False
    ran = waited = 0.0
    for pid, snapshot in out.samples[-1][1].items():
        r, w = spent(out.samples[0][1].get(pid, {}), snapshot)
        ran, waited = ran + r, waited + w
    if ran > 0 and out.samples[0][1] and all(s for s in out.samples[-1][1].values()):
        out.starved = waited / ran
    out.probes = await stack.probes(client)
    out.probe_duration = await stack.probe_duration(client)


async def drive(sc: Scenario, stack: Stack) -> Driven:
    """Run the scenario's traffic and timeline against ``stack``; return what it measured.

    Time 0 is when the LB's probe schedule started (``stack.anchor``), as in the
    simulator, so one seed is one probe schedule on both sides.  That moment has just
    passed: the requests due since are sent at once (and counted at the LB's receive time).
    """
    sent: dict[str, Sent] = {}
    lags: list[float] = []
    limits = sc.config.engine.limits
    wait = limits.connect_timeout + limits.request_timeout + 5
    pool = Pool(stack.proxy.removeprefix("http://"), limit=CONNECTIONS)
    try:
        async with httpx.AsyncClient(timeout=10) as control:
            mono = stack.anchor  # time 0 on the clock of the LB's log lines (``mono``)
            start = trio.current_time() - (time.monotonic() - mono)
            driven = Driven(mono, sent)
            # Requests in flight at the end finish (each bounded by the client's timeout)
            # before the outer nursery closes.
            async with trio.open_nursery() as requests, trio.open_nursery() as nursery:
                nursery.start_soon(_timeline, sc, stack, control, start, lags)
                nursery.start_soon(_at_the_end, sc, stack, control, start, driven)
                begun = trio.current_time()
                for i, t in enumerate(sc.traffic):
                    args = (sc, t, i, pool, wait, start, driven, requests, begun)
                    nursery.start_soon(_users, *args)
    finally:
        await pool.aclose()  # also when the run failed or was cancelled
    driven.lag = max(lags, default=0.0)
    return driven
