"""The steering pipeline: one load balancer, one request, one pool, one endpoint.

Theory of operation
===================

A :class:`Router` is compiled from one :class:`~lb.core.snapshot.Snapshot` and replaced when
the snapshot changes.  Everything that depends only on the snapshot (the candidate pool list
of each load balancer per data center, which of them are eligible, their weights and
cumulative tables, local-preference subsets) is computed on first use and cached, so that a
request costs a few dictionary lookups, one ``bisect`` and the policy's own arithmetic.

The pipeline for one request (docs/cloudflare-rules.md, R25-R45), each step recorded in the trace:

1. The Host selects the load balancer; unknown hosts answer 404.  Its custom rules (R32) run
   first: a matching rule's overrides give the load balancer this request is steered by
   (compiled once per set of matched rules), or its fixed response is the answer.
2. Session affinity (R35-R40) may short-circuit steps 3-5 for an existing session whose
   endpoint is usable (enabled, healthy, in an eligible pool; or draining, R40).
3. Candidate pools: ``pop_pools`` -> ``country_pools`` -> ``region_pools`` ->
   ``default_pools`` for geo (R27), ``default_pools`` otherwise.  Pools that are not eligible
   (R17), have nothing selectable (R18) or shed this request (R24) are excluded.
4. The pool policy picks one (R26-R29, R19, R21).
5. None left: the fallback pool with its health ignored (R30); a disabled fallback pool gives
   530 / error 1016.
6. The pool's endpoint policy picks one endpoint (R19-R21), among local endpoints first when
   local-data-center preference is on (see docs/steering.md).
7. A zero-downtime failover retry (R42-R45) is a second, separate call: :meth:`Router.retry`.

The fast path.  When the pool does not depend on the request (an ordered pool policy, ``off``,
``geo``, ``proximity`` or ``dynamic_latency``, with no load shedding among the eligible pools)
and the load balancer has no session affinity, the general path (:meth:`Router._steer`)
records per data center the pool's endpoint sets and their decisions (:class:`_Fast`), and
later untraced calls of :meth:`Router.decide` go straight from the plan to the endpoint pick.
The ``random`` pool policy has its variant (:class:`_FastPools`): the pool drawn from the
route's table as :meth:`Router._pick_pool` draws it, then that pool's entry.  Those are the
only fast paths, and their picks are the general path's (:meth:`Router._index`, with R19 and
R21's call inlined), so an untraced decision equals the traced one, with the same draws, for
the same ``rng`` state (tests/steering/test_steering_fastpath.py).

Decisions are values.  :class:`~steering.types.Decision` is immutable (a named tuple), and
an untraced decision is built once per plan, endpoint and reason (:meth:`_Plan.decision`):
the fast path and a cached ``__cflb`` hit end in returning one that already exists.  Only
decisions that carry something of the request (a trace, a new ``__cflb`` value, an affinity
outcome other than a hit, the retry's tried list) are built per request.

Enums on the hot path.  ``DecisionReason`` and ``Affinity`` are StrEnums; CPython 3.11
reads a member through its class in ~120 ns (a plain class attribute: ~40 ns), so the fast
path and a ``__cflb`` pin hit read none: their decisions are built once with the members in
them.

What is kept, and why.  Each cache holds something that depends only on the snapshot (or
on the snapshot and a few request fields), so it is correct for the router's life; those
keyed by request fields are bounded (``_CACHE_LIMIT``).  bench/steering.py is the reason for
each (docs/bench.md):

* ``Router._plans``: host -> the load balancer compiled (:class:`_Plan`); every request.
* ``_Plan.routes``: the candidate pools per data center (and country), sorted for proximity
  and latency; every general-path request.
* ``_Plan.fast``: the fast path (:class:`_Fast`); the random, failover, geo + LOR and local
  preference cases are one lookup in it.  ``_Plan.fast_pools``: the ``random`` pool policy's
  (:class:`_FastPools`); the simulator's hour run (bench/simulate.py) is mostly that case.
* ``_Plan.made``: untraced decisions, built once (a named tuple of 13 fields costs about
  1 us to build with keywords); the fast path's and the pins' decisions come from it.
* ``_Plan.ruled`` and ``_Plan.set_plans``: the plans custom rules (R32) and pool sets (R31)
  make, compiled once per set of matched rules or per pool set.
* ``Router._endpoint_sets``: each pool's endpoint sets (plain, local, fallback) with their
  cumulative tables and R21's memo (:class:`_LoadMemo`): the LOR cases.
* ``Router._pins``: ``__cflb`` values known to hit (:class:`_Pin`): the cookie-hit case,
  which would otherwise pay an HMAC per request.

Live counts (R21).  ``least_outstanding_requests`` and ``least_connections`` read the pool's
:class:`~steering.types.Counts` in :class:`~steering.types.Live` by slot (each endpoint set
remembers its endpoints' slots: no per-endpoint key formatting or dictionary lookup per
request), and each endpoint set keeps its table of ``w / (n + 1)`` running sums until the
counts' ``version`` moves: steady counts cost one ``bisect`` as R19 does, moved ones one pass
over the set.  Both give exactly ``P(i) = (w_i / (n_i + 1)) / sum_j (w_j / (n_j + 1))``.

Nothing here awaits, reads a clock or draws randomness except from the ``rng`` passed in, and
nothing here writes state the router does not own: the live counts are only read, and a
header-affinity session to store comes back in the decision (``Decision.remember``), which
the engine applies (:meth:`lb.engine.Engine.decide`).
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from random import Random
from typing import Any

from lb.config.expressions import Fields, compile_condition
from lb.config.model import (
    Datacenter,
    FixedResponse,
    LoadBalancer,
    PoolSet,
    RandomSteering,
    RuleOverrides,
)
from lb.core.health import Health
from lb.core.snapshot import EndpointView, PoolView, Snapshot
from steering import geo
from steering.affinity import (
    HeaderSession,
    HeaderSessions,
    session_key,
    sign,
    verify,
)
from steering.pick import (
    KeyedDraws,
    ip_bucket,
    load_terms,
    ramp,
    rendezvous,
    weighted,
    weighted_dynamic,
)
from steering.types import (
    NO_TRACE,
    Affinity,
    Counts,
    Decision,
    DecisionReason,
    Live,
    Request,
    Trace,
)
from steering.urls import normalize_uri

__all__ = ["Router"]

_NO_LIVE = Live()
_CACHE_LIMIT = 4096
"""Most cached routes / endpoint sets / cookies per router: these keys come from requests."""
_ORDERED = frozenset({"off", "geo", "proximity", "dynamic_latency"})
"""Pool policies whose route is already in preference order: the first eligible pool wins."""


class _LoadMemo:
    """R21's last table of one endpoint set, and the counts (and version) it is up to date with.

    The router only reads :class:`Counts`, which keep their slots in the order endpoints were
    first counted, so the memo also keeps where each item's count is: ``slots`` (the slot of
    each item, -1 for one never counted) and ``at`` (slot -> item), valid while the counts
    have ``size`` slots (slots are only ever appended).
    """

    __slots__ = ("at", "counts", "cumulative", "size", "slots", "terms", "top", "total", "version")

    def __init__(self) -> None:
        self.counts: Counts | None = None
        self.version = -1
        self.size = -1
        self.slots: list[int] = []
        self.at: dict[int, int] = {}
        self.terms: list[float] = []
        """``w / (n + 1)`` per item."""
        self.cumulative: list[float] = []
        self.total = 0.0
        self.top = -1
        """The last position of :attr:`cumulative` (kept, not asked of ``len`` per pick)."""


@dataclass(frozen=True, slots=True)
class _Endpoints:
    """A set of endpoints of one pool with its pick tables."""

    items: tuple[EndpointView, ...]
    names: tuple[str, ...]
    weights: tuple[float, ...]
    cumulative: tuple[float, ...]
    note: str
    """How the set was chosen, for the trace (empty for the plain selectable set)."""
    total: float
    """Sum of the weights (``cumulative[-1]``, or 0 for an empty set)."""
    pool: str
    memo: _LoadMemo = field(default_factory=_LoadMemo, compare=False, repr=False)
    """R21's table for the last counts seen (see :meth:`load_index`)."""

    def load_index(self, counts: Counts | None, rng: Random) -> int:
        """R21's pick (``least_outstanding_requests`` / ``least_connections``): the position of
        the chosen item, or -1 when every weight is 0.

        ``counts`` is the pool's :class:`Counts` of the policy's kind (None: nothing counted
        yet, so ``w / (0 + 1)`` is R19 exactly).  :attr:`memo` keeps the table until the counts
        move (the same Counts at the same version has the slots the memo was built from), then
        brings it up to date (:meth:`_refresh`).  The counts are only read.
        """
        cumulative: Sequence[float]
        if counts is None:
            cumulative, total = self.cumulative, self.total
            top = len(cumulative) - 1
        else:
            memo = self.memo
            if counts is not memo.counts or counts.version != memo.version:
                self._refresh(memo, counts)
            cumulative, total, top = memo.cumulative, memo.total, memo.top
        if total <= 0:
            return -1
        i = bisect(cumulative, rng.random() * total)
        # random() < 1 so i <= top, except through float rounding at the very top of the range.
        return i if i <= top else top

    def _refresh(self, memo: _LoadMemo, counts: Counts) -> None:
        """Bring R21's table up to date with ``counts``: recompute the terms of the slots written
        since the memo's version (:attr:`Counts.moved`), or all of them when the memo is of
        other counts, too far behind or the counts have new slots; then the running sums, in C.
        Either way each term and each sum is computed as a full pass would, so the pick is the
        same."""
        n, moved = counts.counts, counts.moved
        behind = counts.version - memo.version
        if counts is memo.counts and len(n) == memo.size and behind <= len(moved):
            terms, weights, at = memo.terms, self.weights, memo.at
            for j in range(-behind, 0):
                p = at.get(moved[j])
                if p is not None:
                    terms[p] = weights[p] / (n[moved[j]] + 1)
        else:
            memo.slots = slots = _slots(counts, self.items)
            memo.at = {slot: p for p, slot in enumerate(slots) if slot >= 0}
            memo.size = len(n)
            memo.terms = terms = load_terms(self.weights, slots, n)
        memo.cumulative = cumulative = list(accumulate(terms))
        memo.total = cumulative[-1] if cumulative else 0.0
        memo.top = len(cumulative) - 1
        memo.counts, memo.version = counts, counts.version

    @classmethod
    def of(cls, pool: str, items: Sequence[EndpointView], note: str = "") -> _Endpoints:
        weights = tuple(e.weight for e in items)
        total, cumulative = 0.0, []
        for w in weights:
            total += w
            cumulative.append(total)
        return cls(
            tuple(items),
            tuple(e.name for e in items),
            weights,
            tuple(cumulative),
            note,
            total,
            pool,
        )


