"""The attempt policy: after an attempt to an endpoint failed, retry where, or answer what.

Why one pure function: the proxy (``lb/proxy/exchange.py``) and the simulator
(``lb/sim/traffic.py``) must retry the same failures the same number of times, and a rule
written twice drifts (the simulator once had no stale-connection retry at all).  Both describe
the failed attempt with the same facts and follow :func:`next_step`; neither decides on its
own.  The table it implements is in ``docs/proxy.md`` ("Retries") and ``docs/semantics.md``.

Two retries exist, each at most once per request, and both go out on a *fresh* connection:

* **zero-downtime failover** (R42-R45, ``docs/semantics.md``): connecting to the endpoint
  failed with one of the engine's ``zero_downtime_failover_codes`` (521, 522, 523 by default):
  ask the router for another endpoint (:meth:`steering.Router.retry`, which may find none;
  then the failure's status is the answer).  Only the connection failed, so the request never
  left and any request can go elsewhere.  An HTTP answer is never retried, whatever its status.
* **stale pooled connection**: a *reused* keep-alive connection broke (EOF or reset, while
  sending or waiting for the head) before any response byte.  That is the race of an endpoint
  closing an idle connection just as the request was sent (Node.js closes idle connections
  after 5 s; many servers after their keep-alive timeout).  Retried on a fresh connection to
  the same endpoint when the request can be sent again: its whole body was buffered (a
  bodiless request counts), or no body byte was taken from the client yet and either nothing
  was written or the method is replayable (idempotent, or with an Idempotency-Key: Go's
  ``net/http`` transport rule).  The buffered-body case is HAProxy's ``retry-on
  conn-failure empty-response`` with its request buffer; Go's transport retries only requests
  it can rewind (``GetBody``), which is the same idea.

Without ``retry_on``, no retry follows a retry's failure except one: a stale retry whose
fresh dial fails to connect may still fail over (the endpoint died under its pooled
connection).  With it, the retries below may follow those two, and those two them, within
``num_retries`` and the budget.

Beyond Cloudflare: ``retry_on``
-------------------------------

Off unless a load balancer (or the pool of the failed endpoint) sets ``retry_on``
(``docs/semantics.md``, "Retries beyond Cloudflare").  Then a third kind of retry exists,
:attr:`Action.RETRY`, for what the two above leave as the answer:

* ``reset``: the connection closed or was reset before any response byte
  (:attr:`Failure.CLOSED_BEFORE_RESPONSE` not already retried as a stale connection);
* ``empty_response``: it closed after part of the response head
  (:attr:`Failure.CLOSED_IN_RESPONSE`);
* ``truncated``: it closed in the middle of a response body the proxy was reading whole
  before relaying any of it (:attr:`Failure.TRUNCATED`; ``retry_on.buffer_response``,
  :func:`buffer_bound`): nothing reached the client, so it is a failure like a reset before
  the answer.  A response streamed to the client is past retrying and never comes here;
* a status of ``retry_on.statuses`` (:attr:`Failure.STATUS`, with the status ``answered``).

Only an idempotent method whose body can be sent again (buffered, or not one byte taken from
the client) is retried, at most ``num_retries`` times, each to another endpoint when the
router finds one (else the same one, on a fresh connection).  A request's first such retry
also needs room in the load balancer's retry budget (:mod:`lb.core.budget`); when the budget
is spent the request gets its own answer and the step says so (:attr:`Step.refused`).
HAProxy's ``retry-on`` (conditions named one by one) and Envoy's retry policy and retry
budgets are the models.  Zero-downtime failover and the stale-connection retry come first,
unchanged and outside the budget: ``retry_on`` only ever adds retries to Cloudflare's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from lb.config.model import LoadBalancer, Pool, RetryOn
from lb.core.budget import RetryBudget

__all__ = [
    "Action",
    "Body",
    "Failure",
    "Retry",
    "Step",
    "buffer_bound",
    "next_step",
    "retry_on_for",
    "status_of",
]


class Failure(StrEnum):
    """What went wrong with one attempt (the connection, or the exchange on it)."""

    CONNECT_REFUSED = "connect_refused"
    """Refused, or reset before the TLS handshake could start (a dying tunnel): 521."""
    CONNECT_TIMEOUT = "connect_timeout"
    """No TCP connection (and TLS handshake) within ``connect_timeout``: 522."""
    UNREACHABLE = "unreachable"
    """DNS failure or no route: 523."""
    TLS_HANDSHAKE = "tls_handshake"
    """The TLS handshake failed (or the Host cannot be a TLS server name): 525."""
    TLS_CERTIFICATE = "tls_certificate"
    """The endpoint's certificate did not verify: 526."""
    CLOSED_BEFORE_RESPONSE = "closed_before_response"
    """EOF or reset while sending the request or waiting for the head, no response byte
    received; on a reused connection this is the stale-connection race: 502."""
    CLOSED_IN_RESPONSE = "closed_in_response"
    """EOF or reset after part of the response head: 502."""
    PROTOCOL = "protocol"
    """The endpoint's answer was not valid HTTP/1.1 (or an unasked 101): 502."""
    BAD_CONFIG = "bad_config"
    """The request could not be built from the configuration (an unsafe Host): 502."""
    RESPONSE_TIMEOUT = "response_timeout"
    """No response within ``request_timeout``: 524."""
    TRUNCATED = "truncated"
    """EOF or reset in a response body read whole before any of it was relayed
    (:func:`buffer_bound`): the client has nothing yet: 502."""
    STATUS = "status"
    """A whole response head whose status ``retry_on.statuses`` names (the ``answered``
    argument of :func:`next_step`); its answer is that response itself."""


