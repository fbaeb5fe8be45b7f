"""Simulated users: per data center, a batch of requests per tick, decided synchronously.

Why batches
===========

A request is a steering decision (``engine.router.decide``, the call the proxy makes through
``Engine.decide``; a header session the decision names is stored by ``engine.remember``), one
lookup of what the chosen endpoint answers, and a few counter increments.  Running each as a
trio task would cost a context switch per request; deciding a tick's worth in a tight loop
costs only the decision, which is how a run reaches hundreds of thousands of requests per
second of wall time.  Within a tick nothing changes: health is applied between ticks, and the
network's answers are cached until :meth:`lb.sim.network.Network.next_change`.

What a request does (the proxy's sequence):

1. the client (one of ``clients`` per data center, chosen uniformly) sends its ``__cflb``
   cookie if it is one of the cookie-keeping share, or its affinity headers;
2. ``router.decide`` picks pool and endpoint; the network answers through the replica the
   edge picks (local connection preference);
3. when the attempt failed, the proxy's attempt policy (:func:`lb.core.attempts.next_step`)
   says what follows: a failed connection to the endpoint (the edge layer refuses, is
   blackholed or unreachable: 521/522/523, the engine's zero-downtime-failover codes by
   default) gets the one retry ``router.retry`` gives (R42-R45); a pooled connection the
   endpoint closed just as the request went out (``network.keep_alive``, below) is retried on
   a fresh connection.  An HTTP answer is never retried, whatever its status, unless
   ``retry_on`` names it: then the policy may retry it to another endpoint, within the
   load balancer's retry budget (``lb/core/budget.py``), which counts the requests in
   flight per data center as the proxy does (each from its start to its final answer,
   retrying from the end of the attempt that failed), asked at the request's start
   (docs/simulate.md, section 9).  An answer slower than the
   proxy waits (``request_timeout``, :meth:`lb.sim.network.Network.answers` with
   ``user``), or one an origin holds, is the proxy's 524, ``RESPONSE_TIMEOUT`` to the
   policy and to passive health, never retried; it is in flight until the proxy gives up;
4. a new ``__cflb`` is kept by cookie-keeping clients;
5. ``engine.live`` in-flight (and connection) counts follow each request when some policy
   reads them (least_outstanding_requests / least_connections), from its start to its final
   answer (the failed attempts and retries before it included), at the endpoint that gave
   that answer;
6. with ``passive_health`` on, every attempt's outcome goes to ``engine.outcome``, the call
   the proxy makes (:mod:`lb.core.passive` counts it), when the proxy would learn it: at the
   attempt's end, its start plus the latency the network gives it (a timed-out one's when
   the proxy gives up), a retry starting when the failed attempt ended
   (:class:`PendingOutcomes`); an ejection changes the snapshot at once, and the rest of
   the tick, and of the data centers decided after this one, is decided by the new router.

A retry is dated when the failed attempt ended (its outcome, its own end), but decided at
the request's start: ``router.retry`` picks its endpoint from the router of the request's
moment, and the network's answer is the one cached for the request's tick, not asked again
at the retry's start (an ejection, a health change or a timeline event between the two is
not seen by the retry).  The whole request is decided in one go, which keeps a request one
pass of the loop; a retry's start is at most the failed attempt's latency later (an edge
refusal: one round trip; a blackhole: ``connect_timeout``).

Pooled connections (``network.keep_alive``)
===========================================

For an endpoint that closes idle keep-alive connections, each data center's users follow the
pooled connection the proxy would reuse: the one released last (the pool is LIFO), released
when the previous answer arrived.  A request ``gap`` seconds after that release (a negative
gap: that connection is still busy and another pooled one is reused):

* dials fresh when there is no such connection yet or ``gap`` reaches the proxy's bound
  (``engine.upstream_idle_timeout``, or ``idle - 1`` when the endpoint announces
  ``Keep-Alive: timeout=<idle>``); a fresh connection meets no race;
* else reuses it, and meets the race when the endpoint's close and the request cross on the
  wire: the close had not reached the proxy's check before reuse (it takes half a round
  trip), and the request reached the endpoint after it closed (half a round trip too).  For
  the idle close that is ``gap`` within half a round trip of ``idle``; for closes at random
  moments (``random`` per connection-second) the chance that one falls in that round-trip
  window, ``1 - exp(-random * rtt)``, drawn from a stream of its own;
* a close that reached the proxy before the reuse is seen (EOF before reuse): a fresh dial,
  no failure, nothing to count.

A race fails the attempt before any response byte on a reused connection, and the attempt
policy decides (a simulated request is a bodiless GET, so it is retried on a fresh connection:
``stale_retries``).  Only the most recently released connection is followed for the idle
close, so at high rates (gaps far below ``idle``) it never races, as in the proxy, where such
connections rarely sit idle; random closes race at any rate.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from lb.config.model import Config, RetryOn
from lb.core.attempts import Action, Body, Failure, Retry, buffer_bound, next_step, retry_on_for
from lb.core.budget import RetryBudget
from lb.core.snapshot import EndpointView
from lb.engine import Engine
from lb.sim.network import HANG, TIE, Answer, Network
from lb.sim.scenario import KeepAlive, Traffic
from lb.sim.spec import TimelineAction
from steering import Affinity, Decision, Live, Request, Router

__all__ = [
    "WALL_EPOCH",
    "DatacenterTraffic",
    "InFlight",
    "PendingOutcomes",
    "TrafficCounts",
    "needs_live",
]

WALL_EPOCH = 1_700_000_000.0
"""Unix time of virtual time 0, for ``__cflb`` expiry (fixed, so runs repeat exactly)."""

_LIVE_POLICIES = frozenset({"least_outstanding_requests", "least_connections"})
_CONNECT_FAILURES: dict[str, Failure] = {
    TimelineAction.REFUSE: Failure.CONNECT_REFUSED,
    TimelineAction.BLACKHOLE: Failure.CONNECT_TIMEOUT,
    TimelineAction.UNREACHABLE: Failure.UNREACHABLE,
}
"""The attempt policy's name for each edge fault that fails the connection itself."""