def _slots(counts: Counts, items: Sequence[EndpointView]) -> list[int]:
    """The slot of each endpoint of ``items`` in ``counts`` (-1 for one never counted)."""
    slots = counts.slots
    return [slots.get(e.name, -1) for e in items]


@dataclass(frozen=True, slots=True)
class _Route:
    """The pools a request from one data center may use, per load balancer."""

    label: str
    """Which list was used: ``pop_pools[FRA]``, ``region_pools[WEU]``, ``default_pools``..."""
    candidates: tuple[PoolView, ...]
    eligible: tuple[PoolView, ...]
    """Eligible candidates in the policy's order (proximity and latency sort them)."""
    cumulative: tuple[float, ...]
    """Cumulative pool weights of ``eligible`` for ``random``."""
    weights: tuple[float, ...]
    sheds: bool
    """Whether any eligible pool sheds load, so that the per-request check is needed."""


class _Plan:
    """One load balancer compiled against one snapshot."""

    __slots__ = (
        "affinity",
        "by_country",
        "by_datacenter",
        "fallback",
        "fast",
        "fast_by_datacenter",
        "fast_pools",
        "lb",
        "made",
        "per_request",
        "policy",
        "pool_names",
        "pool_sets",
        "routes",
        "ruled",
        "rules",
        "set_plans",
    )

    def __init__(self, lb: LoadBalancer, snapshot: Snapshot, *, local: bool) -> None:
        self.lb = lb
        self.rules = tuple(
            (i, rule, compile_condition(rule.condition))
            for i, rule in sorted(enumerate(lb.rules), key=lambda r: r[1].priority)
            if not rule.disabled
        )
        """R32: enabled custom rules in evaluation order (priority, then list order), with
        their list index and compiled condition."""
        self.ruled: dict[tuple[int, ...], _Plan] = {}
        """Indexes of the rules that matched -> the plan of the load balancer with their
        overrides (see :meth:`Router._apply_rules`)."""
        self.pool_sets = tuple(
            (i, ps) for i, ps in enumerate(lb.pool_sets or ()) if not ps.disabled
        )
        """R31: enabled pool sets in list order, with their list index."""
        self.set_plans: dict[int, _Plan] = {}
        """Pool set index -> the plan of the load balancer that set makes (see
        :meth:`Router._apply_pool_sets`)."""
        self.per_request = bool(self.rules or self.pool_sets)
        """Whether the load balancer a request is steered by depends on the request."""
        self.policy = lb.effective_policy
        self.by_datacenter = self.policy in ("geo", "proximity", "dynamic_latency")
        """Whether the candidate pools depend on the request's data center."""
        self.by_country = self.policy == "geo" and bool(lb.country_pools)
        """Whether the candidate pools depend on the client's country too (``country_pools``)."""
        self.fast_by_datacenter = self.by_datacenter or local
        """Whether :attr:`fast` is keyed by data center (it is with local preference too)."""
        self.fast: dict[str, _Fast | None] = {}
        """Data center (or "") -> the fast-path entry (:class:`_Fast`), None where there is none
        and also where :attr:`fast_pools` holds the key's entry (the random pool policy).
        Filled by :meth:`Router._steer`, and only for load balancers without session affinity."""
        self.fast_pools: dict[str, _FastPools] = {}
        """The same keys -> the fast path of the ``random`` pool policy (:class:`_FastPools`).
        :attr:`fast` holds None for these keys too (None there means: no single entry; look
        here, then take the general path)."""
        self.made: dict[tuple[str, int, DecisionReason], Decision] = {}
        """(pool, endpoint index, reason) -> the untraced decision (see :meth:`decision`)."""
        # R34: affinity is never applied on DNS-only load balancers.
        self.affinity = lb.affinity if lb.proxied else "none"
        self.fallback = snapshot.pools.get(lb.fallback_pool)
        self.routes: dict[str, _Route] = {}
        names = set(lb.default_pools) | {lb.fallback_pool}
        for mapping in (lb.region_pools, lb.country_pools, lb.pop_pools):
            for pools in mapping.values():
                names.update(pools)
        self.pool_names = frozenset(names)

    def decision(
        self, pool: PoolView, ep: EndpointView, reason: DecisionReason, tr: Trace
    ) -> Decision:
        """The decision to send a request to ``ep`` of ``pool`` for ``reason`` (``policy``,
        ``fallback`` or ``affinity``, a session hit), which determines every other field.

        Decisions are values, so an untraced one is built once per plan and returned every
        time: a dictionary lookup instead of building a tuple of 11 fields.
        """
        key = (pool.name, ep.index, reason)
        if not tr.on:
            made = self.made.get(key)
            if made is not None:
                return made
        hit = reason is DecisionReason.AFFINITY
        if hit:
            policy = self.policy
        else:  # "<pool policy>/<endpoint policy>", the pool policy "fallback" for R30
            first = self.policy if reason is DecisionReason.POLICY else "fallback"
            policy = f"{first}/{pool.config.origin_steering.policy}"
        made = Decision(
            load_balancer=self.lb,
            pool=pool,
            endpoint=ep,
            reason=reason,
            policy=policy,
            affinity=Affinity.HIT if hit else Affinity.NONE,
            trace=tr.lines,
            pinned=ep.key if hit else None,
        )
        if not tr.on:
            self.made[key] = made
        return made