_STATUS = {
    Failure.CONNECT_REFUSED: 521,
    Failure.CONNECT_TIMEOUT: 522,
    Failure.UNREACHABLE: 523,
    Failure.TLS_HANDSHAKE: 525,
    Failure.TLS_CERTIFICATE: 526,
    Failure.CLOSED_BEFORE_RESPONSE: 502,
    Failure.CLOSED_IN_RESPONSE: 502,
    Failure.TRUNCATED: 502,
    Failure.PROTOCOL: 502,
    Failure.BAD_CONFIG: 502,
    Failure.RESPONSE_TIMEOUT: 524,
}

CONNECT_FAILURES = frozenset(
    {
        Failure.CONNECT_REFUSED,
        Failure.CONNECT_TIMEOUT,
        Failure.UNREACHABLE,
        Failure.TLS_HANDSHAKE,
        Failure.TLS_CERTIFICATE,
    }
)
"""Failures before the connection stood: the request never left."""


def retry_on_for(load_balancer: LoadBalancer | None, pool: Pool | None) -> RetryOn | None:
    """The ``retry_on`` that applies to an attempt at an endpoint of ``pool``: the pool's
    own, else its load balancer's; None (Cloudflare's retries only) when neither sets one."""
    if pool is not None and pool.retry_on is not None:
        return pool.retry_on
    return load_balancer.retry_on if load_balancer is not None else None


def status_of(failure: Failure) -> int:
    """The Cloudflare status of ``failure`` (``engine.error_style`` may show another)."""
    return _STATUS[failure]


class Body(StrEnum):
    """Where the request body stands when an attempt fails."""

    BUFFERED = "buffered"
    """Whole body in hand (or no body): the request can be sent again as it was."""
    UNTOUCHED = "untouched"
    """A body still at the client, not one byte taken yet (it is streamed when sent)."""
    STREAMED = "streamed"
    """Part of the body was streamed upstream and is gone: the request cannot be sent again."""


class Retry(StrEnum):
    """The retries a request can get (``RequestRecord.retried``, the metrics label)."""

    FAILOVER = "zero_downtime_failover"
    STALE = "stale_connection"
    RETRY_ON = "retry_on"


class Action(StrEnum):
    """What to do after a failed attempt."""

    FAILOVER = "failover"
    """Ask the router for another endpoint (R42); none found: answer :attr:`Step.status`."""
    FRESH = "fresh"
    """Send the request again on a fresh connection to the same endpoint."""
    RETRY = "retry"
    """``retry_on``: ask the router for another endpoint; none found: the same endpoint on
    a fresh connection."""
    ANSWER = "answer"
    """Answer :attr:`Step.status`; nothing more is tried."""


@dataclass(frozen=True, slots=True)
class Step:
    """The policy's answer: an action, and the status answered if no retry happens."""

    action: Action
    status: int
    reason: str = ""
    """The ``retry_on`` condition that matched (``reset``, ``empty_response``, ``502``...);
    empty for Cloudflare's own retries and for answers no condition matched."""
    budget: bool = False
    """This retry is the request's first ``retry_on`` retry: it takes a place in the budget
    (the caller calls :meth:`RetryBudget.retrying_now`)."""
    refused: bool = False
    """A ``retry_on`` retry was due but the budget was spent: the answer stands."""

    @property
    def retry(self) -> Retry | None:
        """The retry this step starts, if any."""
        return _RETRY.get(self.action)


_RETRY = {Action.FAILOVER: Retry.FAILOVER, Action.FRESH: Retry.STALE, Action.RETRY: Retry.RETRY_ON}

_CONDITION = {
    Failure.CLOSED_BEFORE_RESPONSE: "reset",
    Failure.CLOSED_IN_RESPONSE: "empty_response",
    Failure.TRUNCATED: "truncated",
}
"""The ``retry_on`` condition each failure is (statuses are their own)."""