def needs_live(config: Config) -> bool:
    """Whether any pool or load balancer reads the live counters."""
    return any(p.origin_steering.policy in _LIVE_POLICIES for p in config.pools) or any(
        lb.effective_policy in _LIVE_POLICIES for lb in config.load_balancers
    )


@dataclass(slots=True)
class TrafficCounts:
    """What one data center's requests did during one tick (folded by the recorder)."""

    requests: int = 0
    first: dict[str, int] = field(default_factory=dict)
    """First attempts per endpoint key (the steering decisions)."""
    moved_from: dict[str, int] = field(default_factory=dict)
    moved_to: dict[str, int] = field(default_factory=dict)
    """Zero-downtime retries: from the failed endpoint, to the one that served."""
    errors: dict[str, int] = field(default_factory=dict)
    """Final answers >= 500 per serving endpoint key ("" when no endpoint was chosen)."""
    replicas: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    """Final statuses other than 200."""
    unrouted: int = 0
    retries: int = 0
    stale_retries: int = 0
    """Retries on a fresh connection after a pooled one the endpoint had closed."""
    retry_on: int = 0
    """``retry_on`` retries (moves to another endpoint are in ``moved_from``/``moved_to``)."""
    budget_refused: int = 0
    """``retry_on`` retries the retry budget refused."""
    affinity: dict[str, int] = field(default_factory=dict)


def _failure(a: Answer, stale: bool, rules: RetryOn | None = None) -> Failure | None:
    """The attempt policy's name for what went wrong with an attempt answered ``a``;
    ``rules``: the ``retry_on`` of its endpoint (an HTTP answer is otherwise no failure).

    A body cut mid-response (``truncate``) is a failure only when the proxy read it whole
    before relaying it (the policy's :func:`~lb.core.attempts.buffer_bound`, for a GET whose
    small response has a known length); streamed, the user has the head already, and the
    cut response is what it gets."""
    if stale or a.failure == TimelineAction.RESET:
        return Failure.CLOSED_BEFORE_RESPONSE
    if a.failure == HANG:
        return Failure.RESPONSE_TIMEOUT  # the proxy's 524: never a status, never retried
    if a.connect_failed:
        return _CONNECT_FAILURES.get(a.failure)
    if a.failure == TimelineAction.TRUNCATE:
        return Failure.TRUNCATED if _buffered(rules) else None
    return Failure.STATUS if rules is not None and a.status in rules.statuses else None