@dataclass(frozen=True, slots=True)
class _Fast:
    """An untraced decision known up to the endpoint pick (the fast path, module docstring).

    It exists when the pool does not depend on the request: an ordered pool policy (off, geo,
    proximity, dynamic_latency) with no load shedding among the eligible pools.  Slotted
    rather than a named tuple: CPython 3.11 reads a slot in one specialized step, and unpacks
    only exact tuples quickly (a named tuple cost ~50 ns more per request in
    bench/steering.py).
    """

    endpoints: _Endpoints
    """The set to pick from (the local one with local preference)."""
    decisions: tuple[Decision, ...]
    """The decision for each item of ``endpoints``, built once."""
    wide: _Endpoints
    """The set when the request spills (local preference), else ``endpoints``."""
    wide_decisions: tuple[Decision, ...]
    spill: float
    """The share of requests that spill to ``wide`` (0 without local preference)."""
    policy: str
    """The pool's endpoint policy."""


@dataclass(frozen=True, slots=True)
class _FastPools:
    """The fast path of the ``random`` pool policy (R26): the route's pool table, then the
    chosen pool's :class:`_Fast` entry.

    It exists when no eligible pool sheds load or ramps up and every endpoint set of every
    eligible pool has weight, so that the general path draws the pool with one
    :func:`~steering.pick.weighted` over this very table and the endpoint as the entry does:
    the same draws, in the same order, to the same decision.
    """

    cumulative: tuple[float, ...]
    """The route's running sums of the eligible pools' weights."""
    total: float
    """``cumulative[-1]`` (> 0)."""
    entries: tuple[_Fast, ...]
    """The :class:`_Fast` entry of each eligible pool, in the route's order."""


@dataclass(frozen=True, slots=True)
class _Pin:
    """A ``__cflb`` value known to hit, so that a repeated cookie costs a lookup and an expiry
    comparison instead of an HMAC.  Only for enabled endpoints of pools that shed no sessions,
    so that nothing but expiry depends on the request."""

    plan: _Plan
    """The plan the cookie was honoured under (another plan, e.g. after a custom rule
    matched, must check the cookie again)."""
    expires: float
    """The cookie's embedded expiry (Unix seconds)."""
    decision: Decision


_UNKNOWN_HOST = Decision(
    load_balancer=None, pool=None, endpoint=None, reason=DecisionReason.UNKNOWN_HOST, status=404
)