def next_step(
    failure: Failure,
    *,
    reused: bool,
    body: Body,
    sent: bool,
    replayable: bool,
    retries: Sequence[Retry],
    failover_codes: Collection[int],
    idempotent: bool = False,
    retry_on: RetryOn | None = None,
    budget: RetryBudget | None = None,
    answered: int = 0,
) -> Step:
    """What follows an attempt that failed with ``failure``.

    Args:
        failure: what went wrong.
        reused: the attempt went out on a pooled (kept-alive) connection.
        body: where the request body stands.
        sent: any byte of the request was written to the connection.
        replayable: the method is idempotent or the request has an Idempotency-Key.
        retries: the retries this request already had, in order.
        failover_codes: the engine's ``zero_downtime_failover_codes``.
        idempotent: the method is idempotent (RFC 9110 §9.2.2); ``retry_on`` asks for it.
        retry_on: the ``retry_on`` of the failed endpoint's pool, else of the load balancer;
            None: Cloudflare's retries only.
        budget: the load balancer's retry budget; None: no budget applies.
        answered: for :attr:`Failure.STATUS`, the status of the response.
    """
    status = answered if failure is Failure.STATUS else _STATUS[failure]
    if failure in CONNECT_FAILURES:
        if Retry.FAILOVER not in retries and status in failover_codes:
            return Step(Action.FAILOVER, status)
        return Step(Action.ANSWER, status)
    if (
        failure is Failure.CLOSED_BEFORE_RESPONSE
        and reused
        and not retries
        and (body is Body.BUFFERED or (body is Body.UNTOUCHED and (replayable or not sent)))
    ):
        return Step(Action.FRESH, status)
    if retry_on is None:
        return Step(Action.ANSWER, status)
    return _retry_on(failure, status, retry_on, budget, body, idempotent, retries)


_NEVER_BUFFERED = frozenset({204, 304})
"""Statuses without a body (RFC 9110 §15.3.5, §15.4.5): nothing to read whole."""


def buffer_bound(
    retry_on: RetryOn | None,
    *,
    idempotent: bool,
    body: Body,
    bodiless: bool,
    status: int,
    length: int | None,
    chunked: bool,
) -> int:
    """How many response body bytes to read whole before relaying any (``retry_on.
    buffer_response``), so that a close in the body is :attr:`Failure.TRUNCATED` and may be
    retried; 0: stream the response as it comes (the default, and Cloudflare's way).

    Only a response that :func:`next_step` could retry is worth the wait: to a request
    ``retry_on`` may send again (idempotent, its body not streamed away), with ``truncated``
    among the conditions.  Its length must be known and within the bound: a
    ``Content-Length`` up to ``buffer_response``, or a chunked body (which the caller reads
    until it ends or passes the bound, then streams the rest: a larger one cannot be retried).
    A response delimited by the close (no length, not chunked) is streamed: its end is a
    close, so a cut could not be told from the end.  Never buffered: the answer to a HEAD
    (``bodiless``), a 1xx (an upgrade's 101 included), 204 and 304 (no body), and a status
    ``retry_on.statuses`` names (it is retried or relayed on its head alone).

    Args:
        retry_on: the ``retry_on`` of the endpoint's pool, else of its load balancer.
        idempotent: the request method is idempotent (RFC 9110 §9.2.2).
        body: where the request body stands.
        bodiless: the request was a HEAD: the response has no body whatever its head says.
        status: the response status.
        length: the response's Content-Length, None when it has none.
        chunked: the response body is chunked.
    """
    if retry_on is None or not retry_on.buffer_response:
        return 0
    bound = retry_on.buffer_response
    if (
        "truncated" not in retry_on.conditions
        or not idempotent
        or body is Body.STREAMED
        or bodiless
        or status < 200
        or status in _NEVER_BUFFERED
        or status in retry_on.statuses
    ):
        return 0
    if length is not None:
        return bound if length <= bound else 0
    return bound if chunked else 0


def _retry_on(
    failure: Failure,
    status: int,
    retry_on: RetryOn,
    budget: RetryBudget | None,
    body: Body,
    idempotent: bool,
    retries: Sequence[Retry],
) -> Step:
    """The ``retry_on`` part of :func:`next_step` (see the module docstring)."""
    if failure is Failure.STATUS:
        reason = str(status) if status in retry_on.statuses else ""
    else:
        reason = _CONDITION.get(failure, "")
        if reason not in retry_on.conditions:
            reason = ""
    if not reason or not idempotent or body is Body.STREAMED:
        return Step(Action.ANSWER, status)
    done = retries.count(Retry.RETRY_ON)
    if done >= retry_on.num_retries:
        return Step(Action.ANSWER, status, reason)
    first = done == 0
    if (
        first
        and budget is not None
        and not budget.allows(retry_on.budget_percent, retry_on.min_retry_concurrency)
    ):
        return Step(Action.ANSWER, status, reason, refused=True)
    return Step(Action.RETRY, status, reason, budget=first and budget is not None)