def _buffered(rules: RetryOn | None) -> bool:
    """Whether the proxy reads a simulated response whole (a bodiless GET answered 200 with a
    small body of known length)."""
    return bool(
        buffer_bound(
            rules,
            idempotent=True,
            body=Body.BUFFERED,
            bodiless=False,
            status=200,
            length=0,
            chunked=False,
        )
    )


class _Outcome:
    """The cached answers of one endpoint for one data center, and this tick's tallies.

    Counting on the cached object (an attribute increment) instead of in dictionaries keeps
    the per-request cost down; :meth:`DatacenterTraffic.harvest` collects the counts at the
    end of every tick, before any cache invalidation.
    """

    __slots__ = (
        "answered",
        "answers",
        "counts",
        "endpoint",
        "key",
        "n",
        "runs",
        "single",
        "tick",
        "width",
    )

    def __init__(
        self,
        endpoint: EndpointView,
        answers: tuple[Answer, ...],
        runs: Callable[[str, bool], tuple[list[list[int]], ...]],
    ) -> None:
        self.endpoint = endpoint
        """Held so that its ``id()``, the cache key, is not reused while the entry lives: an
        ejection mid-tick swaps the router, and a router dropped before the tick ends would
        free its endpoints' ids for the next one's."""
        self.key = endpoint.key
        self.answers = answers
        self.width = len(answers)
        self.single: Answer | None = answers[0] if len(answers) == 1 else None
        self.answered = any(not a.connect_failed for a in answers)
        """Whether the endpoint answers at all (its connection does not fail)."""
        self.runs = runs(self.key, self.answered)
        """The recorder's runs of ticks this endpoint's first attempts extend
        (:meth:`lb.sim.record.Recorder.runs`): active, and answered when it answers."""
        self.n = 0
        """First attempts this tick (single-answer outcomes)."""
        self.counts = [0] * len(answers)
        """First attempts this tick per answer (multi-replica outcomes)."""
        self.tick = -1
        """The last tick with a first attempt, to report activity once per tick."""


class InFlight:
    """Requests in flight, each at the endpoint that gave its final answer, from its start
    to that answer (the failed attempts before it included), for the ``engine.live`` counts
    least_outstanding_requests and least_connections read.

    Like :class:`PendingOutcomes`, one for the run, each attempt with the counts of the
    engine it went through, settled in time order wherever time passes (before each request
    of any data center, at the start of every tick): an attempt ends whether or not its data
    center sends again, and one per data center kept counting, for good, the attempts of a
    data center whose traffic stopped."""

    __slots__ = ("connections", "items", "seq")

    def __init__(self, config: Config) -> None:
        self.items: list[tuple[float, int, Live, EndpointView]] = []
        self.seq = 0
        self.connections = any(
            p.origin_steering.policy == "least_connections" for p in config.pools
        ) or any(b.effective_policy == "least_connections" for b in config.load_balancers)
        """Connections are counted too (one per attempt)."""

    def start(self, live: Live, ep: EndpointView, now: float, latency: float) -> None:
        live.started(ep)
        if self.connections:
            live.connection_opened(ep)
        self.seq += 1
        heapq.heappush(self.items, (now + latency, self.seq, live, ep))

    def settle(self, now: float) -> None:
        """End the attempts due by ``now`` (an end at the same instant included: :data:`TIE`)."""
        items = self.items
        due = now + TIE
        while items and items[0][0] <= due:
            _, _, live, ep = heapq.heappop(items)
            live.finished(ep)
            if self.connections:
                live.connection_closed(ep)