class Router:
    """Steering decisions against one snapshot; build a new one when the snapshot changes.

    Args:
        snapshot: the health and configuration to steer by.
        secret: the HMAC key of ``__cflb`` cookies.
        sessions: the header-affinity table, which outlives routers.  The router only reads
            it: a session to store comes back as ``Decision.remember``, for the table's owner
            (the engine) to store.
    """

    def __init__(
        self, snapshot: Snapshot, *, secret: bytes, sessions: HeaderSessions | None = None
    ) -> None:
        self.snapshot = snapshot
        self._secret = secret
        self._sessions = sessions if sessions is not None else HeaderSessions()
        self._datacenters = snapshot.config.datacenters
        self._plans: dict[str, _Plan | None] = {}
        self._endpoint_sets: dict[tuple[str, str, bool], _Endpoints] = {}
        self._by_name: dict[tuple[str, str], EndpointView] = {
            (e.pool, e.name): e for p in snapshot.pools.values() for e in p.endpoints
        }
        self._pins: dict[str, _Pin] = {}
        engine = snapshot.config.engine
        self._local = engine.local_preference
        self._zdf_codes = frozenset(engine.zero_downtime_failover_codes)

    # ------------------------------------------------------------------ the pipeline

    def decide(
        self, req: Request, rng: Random, live: Live | None = None, *, trace: bool = False
    ) -> Decision:
        """Steer one request; see the module docstring for the steps."""
        plan = self._plans.get(req.host) or self._plan(req.host)
        if plan is not None and not trace and not plan.per_request:
            # The fast path (module docstring): no affinity, and the pools do not depend on
            # the request, so what is left is the pool pick of the random policy (from
            # _FastPools) and the endpoint pick, each drawn as in the general path.
            key = req.datacenter if plan.fast_by_datacenter else ""
            if plan.by_country and req.country:  # no country: the data center's (one key)
                key = f"{key}|{req.country}"
            fast = plan.fast.get(key)
            if fast is None and plan.fast_pools:
                pools = plan.fast_pools.get(key)
                if pools is not None:  # random (R26): the pool as _pick_pool draws it, then on
                    j = bisect(pools.cumulative, rng.random() * pools.total)
                    fast = pools.entries[j if j < len(pools.entries) else -1]
            if fast is not None:
                # One statement per field: a tuple assignment of four builds and unpacks a
                # tuple (bench/steering.py measures the difference).
                eps = fast.endpoints
                made = fast.decisions
                spill = fast.spill
                policy = fast.policy
                if spill and rng.random() < spill:
                    eps, made = fast.wide, fast.wide_decisions
                if policy == "random":  # _index's R19, inline: the most common case
                    i = bisect(eps.cumulative, rng.random() * eps.total)
                elif policy == "least_outstanding_requests":  # _index's R21, one call
                    i = eps.load_index((live or _NO_LIVE).in_flight_by_pool.get(eps.pool), rng)
                    if i >= 0:  # already within the set (load_index clamps it)
                        return made[i]
                else:
                    i = self._index(eps, policy, req, rng, live or _NO_LIVE)
                if i >= 0:
                    return made[i] if i < len(made) else made[-1]
        tr = Trace() if trace else NO_TRACE
        if plan is None:
            if not tr.on:
                return _UNKNOWN_HOST
            tr.add(f"host {req.host!r}: no load balancer answers for it")
            return _UNKNOWN_HOST._replace(trace=tr.lines)
        if tr.on and req.country:
            tr.add(f"client country {req.country} (before the data center's)")
        if plan.per_request:  # R31, R32: the plan they make takes the general path
            plan, fixed = self._effective(plan, req, tr)
            if fixed is not None:
                return fixed
        lb = plan.lb
        if tr.on:
            tr.add(f"load balancer {lb.name}: steering_policy={plan.policy or 'off'}")
        live = live or _NO_LIVE
        mode = plan.affinity
        if mode == "none":
            return self._steer(plan, req, rng, live, tr)
        if mode == "header":
            return self._header_affinity(plan, req, rng, live, tr)
        return self._cookie_affinity(plan, req, rng, live, tr)

    def retry(
        self,
        first: Decision,
        req: Request,
        rng: Random,
        live: Live | None = None,
        *,
        status: int,
        retry_on: bool = False,
    ) -> Decision | None:
        """R42-R45: the single zero-downtime retry after ``first`` failed with ``status``.

        Returns None when no retry is due: ``status`` is not a failover code, a pinned session
        with ``zero_downtime_failover: none``, or no healthy alternate exists.

        ``retry_on``: a retry the attempt policy asked for under the ``retry_on`` extension
        (``lb/core/attempts.py``), for any status and possibly after another retry; the
        endpoints already tried are avoided all the same.
        """
        lb, pool, endpoint = first.load_balancer, first.pool, first.endpoint
        if lb is None or pool is None or endpoint is None:
            return None
        # The first decision may be from an older snapshot (passive health ejected its
        # endpoint in between): pick from this router's view of the pool, or a stale endpoint
        # set would be cached here and steer to the ejected endpoint until the next change.
        pool = self.snapshot.pools.get(pool.name, pool)
        if not retry_on and status not in self._zdf_codes:
            return None
        if first.reason is DecisionReason.RETRY and not retry_on:
            return None  # R42: exactly one retry per request
        tr = Trace(first.trace) if first.trace is not None else NO_TRACE
        zdf = lb.session_affinity_attributes.zero_downtime_failover
        if first.affinity == Affinity.HIT and zdf == "none":
            if tr.on:
                tr.add(f"retry: pinned session and zero_downtime_failover=none: {status}")
            return None
        live = live or _NO_LIVE
        tried = (*first.tried, endpoint.key)
        chosen = self._pick_endpoint(pool, req, rng, live, tr, exclude=tried)
        if chosen is None and lb.adaptive_routing.failover_across_pools:
            plan = self._plan(req.host)
            if plan is not None and plan.per_request:
                plan, _ = self._effective(plan, req, NO_TRACE)
            route = self._route(plan, req) if plan else None
            pools = route.eligible if route else ()
            # R43: the next pools in steering order after the failed one (all others when
            # the failed pool was not on the list, e.g. a pinned session's pool).
            names = [p.name for p in pools]
            if pool.name in names:
                after = list(pools[names.index(pool.name) + 1 :])
            else:
                after = list(pools)
            for nxt in after:
                chosen = self._pick_endpoint(nxt, req, rng, live, tr, exclude=tried)
                if chosen is not None:
                    pool = nxt
                    if tr.on:
                        tr.add(f"retry: failover_across_pools to pool {nxt.name}")
                    break
        if chosen is None:
            if tr.on:
                tr.add(f"retry: no healthy alternate after {status}")
            return None
        set_cookie, remember = first.set_cookie, None
        mode = lb.affinity if lb.proxied else "none"  # R34
        if mode in ("cookie", "ip_cookie"):
            if first.affinity != Affinity.HIT:
                set_cookie = self._cookie(lb, chosen, req)
            elif zdf == "sticky":
                # R45 sticky rewrites the endpoint; R35: the lifetime is never extended.
                value = verify(self._secret, req.cookie) if req.cookie else None
                expires = value.expires if value else None
                set_cookie = self._cookie(lb, chosen, req, expires=expires)
        elif mode == "header" and first.affinity != Affinity.HIT:
            remember = self._header_session(lb, req, chosen)
        if tr.on:
            if retry_on:
                once = f"to {chosen.key} (retry_on)"
            else:
                once = f"once to {chosen.key} (zero-downtime failover)"
            tr.add(f"retry: {status} from {endpoint.key}; {once}")
        return Decision(
            load_balancer=lb,
            pool=pool,
            endpoint=chosen,
            reason=DecisionReason.RETRY,
            policy=first.policy,
            affinity=first.affinity,
            set_cookie=set_cookie,
            trace=tr.lines,
            pinned=first.pinned,
            tried=tried,
            remember=remember,
        )

    # ------------------------------------------------------------------ pool sets, custom rules

    def _effective(self, plan: _Plan, req: Request, tr: Trace) -> tuple[_Plan, Decision | None]:
        """The plan ``req`` is steered by: the first matching pool set's (R31), then with the
        overrides of the custom rules that match (R32); or the fixed response that answers."""
        if plan.pool_sets:
            plan, fixed = self._apply_pool_sets(plan, req, tr)
            if fixed is not None:
                return plan, fixed
        if plan.rules:
            return self._apply_rules(plan, req, tr)
        return plan, None

    def _apply_pool_sets(
        self, plan: _Plan, req: Request, tr: Trace
    ) -> tuple[_Plan, Decision | None]:
        """R31: the first enabled pool set whose match holds for the request's data center
        supplies the pools, their steering, weights and fallback (geo mappings no longer
        apply), or answers with its fixed response (and no custom rule runs)."""
        dc = self._datacenters.get(req.datacenter) if req.datacenter else None
        for index, ps in plan.pool_sets:
            label = _label("pool set", index, ps.name, tr)
            if not _pool_set_matches(ps, req.datacenter, dc, req.country):
                if tr.on:
                    tr.add(f"{label}: no match for data center {req.datacenter or '-'}")
                continue
            if ps.fixed_response is not None:
                return plan, _fixed_decision(plan, ps.fixed_response, tr, label)
            found = plan.set_plans.get(index)
            if found is None:
                lb, o = plan.lb, ps.overrides
                # The set's weights are its own, never the load balancer's random_steering
                # (pool-sets docs); an unset default weight is the API's default, 1.
                steering = RandomSteering(pool_weights=o.pool_weights)
                if o.pool_default_weight is not None:
                    steering = RandomSteering(
                        pool_weights=o.pool_weights, default_weight=o.pool_default_weight
                    )
                derived = dataclasses.replace(
                    lb,
                    default_pools=o.pools,
                    steering_policy=o.steering_policy or "off",
                    random_steering=steering,
                    fallback_pool=o.fallback_pool or lb.fallback_pool,
                    region_pools={},
                    country_pools={},
                    pop_pools={},
                    pool_sets=None,
                )
                found = plan.set_plans[index] = _Plan(
                    derived, self.snapshot, local=self._local.enabled
                )
            if tr.on:
                tr.add(f"{label}: matched; pools {list(ps.overrides.pools)}")
            return found, None
        tr.add("no pool set matched: the load balancer's own pools")
        return plan, None

    def _apply_rules(self, plan: _Plan, req: Request, tr: Trace) -> tuple[_Plan, Decision | None]:
        """R32: run the custom rules of ``plan`` for ``req``.

        Returns the plan to steer with (the load balancer with the overrides of every rule
        that matched, later rules winning per field; ``plan`` itself when none did) and, when
        a matching rule has a ``fixed_response``, the decision that answers with it.
        """
        dc = self._datacenters.get(req.datacenter) if req.datacenter else None
        fields = Fields(
            host=req.host,
            method=req.method,
            uri=normalize_uri(req.uri),
            raw_uri=req.uri,
            version=req.version,
            headers=req.headers,
            cookies=req.cookies,
            client_ip=req.client_ip,
            load_balancer=plan.lb.name,
            region=dc.region if dc is not None else "",
            timestamp=int(req.wall),
        )
        matched: list[int] = []
        for index, rule, condition in plan.rules:
            label = _label("rule", index, rule.name, tr)
            if not condition.matches(fields):
                if tr.on:
                    tr.add(f"{label}: condition false")
                continue
            if rule.fixed_response is not None:
                return plan, _fixed_decision(plan, rule.fixed_response, tr, label)
            matched.append(index)
            if tr.on:
                changed = ", ".join(rule.overrides.changes()) or "nothing"
                stop = "; terminates" if rule.terminates else ""
                tr.add(f"{label}: matched; overrides {changed}{stop}")
            if rule.terminates:
                break
        if not matched:
            return plan, None
        key = tuple(matched)
        ruled = plan.ruled.get(key)
        if ruled is None:
            lb = _overridden(plan.lb, [plan.lb.rules[i].overrides for i in matched])
            if len(plan.ruled) >= _CACHE_LIMIT:  # rules on request fields: 2**n possible sets
                plan.ruled.clear()
            ruled = plan.ruled[key] = _Plan(lb, self.snapshot, local=self._local.enabled)
        return ruled, None

    # ------------------------------------------------------------------ affinity

    def _cookie_affinity(
        self, plan: _Plan, req: Request, rng: Random, live: Live, tr: Trace
    ) -> Decision:
        lb = plan.lb
        cookie = req.cookie
        if cookie and not tr.on:
            pin = self._pins.get(cookie)
            if pin is not None and pin.plan is plan and pin.expires > req.wall:
                return pin.decision  # before reading an Affinity member (module docstring)
        outcome = Affinity.NEW
        avoid = ""
        if cookie:
            value = verify(self._secret, cookie)
            if value is None or value.load_balancer != lb.name:
                outcome = Affinity.INVALID
            elif value.expires <= req.wall:
                outcome = Affinity.EXPIRED
            else:
                pinned = self._usable_pinned(plan, value.pool, value.endpoint, req, tr)
                if pinned is not None:
                    if not self._session_shed(pinned, req, tr):
                        self._remember_pin(cookie, plan, value.expires, pinned)
                        return self._hit(plan, pinned, tr)
                    avoid = pinned.pool
                outcome = Affinity.REMAPPED
            if tr.on:
                tr.add(f"affinity: __cflb {outcome}")
        if lb.affinity == "ip_cookie" and req.client_ip:
            # R38: clients of one IP without a usable cookie (none, forged, expired, or its
            # endpoint gone) get the same endpoint while the eligible set is unchanged.
            rng = KeyedDraws(req.client_ip)
            tr.add("affinity: ip_cookie, first choice seeded by the client IP")
        decision = self._steer(plan, req, rng, live, tr, avoid=avoid)
        ep = decision.endpoint
        set_cookie = self._cookie(lb, ep, req) if ep is not None else None
        return decision.with_affinity(outcome, set_cookie)

    def _remember_pin(self, cookie: str, plan: _Plan, expires: float, ep: EndpointView) -> None:
        shed = self.snapshot.pools[ep.pool].config.load_shedding
        if not ep.enabled or (shed is not None and shed.session_percent > 0):
            return  # draining (R40) or session shedding (R24) depend on the request
        if len(self._pins) >= _CACHE_LIMIT:
            self._pins.clear()
        self._pins[cookie] = _Pin(plan, expires, self._hit(plan, ep, NO_TRACE))

    def _header_affinity(
        self, plan: _Plan, req: Request, rng: Random, live: Live, tr: Trace
    ) -> Decision:
        lb = plan.lb
        attrs = lb.session_affinity_attributes
        key = session_key(
            attrs.headers, req.headers, req.cookies, require_all=attrs.require_all_headers
        )
        if key is None:
            tr.add("affinity: header, configured headers absent: no session")
            return self._steer(plan, req, rng, live, tr)
        avoid = ""
        pinned_key = self._sessions.peek(lb.name, key, req.now, lb.effective_affinity_ttl)
        if pinned_key is None:
            outcome = Affinity.NEW
        else:
            pool_name, _, name = pinned_key.partition("/")
            pinned = self._usable_pinned(plan, pool_name, name, req, tr)
            if pinned is not None:
                if not self._session_shed(pinned, req, tr):
                    # Honoured: storing it again restarts its idle timer (sliding TTL).
                    touch = HeaderSession(lb.name, key, pinned_key, req.now)
                    return self._hit(plan, pinned, tr)._replace(remember=touch)
                avoid = pinned.pool
            outcome = Affinity.REMAPPED
        decision = self._steer(plan, req, rng, live, tr, avoid=avoid)
        ep = decision.endpoint
        remember = HeaderSession(lb.name, key, ep.key, req.now) if ep is not None else None
        return decision.with_affinity(outcome, remember=remember)

    @staticmethod
    def _header_session(lb: LoadBalancer, req: Request, ep: EndpointView) -> HeaderSession | None:
        """The header session pinning ``req`` to ``ep``, if its headers make one (R39)."""
        attrs = lb.session_affinity_attributes
        key = session_key(
            attrs.headers, req.headers, req.cookies, require_all=attrs.require_all_headers
        )
        return None if key is None else HeaderSession(lb.name, key, ep.key, req.now)

    def _usable_pinned(
        self, plan: _Plan, pool_name: str, name: str, req: Request, tr: Trace
    ) -> EndpointView | None:
        """The pinned endpoint if a session may still use it (R36, R37, R40, R24)."""
        if pool_name not in plan.pool_names:
            return None
        ep = self._by_name.get((pool_name, name))
        if ep is None:
            return None
        pool = self.snapshot.pools[pool_name]
        if not ep.enabled:
            drain = plan.lb.session_affinity_attributes.drain_duration
            if drain > 0 and ep.disabled_at is not None and req.now - ep.disabled_at < drain:
                if tr.on:
                    tr.add(f"affinity: {ep.key} disabled, draining for {drain:g}s")
                return ep
            return None
        if ep.health is not Health.HEALTHY or not (pool.eligible or pool is plan.fallback):
            return None
        return ep

    def _session_shed(self, ep: EndpointView, req: Request, tr: Trace) -> bool:
        """R24: whether ``session_percent`` moves this session out of the endpoint's pool."""
        shed = self.snapshot.pools[ep.pool].config.load_shedding
        if (
            shed is not None
            and shed.session_percent > 0
            and ip_bucket(req.client_ip, ep.pool) < shed.session_percent
        ):
            if tr.on:
                tr.add(f"affinity: session shed from pool {ep.pool}")
            return True
        return False

    def _hit(self, plan: _Plan, ep: EndpointView, tr: Trace) -> Decision:
        pool = self.snapshot.pools[ep.pool]
        if tr.on:
            tr.add(f"affinity: session pinned to {ep.key}; weights and policy skipped")
        return plan.decision(pool, ep, DecisionReason.AFFINITY, tr)

    def _cookie(
        self, lb: LoadBalancer, ep: EndpointView, req: Request, *, expires: float | None = None
    ) -> str:
        if expires is None:
            expires = req.wall + lb.effective_affinity_ttl
        return sign(self._secret, lb.name, ep.pool, ep.name, expires)

    # ------------------------------------------------------------------ pools

    def _steer(
        self,
        plan: _Plan,
        req: Request,
        rng: Random,
        live: Live,
        tr: Trace,
        *,
        avoid: str = "",
    ) -> Decision:
        route = self._route(plan, req)
        dc_key = req.datacenter if plan.fast_by_datacenter else ""
        fast_key = f"{dc_key}|{req.country}" if plan.by_country and req.country else dc_key
        if not tr.on and plan.affinity == "none" and fast_key not in plan.fast:
            self._compile_fast(plan, route, fast_key, dc_key)  # for the next decide()
        if tr.on:
            self._trace_route(route, tr)
        pools = route.eligible
        if route.sheds:
            pools = self._unshed(pools, req, rng, tr)
        if avoid:  # a session shed from this pool (R24) is steered as if it were unavailable
            pools = tuple(p for p in pools if p.name != avoid)
        if not pools:
            return self._fallback(plan, req, rng, live, tr)
        pool = (
            pools[0] if plan.policy in _ORDERED else self._pick_pool(plan, route, pools, live, rng)
        )
        if pool is None:
            return self._fallback(plan, req, rng, live, tr)
        if tr.on:
            tr.add(f"pool {pool.name} chosen by {plan.policy}")
        ep = self._pick_endpoint(pool, req, rng, live, tr)
        if ep is None:  # pragma: no cover - eligible pools always have a selectable endpoint
            return self._fallback(plan, req, rng, live, tr)
        return plan.decision(pool, ep, DecisionReason.POLICY, tr)

    def _compile_fast(self, plan: _Plan, route: _Route, key: str, dc: str) -> None:
        """Cache under ``key`` the fast-path entry of ``plan`` for data center ``dc`` (see
        :class:`_Fast` and :class:`_FastPools`); the key also holds the client's country when
        the route depends on it and the request carries one (without one the data center's
        decides: the plain key)."""
        fast: _Fast | None = None
        eligible = route.eligible
        if len(plan.fast) >= _CACHE_LIMIT:  # dc comes from a request header
            return
        if plan.policy in _ORDERED and not route.sheds and eligible and not eligible[0].ramping:
            fast = self._fast_entry(plan, eligible[0], dc)
        elif (
            plan.policy == "random"
            and not route.sheds
            and eligible
            and route.cumulative[-1] > 0
            and not any(p.ramping for p in eligible)
        ):
            entries = tuple(self._fast_entry(plan, p, dc) for p in eligible)
            if all(
                f.endpoints.items and f.endpoints.total > 0 and f.wide.items and f.wide.total > 0
                for f in entries
            ):  # defensive: a route's eligible pools have selectable endpoints (weight > 0, see
                # _route), so this holds; kept so that no pick could give -1 (general: items[0])
                plan.fast_pools[key] = _FastPools(route.cumulative, route.cumulative[-1], entries)
        plan.fast[key] = fast

    def _fast_entry(self, plan: _Plan, pool: PoolView, dc: str) -> _Fast:
        """The :class:`_Fast` entry of ``pool`` for data center ``dc``: its endpoint sets (the
        local one with local preference) and their decisions."""
        wide = self._endpoint_set(pool, "", fallback=False)
        local = self._local
        if local.enabled and dc:
            eps, spill = self._endpoint_set(pool, dc, fallback=False), local.spill
        else:
            eps, spill = wide, 0.0
        made = tuple(plan.decision(pool, e, DecisionReason.POLICY, NO_TRACE) for e in eps.items)
        wide_made = tuple(
            plan.decision(pool, e, DecisionReason.POLICY, NO_TRACE) for e in wide.items
        )
        return _Fast(eps, made, wide, wide_made, spill, pool.config.origin_steering.policy)

    def _pick_pool(
        self,
        plan: _Plan,
        route: _Route,
        pools: tuple[PoolView, ...],
        live: Live,
        rng: Random,
    ) -> PoolView | None:
        policy = plan.policy
        if policy == "random":
            if pools is route.eligible:
                return weighted(pools, route.cumulative, rng) if route.cumulative[-1] > 0 else None
            ws = [_pool_weight(plan.lb, p) for p in pools]
            return weighted_dynamic(pools, ws, rng)
        if policy == "least_outstanding_requests":
            counts = live.pool_in_flight
            ws = [_pool_weight(plan.lb, p) / (counts.get(p.name, 0) + 1) for p in pools]
            return weighted_dynamic(pools, ws, rng)
        if policy == "least_connections":
            counts = live.pool_connections
            ws = [_pool_weight(plan.lb, p) / (counts.get(p.name, 0) + 1) for p in pools]
            return weighted_dynamic(pools, ws, rng)
        # off, geo, proximity, dynamic_latency: the route is already in the policy's order.
        return pools[0]

    def _unshed(
        self, pools: tuple[PoolView, ...], req: Request, rng: Random, tr: Trace
    ) -> tuple[PoolView, ...]:
        """R24: drop the pools that shed this (non-session) request.

        A pool ramping up after it became eligible again (``slow_start``) keeps only its
        ramp's share of requests; the others go on as if it were still unavailable.
        """
        kept = []
        for p in pools:
            if p.ramp is not None:
                share = ramp(req.now, *p.ramp)
                if share < 1.0 and rng.random() >= share:
                    if tr.on:
                        tr.add(f"pool {p.name}: slow start, {share:.0%} of requests")
                    continue
            shed = p.config.load_shedding
            if shed is not None and shed.default_percent > 0:
                if shed.default_policy == "hash":
                    x = ip_bucket(req.client_ip, p.name)
                else:
                    x = rng.random() * 100.0
                if x < shed.default_percent:
                    if tr.on:
                        tr.add(f"pool {p.name}: request shed ({shed.default_percent:g}%)")
                    continue
            kept.append(p)
        return tuple(kept)

    def _fallback(self, plan: _Plan, req: Request, rng: Random, live: Live, tr: Trace) -> Decision:
        """R30: the fallback pool with its health ignored, or 530 / 1016."""
        pool = plan.fallback
        if pool is None or not pool.config.enabled:
            tr.add("no eligible pool and the fallback pool is disabled: 530 / 1016")
            return self._no_pool(plan, None, tr)
        if tr.on:
            tr.add(f"no eligible pool: fallback pool {pool.name}, health ignored")
        ep = self._pick_endpoint(pool, req, rng, live, tr, fallback=True)
        if ep is None:
            if tr.on:
                tr.add(f"fallback pool {pool.name} has no enabled endpoint: 530 / 1016")
            return self._no_pool(plan, pool, tr)
        return plan.decision(pool, ep, DecisionReason.FALLBACK, tr)

    @staticmethod
    def _no_pool(plan: _Plan, pool: PoolView | None, tr: Trace) -> Decision:
        """530 / error 1016 (R30)."""
        return Decision(
            load_balancer=plan.lb,
            pool=pool,
            endpoint=None,
            reason=DecisionReason.NO_POOL,
            policy=plan.policy,
            status=530,
            trace=tr.lines,
        )

    # ------------------------------------------------------------------ endpoints

    def _pick_endpoint(
        self,
        pool: PoolView,
        req: Request,
        rng: Random,
        live: Live,
        tr: Trace,
        *,
        exclude: tuple[str, ...] = (),
        fallback: bool = False,
    ) -> EndpointView | None:
        if self._local.enabled or fallback:
            eps = self._endpoints(pool, req, rng, fallback=fallback)
        else:
            eps = self._endpoint_sets.get((pool.name, "", False)) or self._endpoint_set(
                pool, "", fallback=False
            )
        if exclude:
            kept = [e for e in eps.items if e.key not in exclude]
            if not kept and eps.note:
                # Local preference narrowed the set; a retry may use any other endpoint of
                # the pool (R42), so widen to the whole set.
                wide = self._endpoint_set(pool, "", fallback=fallback)
                kept = [e for e in wide.items if e.key not in exclude]
            if not kept:
                return None
            eps = _Endpoints.of(eps.pool, kept, eps.note)
        items = eps.items
        if not items:
            return None
        if tr.on and eps.note:
            tr.add(eps.note)
        policy = pool.config.origin_steering.policy
        if tr.on:
            self._trace_health_extensions(pool, policy, req, tr)
        if pool.ramping and policy != "hash":
            i = self._ramped_index(eps, policy, req, rng, live)
        else:
            i = self._index(eps, policy, req, rng, live)
        # every weight is zero (-1): only the fallback pool gets here
        ep = eps.items[max(i, 0)]
        if tr.on:
            tr.add(f"endpoint {ep.key} chosen by {policy} among {len(eps.items)}")
        return ep

    @staticmethod
    def _trace_health_extensions(pool: PoolView, policy: str, req: Request, tr: Trace) -> None:
        """Say which endpoints flap damping or passive health hold out and which ramp up
        (``slow_start``)."""
        for e in pool.endpoints:
            if e.damped:
                tr.add(f"endpoint {e.key}: {e.damped}")
            elif e.ejected:
                tr.add(f"endpoint {e.key}: {e.ejected}")
            elif e.ramp is not None and policy != "hash" and e.selectable:
                share = ramp(req.now, *e.ramp)
                tr.add(f"endpoint {e.key}: slow start, at {share:.0%} of its weight")

    @staticmethod
    def _ramped_index(eps: _Endpoints, policy: str, req: Request, rng: Random, live: Live) -> int:
        """:meth:`_index` with weights scaled by their ``slow_start`` ramps at ``req.now``,
        computed per request (only while a ramp runs; ``hash`` is never ramped: it would move
        sessions twice)."""
        weights = [
            w * ramp(req.now, *e.ramp) if e.ramp is not None else w
            for w, e in zip(eps.weights, eps.items, strict=True)
        ]
        if policy != "random":  # R21 over the ramped weights
            by_pool = (
                live.connections_by_pool
                if policy == "least_connections"
                else live.in_flight_by_pool
            )
            counts = by_pool.get(eps.pool)
            if counts is not None:
                weights = load_terms(weights, _slots(counts, eps.items), counts.counts)
        picked = weighted_dynamic(range(len(weights)), weights, rng)
        return -1 if picked is None else picked

    @staticmethod
    def _index(eps: _Endpoints, policy: str, req: Request, rng: Random, live: Live) -> int:
        """The position of the endpoint policy's pick in a non-empty set; -1 when every weight
        is 0."""
        if policy == "random":  # R19
            if eps.total <= 0:
                return -1
            i = bisect(eps.cumulative, rng.random() * eps.total)
            return i if i < len(eps.items) else len(eps.items) - 1
        if policy == "hash":  # R20
            return rendezvous(req.client_ip, range(len(eps.items)), eps.names, eps.weights)
        # R21, from the pool's Counts (read through the set's memo of their slots).
        by_pool = (
            live.connections_by_pool if policy == "least_connections" else live.in_flight_by_pool
        )
        return eps.load_index(by_pool.get(eps.pool), rng)

    def _endpoints(
        self, pool: PoolView, req: Request, rng: Random, *, fallback: bool
    ) -> _Endpoints:
        """The endpoints to pick from: selectable ones, local-first when configured."""
        local = self._local
        dc = req.datacenter if local.enabled else ""
        if dc and local.spill > 0 and rng.random() < local.spill:
            dc = ""
        return self._endpoint_set(pool, dc, fallback=fallback)

    def _endpoint_set(self, pool: PoolView, dc: str, *, fallback: bool) -> _Endpoints:
        cache_key = (pool.name, dc, fallback)
        found = self._endpoint_sets.get(cache_key)
        if found is None:
            found = self._compute_endpoints(pool, dc, fallback=fallback)
            if len(self._endpoint_sets) < _CACHE_LIMIT:  # dc comes from a request header
                self._endpoint_sets[cache_key] = found
        return found

    def _compute_endpoints(self, pool: PoolView, dc: str, *, fallback: bool) -> _Endpoints:
        items: Sequence[EndpointView] = pool.selectable
        note = ""
        if fallback and not items:
            # Open question 12: inside the fallback pool healthy endpoints are used when some
            # exist; otherwise every enabled endpoint, health ignored (R30).
            items = [e for e in pool.endpoints if e.enabled and e.weight > 0] or [
                e for e in pool.endpoints if e.enabled
            ]
            note = f"fallback pool {pool.name}: no healthy endpoint, health ignored"
        if dc and items:
            local = [e for e in items if dc in e.datacenters]
            if local:
                note = f"local preference: {len(local)} endpoint(s) in {dc}"
                return _Endpoints.of(pool.name, local, note)
            nearest = geo.nearest(
                items, self._datacenters.get(dc), lambda e: e.datacenters, self._datacenters
            )
            if nearest:
                note = f"local preference: none in {dc}; nearest used"
                return _Endpoints.of(pool.name, nearest, note)
        return _Endpoints.of(pool.name, items, note)

    # ------------------------------------------------------------------ compiled plans

    def _plan(self, host: str) -> _Plan | None:
        try:
            return self._plans[host]
        except KeyError:
            pass
        lb = self.snapshot.load_balancer(host)
        plan = _Plan(lb, self.snapshot, local=self._local.enabled) if lb is not None else None
        if plan is not None or len(self._plans) < 10_000:
            self._plans[host] = plan
        return plan

    def _route(self, plan: _Plan, req: Request) -> _Route:
        dc = req.datacenter if plan.by_datacenter else ""
        key = f"{dc}|{req.country}" if plan.by_country else dc
        route = plan.routes.get(key)
        if route is None:
            route = self._compute_route(plan, dc, req.country if plan.by_country else "")
            if len(plan.routes) < _CACHE_LIMIT:  # key comes from request headers
                plan.routes[key] = route
        return route

    def _compute_route(self, plan: _Plan, dc_code: str, country: str = "") -> _Route:
        """The candidate pools for a request from ``dc_code``; ``country_pools`` is looked up
        with the client's ``country`` when known, else the data center's (docs/semantics.md)."""
        lb, pools = plan.lb, self.snapshot.pools
        label, names = "default_pools", lb.default_pools
        dc = self._datacenters.get(dc_code) if dc_code else None
        if plan.policy == "geo" and (dc_code or country):
            for label_, mapping, k in (
                ("pop_pools", lb.pop_pools, dc_code),
                ("country_pools", lb.country_pools, country or (dc.country if dc else "")),
                ("region_pools", lb.region_pools, dc.region if dc else ""),
            ):
                if k and k in mapping:
                    label, names = f"{label_}[{k}]", mapping[k]
                    break
        candidates = tuple(pools[n] for n in names if n in pools)
        eligible = tuple(p for p in candidates if p.eligible and p.selectable)
        if plan.policy == "proximity" and dc is not None:
            eligible = tuple(sorted(eligible, key=lambda p: _pool_distance(dc, p)))
        elif plan.policy == "dynamic_latency":
            eligible = tuple(sorted(eligible, key=lambda p: _pool_rtt(p, dc_code, dc)))
        weights = tuple(_pool_weight(lb, p) for p in eligible)
        cumulative, total = [], 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        sheds = any(
            (p.config.load_shedding is not None and p.config.load_shedding.default_percent > 0)
            or p.ramp is not None
            for p in eligible
        )
        return _Route(label, candidates, eligible, tuple(cumulative), weights, sheds)

    def _trace_route(self, route: _Route, tr: Trace) -> None:
        tr.add(f"candidates from {route.label}: {[p.name for p in route.candidates]}")
        for p in route.candidates:
            if p not in route.eligible:
                tr.add(f"pool {p.name} excluded: {_why_not(p)}")


