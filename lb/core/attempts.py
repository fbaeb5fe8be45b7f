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

No retry follows a retry's failure except one: a stale retry whose fresh dial fails to
connect may still fail over (the endpoint died under its pooled connection).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Action", "Body", "Failure", "Retry", "Step", "next_step", "status_of"]


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


_STATUS = {
    Failure.CONNECT_REFUSED: 521,
    Failure.CONNECT_TIMEOUT: 522,
    Failure.UNREACHABLE: 523,
    Failure.TLS_HANDSHAKE: 525,
    Failure.TLS_CERTIFICATE: 526,
    Failure.CLOSED_BEFORE_RESPONSE: 502,
    Failure.CLOSED_IN_RESPONSE: 502,
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


class Action(StrEnum):
    """What to do after a failed attempt."""

    FAILOVER = "failover"
    """Ask the router for another endpoint (R42); none found: answer :attr:`Step.status`."""
    FRESH = "fresh"
    """Send the request again on a fresh connection to the same endpoint."""
    ANSWER = "answer"
    """Answer :attr:`Step.status`; nothing more is tried."""


@dataclass(frozen=True, slots=True)
class Step:
    """The policy's answer: an action, and the status answered if no retry happens."""

    action: Action
    status: int

    @property
    def retry(self) -> Retry | None:
        """The retry this step starts, if any."""
        return _RETRY.get(self.action)


_RETRY = {Action.FAILOVER: Retry.FAILOVER, Action.FRESH: Retry.STALE}


def next_step(
    failure: Failure,
    *,
    reused: bool,
    body: Body,
    sent: bool,
    replayable: bool,
    retries: Sequence[Retry],
    failover_codes: Collection[int],
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
    """
    status = _STATUS[failure]
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
    return Step(Action.ANSWER, status)