class PendingOutcomes:
    """Passive health: the attempts whose outcome the proxy has not learned yet.

    The proxy tells passive health how an attempt ended when it ends: when the answer's head
    arrives, the connection fails or is reset, or the deadline fires (``RESPONSE_TIMEOUT``,
    lb/proxy/replies.py).  That is the attempt's start plus the latency the network gives it,
    never the request's start.  So every attempt's outcome waits here until that time, one
    heap for every data center of a run, each with the engine it went through, emptied in
    time order wherever time passes: before each request of any data center, at the start of
    every tick (:mod:`lb.sim.run`), and at the end of the run.  A heap per data center,
    emptied only by that data center's next request, would lose the outcomes of one whose
    traffic stops and date late those of one whose traffic is sparse.  Answers that would
    arrive after the run's end are not told.
    """

    __slots__ = ("items", "seq")

    def __init__(self) -> None:
        self.items: list[tuple[float, int, Engine, EndpointView, int, Failure | None, bool]] = []
        """(when the proxy learns it, sequence, engine, endpoint, status, failure, reused),
        a heap."""
        self.seq = 0

    def add(
        self,
        at: float,
        engine: Engine,
        ep: EndpointView,
        status: int,
        failure: Failure | None = None,
        *,
        reused: bool = False,
    ) -> None:
        """An attempt at ``ep`` through ``engine`` whose outcome the proxy learns at ``at``."""
        self.seq += 1
        heapq.heappush(self.items, (at, self.seq, engine, ep, status, failure, reused))

    def kill(self, engine: Engine, at: float) -> None:
        """``engine``'s process is killed at ``at``: report the outcomes due by then (of
        every engine, in time order: the run's ticks may not have reached ``at`` yet), then
        forget the rest of ``engine``'s, whose attempts and deadlines die with it."""
        self.settle(at)
        self.items[:] = [item for item in self.items if item[2] is not engine]  # in place:
        heapq.heapify(self.items)  # a data center's loop may hold the list

    def settle(self, now: float) -> bool:
        """Report the outcomes due by ``now``, each at the time the proxy learned it; True
        when one changed health (the caller takes the engine's new router).

        An outcome due at the same instant as ``now`` (within :data:`TIE`: the two are float
        sums of different terms) is reported: an answer that arrives as a request goes is
        heard first, whichever way the sums round."""
        items = self.items
        changed = False
        due = now + TIE
        while items and items[0][0] <= due:
            at, _, engine, ep, status, failure, reused = heapq.heappop(items)
            if engine.outcome(
                ep.pool, ep.name, status=status, failure=failure, reused=reused, now=at
            ):
                changed = True
        return changed