def _overridden(lb: LoadBalancer, overrides: Sequence[RuleOverrides]) -> LoadBalancer:
    """R32: ``lb`` with custom rules' overrides applied in turn, field by field (a later rule
    wins), without its rules.  ``pool_weights`` and ``pool_default_weight`` replace the two
    halves of ``random_steering``; ``pools`` (the last rule's that sets it) replaces the
    resolved candidate pools whatever the policy, so the geo mappings no longer apply."""
    changes: dict[str, Any] = {}
    pools: tuple[str, ...] | None = None
    for o in overrides:
        fields = o.changes()
        pools = fields.pop("pools", pools)
        weights = fields.pop("pool_weights", None)
        default = fields.pop("pool_default_weight", None)
        changes.update(fields)
        if weights is not None or default is not None:
            rs = changes.get("random_steering", lb.random_steering)
            changes["random_steering"] = RandomSteering(
                pool_weights=rs.pool_weights if weights is None else weights,
                default_weight=rs.default_weight if default is None else default,
            )
    if pools is not None:
        changes.update(default_pools=pools, region_pools={}, country_pools={}, pop_pools={})
    return dataclasses.replace(lb, rules=(), **changes)


def _label(kind: str, index: int, name: str, tr: Trace) -> str:
    """How the trace names a pool set or a rule ("" when not tracing)."""
    return "" if not tr.on else f"{kind} {index}" + (f" ({name})" if name else "")


def _fixed_decision(plan: _Plan, fixed: FixedResponse, tr: Trace, label: str) -> Decision:
    """The answer of a pool set's (R31) or a custom rule's (R32) ``fixed_response``;
    ``label`` names the set or rule in the trace."""
    if tr.on:
        tr.add(f"{label}: matched; fixed response {fixed.status_code}")
    return Decision(
        load_balancer=plan.lb,
        pool=None,
        endpoint=None,
        reason=DecisionReason.FIXED_RESPONSE,
        policy="rules",
        status=fixed.status_code,
        trace=tr.lines,
        fixed=fixed,
    )


def _pool_set_matches(ps: PoolSet, code: str, dc: Datacenter | None, country: str = "") -> bool:
    """R31: no match, or ``default``, matches every request; a topology matches when every
    list it sets holds the request's data center, its country or its region (AND across the
    lists, as Cloudflare's documentation says; open question 8).  The country is the
    client's when known, else the data center's (the pool-sets page)."""
    match = ps.match
    if match is None or match.default:
        return True
    t = match.topology
    if t is None:
        return False
    if t.pops and code not in t.pops:
        return False
    if t.countries and (country or (dc.country if dc else "")) not in t.countries:
        return False
    return not t.regions or (dc is not None and dc.region in t.regions)


def _why_not(p: PoolView) -> str:
    if not p.config.enabled:
        return "disabled"
    if not p.eligible:
        return f"{p.state}: {p.healthy_count} healthy < minimum_origins {p.config.minimum_origins}"
    return "no enabled healthy endpoint with weight > 0"


def _pool_weight(lb: LoadBalancer, p: PoolView) -> float:
    rs = lb.random_steering
    return rs.pool_weights.get(p.name, rs.default_weight)


def _pool_distance(dc: Datacenter, p: PoolView) -> float:
    """R29; pools without coordinates sort last (open question 13)."""
    lat, lon = p.config.latitude, p.config.longitude
    if lat is None or lon is None or dc.latitude is None or dc.longitude is None:
        return math.inf
    return geo.distance_km(dc.latitude, dc.longitude, lat, lon)


def _pool_rtt(p: PoolView, dc_code: str, dc: Datacenter | None) -> float:
    """R28: the EWMA RTT seen from the request's region (or data center), else the mean."""
    for key in (dc_code, dc.region if dc else ""):
        if key and key in p.rtt:
            return p.rtt[key]
    if p.rtt:
        return sum(p.rtt.values()) / len(p.rtt)
    return math.inf  # no data: after pools with data, in failover order (sorted is stable)