class DatacenterTraffic:
    """The clients of one data center and their random streams (one per purpose)."""

    def __init__(
        self,
        traffic: Traffic,
        index: int,
        seed: int,
        config: Config,
        network: Network,
        runs: Callable[[str, bool], tuple[list[list[int]], ...]],
        outcomes: PendingOutcomes,
        in_flight: InFlight | None = None,
    ) -> None:
        self.traffic = traffic
        self.dc = traffic.datacenter
        self._network = network
        self._runs = runs
        name = f"{seed}:traffic:{traffic.datacenter}"
        self._clients_rng = Random(f"{name}:clients")
        self.steer_rng = Random(f"{name}:steering")
        self._replica_rng = Random(f"{name}:replicas")
        self._index = index
        self._requests: list[Request | None] = [None] * traffic.clients
        self._keepers = round(traffic.cookies * traffic.clients)
        self._header_clients = round(traffic.headers * traffic.clients)
        lb = config.load_balancer(traffic.host)
        self._affinity = lb.affinity if lb is not None else "none"
        self._headers = lb.session_affinity_attributes.headers if lb is not None else ()
        self._zdf = lb.session_affinity_attributes.zero_downtime_failover if lb else "none"
        self._codes = frozenset(config.engine.zero_downtime_failover_codes)
        self._keep_alive = network.keep_alive
        self._idle_bound = config.engine.upstream_idle_timeout
        self._half_rtt = network.rtt / 2
        self._released: dict[str, float] = {}
        self._closes_rng = Random(f"{name}:keep_alive")
        """Endpoint address -> when its last pooled connection was released (keep_alive)."""
        self._cache: dict[int, _Outcome] = {}
        self._answers: dict[tuple[str, str], tuple[Answer, ...]] = {}
        """(address, host) -> what the network answers this data center's users there, kept
        until the network's next change: a new snapshot (new endpoint views, so new cache
        entries) does not change what an address answers."""
        self._sent = 0
        self._budget: RetryBudget | None = None
        """The load balancer's retry budget, when ``retry_on`` may apply to its requests."""
        self._flight: list[tuple[float, int, bool]] = []
        """With a budget: (answer time, sequence, retrying) of the requests in flight, each
        from its start to its final answer, as the proxy counts it."""
        self._retry_from: list[tuple[float, int]] = []
        """With a budget: (instant, sequence) of the ``retry_on`` retries decided after the
        budget's counts were last settled: a request counts as retrying from the end of the
        attempt that failed, as in the proxy, not from its start."""
        self._flight_seq = 0
        if lb is not None and (
            lb.retry_on is not None or any(p.retry_on is not None for p in config.pools)
        ):
            self._budget = RetryBudget()
        self._heap = in_flight
        """The run's attempts in flight, when some policy reads ``engine.live``."""
        self._passive: Engine | None = None
        """The engine outcomes go to while ``passive_health`` covers a pool (else None)."""
        self._now = 0.0
        """The engine time of the request being bookkept (for :meth:`_failed`)."""
        self._outcomes = outcomes
        """Passive health: the attempts whose outcome the proxy has not learned yet, shared
        by every data center of the run (:meth:`_report`)."""
        self._slow = (
            self._affinity != "none"
            or in_flight is not None
            or bool(self._keep_alive)
            or self._budget is not None  # the budget counts requests in flight
        )
        """Whether every request takes :meth:`_bookkeep` whatever the router (see :meth:`run`)."""
        self._ramps_of: Router | None = None
        self._ramps = False
        """Whether a slow_start ramp runs in the snapshot of :attr:`_ramps_of`, the router
        :meth:`run` last had."""

    def invalidate(self, *, network: bool = True) -> None:
        """Forget the cached outcomes (the snapshot changed), and what the network answers too
        when ``network`` (its next change came)."""
        self._cache.clear()
        if network:
            self._answers.clear()

    def batch(self, t: float, tick: float) -> int:
        """How many requests start in the tick ``[t, t + tick)``: the whole requests due by
        its end minus those due by its start, so fractions carry over without drift."""
        due = math.floor(self.traffic.total(t + tick) + 1e-6)
        n = due - self._sent
        self._sent = due
        return n

    # ------------------------------------------------------------------ clients

    def _client(self, c: int) -> Request:
        ip = f"{10 + (c >> 16)}.{self._index % 256}.{(c >> 8) & 255}.{c & 255}"
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        if c < self._header_clients:
            value = f"{self.dc}-{c}"
            for name in self._headers:
                lowered = name.lower()
                if lowered == "cookie":
                    cookies["session"] = value
                elif lowered.startswith("cookie:"):
                    cookies.update((k.strip(), value) for k in name[7:].split(",") if k.strip())
                else:
                    headers[lowered] = value
        req = Request(
            host=self.traffic.host,
            client_ip=ip,
            datacenter=self.dc,
            country=self.traffic.country,
            headers=headers,
            cookies=cookies,
            uri=self.traffic.path,  # custom rules (R32) see the path, as the ingress rules do
        )
        self._requests[c] = req
        return req

    # ------------------------------------------------------------------ one tick

    def _outcome(self, ep: EndpointView, t: float) -> _Outcome:
        host = ep.host or self.traffic.host
        address, dc = ep.address.lower().rstrip("."), self.dc
        answers = self._answers.get((address, host))
        if answers is None:
            path = self.traffic.path
            answers = self._network.answers(address, (dc,), dc, host, path, t, user=True)
            self._answers[address, host] = answers
        out = _Outcome(ep, answers, self._runs)
        self._cache[id(ep)] = out
        return out

    def run(
        self,
        t: float,
        k: int,
        n: int,
        tick: float,
        now: float,
        router: Router,
        engine: Engine,
        c: TrafficCounts,
    ) -> None:
        """Decide ``n`` requests of tick ``k``, starting at virtual time ``t`` (engine ``now``).

        With ``passive_health`` on, every attempt's outcome goes to ``engine`` too.
        One loop for every run.  Without affinity and in-flight counts (``slow`` false) a
        request needs no clock and a 200 answer no bookkeeping, and the loop skips both: that
        is the throughput path, so the rest stays inline here rather than in a per-request call.
        """
        c.requests += n
        live = engine.live
        remember = engine.remember
        heap = self._heap
        slow = self._slow
        if router is not self._ramps_of:  # slow_start ramps read the request's clock: set it
            self._ramps_of = router  # while any ramp runs (once per router, not per tick)
            self._ramps = any(
                p.ramping or p.ramp is not None for p in router.snapshot.pools.values()
            )
        slow = slow or self._ramps
        passive = engine if engine.passive else None
        self._passive = passive
        slow = slow or passive is not None  # every outcome counts, successes included
        pending = self._outcomes
        due = pending.items
        if passive is not None:
            # the data centers decided before this one in the tick may have ejected one
            router = engine.router
        pick = self._clients_rng.random
        rpick = self._replica_rng.random
        srng = self.steer_rng
        decide = router.decide
        requests = self._requests
        nclients = self.traffic.clients
        cache = self._cache
        wall = WALL_EPOCH + t
        step = tick / n if n else 0.0
        at = now
        for i in range(n):
            ci = int(pick() * nclients)
            req = requests[ci] or self._client(ci)
            if slow:
                req.now = now
                req.wall = wall
                at = now + i * step
                if heap is not None:
                    heap.settle(at)
                if due and due[0][0] <= at + TIE and pending.settle(at):
                    router = engine.router
                    decide = router.decide
            d = decide(req, srng, live)
            if d.remember is not None:  # header affinity: the engine stores the session
                remember(d)
            ep = d.endpoint
            if ep is None:
                self._unrouted(d, c)
                continue
            o = cache.get(id(ep)) or self._outcome(ep, t)
            if o.tick != k:  # Recorder.mark's rule (lb/sim/record.py), inlined: no call
                o.tick = k
                for runs in o.runs:
                    if runs and runs[-1][1] >= k:
                        runs[-1][1] = k + 1
                    else:
                        runs.append([k, k + 1])
            a = o.single
            if a is None:
                j = int(rpick() * o.width)
                o.counts[j] += 1
                a = o.answers[j]
            else:
                o.n += 1
            if slow:
                self._bookkeep(ci, req, d, ep, a, at, engine, c, t)
            elif a.status != 200:
                self._failed(req, d, o.key, a, engine, c, t)

    def _unrouted(self, d: Decision, c: TrafficCounts) -> None:
        """A request no endpoint serves: no pool could (530), no load balancer (404), or a
        pool set's or custom rule's fixed response (R31, R32), which is an answer like any
        other and an error only when its status is one."""
        status = d.status
        c.statuses[status] = c.statuses.get(status, 0) + 1
        if d.fixed is None:
            c.unrouted += 1
        if d.fixed is None or status >= 500:
            c.errors[""] = c.errors.get("", 0) + 1

    def harvest(self, c: TrafficCounts) -> None:
        """Move the per-endpoint and per-replica counts from the cache into ``c``.

        Called before the cache is invalidated and at report boundaries, not every tick.
        """
        first, replicas = c.first, c.replicas
        for o in self._cache.values():
            if o.single is not None:
                n = o.n
                if n:
                    first[o.key] = first.get(o.key, 0) + n
                    label = o.single.replica
                    if label is not None and o.single.through:
                        replicas[label] = replicas.get(label, 0) + n
                    o.n = 0
                continue
            total = 0
            for j, n in enumerate(o.counts):
                if n:
                    total += n
                    label = o.answers[j].replica
                    if label is not None and o.answers[j].through:
                        replicas[label] = replicas.get(label, 0) + n
                    o.counts[j] = 0
            if total:
                first[o.key] = first.get(o.key, 0) + total

    # ------------------------------------------------------------------ the rare paths

    def _failed(
        self,
        req: Request,
        d: Decision,
        key: str,
        a: Answer,
        engine: Engine,
        c: TrafficCounts,
        t: float,
        *,
        stale: bool = False,
    ) -> tuple[Decision | None, Answer, float | None, float]:
        """A failed attempt or a non-200 answer: what the attempt policy says follows, then
        the final tally; returns the last retry decision, the final answer, from when the
        request took a place in the retry budget (the end of the attempt whose failure
        started its first ``retry_on`` retry; None: it took none) and when the final answer
        came.

        As in the proxy, only failures are retried: a failed connection to the endpoint (R42)
        and a pooled connection the endpoint closed (``stale``); an HTTP answer is final
        whatever its status, 521-523 included (``http_status:522``, an origin's 522), unless
        ``retry_on`` names it.  A simulated request is a bodiless GET: buffered, idempotent
        and replayable.

        Attempts follow one another in time, as in the proxy: a retry starts when the failed
        attempt ended (its answer's latency; a pooled connection's close, met within one
        round trip), and each attempt's outcome reaches passive health when it ends.
        """
        retries: list[Retry] = []
        retry: Decision | None = None
        cur = d
        final_key = key
        reused = stale
        budget = self._budget
        rules = self._rules(cur)
        failure = _failure(a, stale, rules)
        began = self._now
        ended = began + (2 * self._half_rtt if stale else a.latency)
        self._report(d.endpoint, a, failure, reused=reused, at=ended)
        retry_from: float | None = None
        while failure is not None:
            decided = ended  # the proxy decides when the failed attempt ends
            step = next_step(
                failure,
                reused=reused,
                body=Body.BUFFERED,
                sent=reused,
                replayable=True,
                retries=retries,
                failover_codes=self._codes,
                idempotent=True,
                retry_on=rules,
                budget=budget,
                answered=a.status,
            )
            if step.refused:
                c.budget_refused += 1
            kind = step.retry
            if step.action is Action.FAILOVER or step.action is Action.RETRY:
                again = step.action is Action.RETRY
                moved = engine.retry(cur, req, self.steer_rng, status=step.status, retry_on=again)
                if moved is None or moved.endpoint is None:
                    if not again:
                        break
                    # retry_on with no other endpoint: the same one, on a fresh connection
                    ep2 = cur.endpoint
                    assert ep2 is not None
                    o2 = self._cache.get(id(ep2)) or self._outcome(ep2, t)
                else:
                    ep2 = moved.endpoint
                    o2 = self._cache.get(id(ep2)) or self._outcome(ep2, t)
                    c.moved_from[final_key] = c.moved_from.get(final_key, 0) + 1
                    final_key = o2.key
                    c.moved_to[final_key] = c.moved_to.get(final_key, 0) + 1
                    retry = cur = moved
                a = o2.single or o2.answers[int(self._replica_rng.random() * o2.width)]
                began = ended
                ended = began + a.latency
                self._report(ep2, a, _failure(a, False, self._rules(cur)), reused=False, at=ended)
                if again:
                    c.retry_on += 1
                else:
                    c.retries += 1
                if a.replica is not None and a.through:
                    c.replicas[a.replica] = c.replicas.get(a.replica, 0) + 1
            elif step.action is Action.FRESH:
                c.stale_retries += 1  # the same endpoint, its answer on a fresh connection
                began = ended
                ended = began + a.latency
                self._report(d.endpoint, a, _failure(a, False, rules), reused=False, at=ended)
            else:
                if a.status != step.status and not a.connect_failed:
                    a = Answer(a.replica, step.status, a.latency)  # the broken exchange's 502
                break
            assert kind is not None
            if step.budget:
                assert budget is not None
                retry_from = decided
            retries.append(kind)
            reused = False
            rules = self._rules(cur)
            failure = _failure(a, False, rules)
        if a.status != 200:
            c.statuses[a.status] = c.statuses.get(a.status, 0) + 1
            if a.status >= 500:
                c.errors[final_key] = c.errors.get(final_key, 0) + 1
        return retry, a, retry_from, ended

    @staticmethod
    def _rules(d: Decision) -> RetryOn | None:
        """The ``retry_on`` for an attempt at ``d``'s endpoint (its pool's, else its LB's)."""
        return retry_on_for(d.load_balancer, d.pool.config if d.pool is not None else None)

    def _report(
        self,
        ep: EndpointView | None,
        a: Answer,
        failure: Failure | None,
        *,
        reused: bool,
        at: float,
    ) -> None:
        """Passive health: tell the engine how an attempt at ``ep`` ended (the proxy's call)
        at ``at``, when the attempt ended: its answer, its failure or the proxy's deadline
        (:class:`PendingOutcomes`)."""
        engine = self._passive
        if engine is None or ep is None:
            return
        status = a.status
        if failure is None and a.failure == TimelineAction.TRUNCATE:
            status = 200  # streamed: the proxy saw a 200 head (the cut is the user's alone)
        self._outcomes.add(at, engine, ep, status, failure, reused=reused)

    def _stale(self, ep: EndpointView, now: float) -> bool:
        """Whether a request at ``now`` meets the race on ``ep``'s pooled connection (see the
        module docstring, "Pooled connections")."""
        keep = self._keep_alive.get(ep.address.lower().rstrip("."))
        last = self._released.get(ep.key)
        if keep is None or last is None:
            return False
        gap = now - last
        if gap >= self._bound(keep):
            return False  # the pool dropped it: a fresh dial
        half = self._half_rtt
        if gap >= 0 and keep.idle - half <= gap < keep.idle + half:
            return True
        if keep.random:
            return self._closes_rng.random() < -math.expm1(-keep.random * 2 * half)
        return False

    def _settle_budget(self, budget: RetryBudget, now: float) -> None:
        """Bring the budget's counts to ``now``: the retries decided by then in, the
        requests answered by then out (the same instant included: :data:`TIE`).  A retry is
        decided before its request's answer, so it is counted first."""
        retry_from = self._retry_from
        while retry_from and retry_from[0][0] <= now + TIE:
            heapq.heappop(retry_from)
            budget.retrying_now()
        flight = self._flight
        while flight and flight[0][0] <= now + TIE:
            budget.finished(heapq.heappop(flight)[2])

    def _bound(self, keep: KeepAlive) -> float:
        """How long the proxy reuses an idle connection to this endpoint (its pool's rule)."""
        if keep.announce:
            return min(self._idle_bound, keep.idle - 1.0)
        return self._idle_bound

    def _bookkeep(
        self,
        ci: int,
        req: Request,
        d: Decision,
        ep: EndpointView,
        a: Answer,
        now: float,
        engine: Engine,
        c: TrafficCounts,
        t: float,
    ) -> None:
        """Affinity, in-flight and pooled-connection accounting, for runs that need them."""
        failover = a.connect_failed and a.status in self._codes
        retry: Decision | None = None
        heap = self._heap
        stale = bool(self._keep_alive) and self._stale(ep, now)
        self._now = now
        if self._passive is not None and a.status == 200 and not stale:
            self._report(ep, a, None, reused=False, at=now + a.latency)
        budget = self._budget
        if budget is not None:
            self._settle_budget(budget, now)
            budget.started()
        retry_from: float | None = None
        end = now + a.latency
        if a.status != 200 or stale:
            retry, a, retry_from, end = self._failed(req, d, ep.key, a, engine, c, t, stale=stale)
            # A failed first attempt that was retried is counted in flight at the endpoint
            # that answered, from the request's start to the final answer.
            if retry is not None and retry.endpoint is not None:
                ep = retry.endpoint
        if budget is not None:  # to its final answer, retrying from its retry's decision
            self._flight_seq += 1
            heapq.heappush(self._flight, (end, self._flight_seq, retry_from is not None))
            if retry_from is not None:
                heapq.heappush(self._retry_from, (retry_from, self._flight_seq))
        if self._keep_alive and not a.connect_failed and a.failure != HANG:
            # a timed-out connection is discarded, not pooled (lb/proxy/replies.py)
            self._released[ep.key] = end
        if heap is not None:
            heap.start(engine.live, ep, now, end - now)
        if self._affinity == "none":
            return
        aff = c.affinity
        keeps = ci < self._keepers if self._affinity != "header" else ci < self._header_clients
        outcome = d.affinity
        if outcome == Affinity.NEW and keeps:
            aff["sessions"] = aff.get("sessions", 0) + 1
        elif outcome == Affinity.HIT:
            aff["hits"] = aff.get("hits", 0) + 1
        elif outcome == Affinity.REMAPPED:
            aff["remapped"] = aff.get("remapped", 0) + 1
            aff["broken"] = aff.get("broken", 0) + 1
        elif outcome == Affinity.EXPIRED:
            aff["expired"] = aff.get("expired", 0) + 1
        cookie = d.set_cookie
        if outcome == Affinity.HIT and failover:
            if retry is None:
                aff["pinned_errors"] = aff.get("pinned_errors", 0) + 1
            elif self._zdf == "sticky":
                aff["rewritten"] = aff.get("rewritten", 0) + 1
                aff["broken"] = aff.get("broken", 0) + 1
            else:
                aff["served_elsewhere"] = aff.get("served_elsewhere", 0) + 1
        if retry is not None and retry.set_cookie is not None:
            cookie = retry.set_cookie
        if cookie is not None and ci < self._keepers:
            req.cookie = cookie
