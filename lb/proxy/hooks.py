"""What the proxy tells the rest of the process: one record per request, one call per retry.

The proxy imports no metrics or logging library for its data; whoever runs it (``tunnel-lb
run``) plugs plain synchronous callables in here and turns the records into Prometheus
series, access-log lines and passive health signals.  Callbacks run on the request's task,
so they must be quick and must not block; an exception in one is logged and swallowed, never
allowed to break a client connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from steering import Decision

__all__ = ["Attempt", "ProxyHooks", "RequestRecord", "SlowBody", "SlowRead", "TlsFailure"]

log = logging.getLogger("lb.proxy")


@dataclass(slots=True)
class Attempt:
    """One try of a request against one endpoint."""

    pool: str
    endpoint: str
    """The endpoint key, ``pool/endpoint``."""
    status: int
    """The upstream's status, or the 52x/502 code of the failure."""
    error: str = ""
    """Empty on a response; else ``refused``, ``connect_timeout``, ``dns``, ``unreachable``,
    ``tls_handshake``, ``tls_certificate``, ``response_timeout``, ``upstream_closed``,
    ``upstream_protocol``."""
    reused: bool = False
    """Whether the attempt ran on a pooled keep-alive connection."""
    connect_time: float | None = None
    """Seconds to open the upstream connection (TCP connect and TLS handshake); None on a
    reused connection or when the connect failed."""
    first_byte: float | None = None
    """Seconds from the start of sending the request on an open connection to its response
    head (time to first byte, connect excluded); None without a response head."""
    retry_on: str = ""
    """The ``retry_on`` condition (``reset``, ``502``...) this attempt's failure was retried
    for; empty when it was not retried, or retried by Cloudflare's own rules."""
    retried: str = ""
    """The retry that followed this attempt (``zero_downtime_failover``,
    ``stale_connection``, ``retry_on``); empty for the last attempt.  A request may have
    retries of several kinds: each attempt says which one followed it."""


@dataclass(slots=True)
class RequestRecord:
    """The outcome of one client request, reported when it is over (success or not)."""

    method: str
    host: str
    target: str
    client_ip: str
    datacenter: str
    request_id: str
    load_balancer: str | None = None
    pool: str | None = None
    endpoint: str | None = None
    """The key of the endpoint of the last attempt (the one that answered, if any)."""
    tunnel_id: str | None = None
    decision: str = ""
    """The steering reason: ``policy``, ``affinity``, ``fallback``, ``retry``, ``unknown_host``,
    ``no_pool``; empty when the request never reached steering (400, 431...)."""
    affinity: str = "none"
    status: int = 0
    """What the client was sent; 0 when the connection broke before a response head."""
    upstream_status: int | None = None
    error: str = ""
    """Empty when the exchange completed; else what went wrong (an :class:`Attempt` error,
    ``client_disconnected``, ``upstream_aborted``, ``body_too_large``, ``bad_request``...,
    ``shutdown`` when the drain deadline cut the request)."""
    retried: str | None = None
    """``zero_downtime_failover``, ``stale_connection`` or ``retry_on``: the last retry made
    (without ``retry_on``, at most one extra attempt is ever made)."""
    retry_status: int | None = None
    """The status of the failure that triggered the retry (the 52x of a failover, 502 of a
    stale connection); None without a retry.  Label retry metrics with this, not with
    ``attempts[0].status``."""
    budget_refused: bool = False
    """A ``retry_on`` retry was due and the retry budget refused it."""
    bytes_in: int = 0
    """Request body bytes received from the client (after a 101: bytes carried upstream)."""
    bytes_out: int = 0
    """Response body bytes sent to the client (after a 101: bytes carried to the client)."""
    duration: float = 0.0
    """Seconds from the request head to the end of the response (trio clock)."""
    attempts: list[Attempt] = field(default_factory=list)
    websocket: bool = False


class TlsFailure(StrEnum):
    """How a client's TLS handshake failed (``on_tls_failed``): a closed set, for a label."""

    PLAIN_HTTP = "plain_http"
    """Plain HTTP sent to an HTTPS listener (answered 400)."""
    HANDSHAKE_FAILED = "handshake_failed"
    """OpenSSL refused the handshake (no shared cipher or version, not TLS at all...)."""
    CONNECTION_LOST = "connection_lost"
    """The client reset or closed the connection midway."""
    TIMED_OUT = "timed_out"
    """The handshake did not finish within ``idle_timeout``."""


class SlowBody(StrEnum):
    """What closed a connection whose request body came too slowly (``on_slow_body``)."""

    MIN_BODY_RATE = "min_body_rate"
    """``limits.min_body_rate``, enforced on every request body."""
    CONNECTION_CAP = "connection_cap"
    """The connection cap, making room for a new connection."""


class SlowRead(StrEnum):
    """What closed a connection whose client took its response too slowly
    (``on_slow_read``)."""

    MIN_RESPONSE_RATE = "min_response_rate"
    """``limits.min_response_rate``, enforced on every response."""
    CONNECTION_CAP = "connection_cap"
    """The connection cap, making room for a new connection."""


@dataclass(slots=True)
class ProxyHooks:
    """Synchronous callbacks; every one is optional.

    * ``on_request_done(record)``: once per request head received (also for 400/404/431...).
    * ``on_retry(reason, failed_attempt)``: before a second attempt; ``reason`` is
      ``zero_downtime_failover`` (R42) or ``stale_connection`` (pool lesson).
    * ``on_request_start(record)``: a request head was received; its ``on_request_done``
      always follows (an active-requests gauge pairs the two).
    * ``on_connection(delta)``: +1 when a client connection is accepted, -1 when it closes.
    * ``on_decision(decision)``: every steering decision the proxy acts on, the
      zero-downtime retry's included (metrics count them by policy and affinity outcome).
    * ``on_upgrade(record)``: a 101 is being relayed and the WebSocket (or other upgraded
      stream) starts; its ``on_request_done`` comes when it ends, with ``websocket`` set and
      ``status`` 101, so the two pair up for an open-tunnels gauge.
    * ``on_tls_failed(kind)``: a client's TLS handshake failed (a :class:`TlsFailure`); no
      request record follows, since no request was read.
    * ``on_slow_body(closed_by)``: a connection is being closed because its request body
      came too slowly (a :class:`SlowBody`); its record follows with ``body_too_slow``.
    * ``on_slow_read(closed_by)``: a connection is being cut because its client took the
      response too slowly (a :class:`SlowRead`); its record follows with ``read_too_slow``.
    """

    on_request_done: Callable[[RequestRecord], None] | None = None
    on_retry: Callable[[str, Attempt], None] | None = None
    on_connection: Callable[[int], None] | None = None
    on_decision: Callable[[Decision], None] | None = None
    on_upgrade: Callable[[RequestRecord], None] | None = None
    on_request_start: Callable[[RequestRecord], None] | None = None
    on_tls_failed: Callable[[TlsFailure], None] | None = None
    on_slow_body: Callable[[SlowBody], None] | None = None
    on_slow_read: Callable[[SlowRead], None] | None = None

    def request_done(self, record: RequestRecord) -> None:
        """Call ``on_request_done``, logging (not raising) its errors."""
        if self.on_request_done is not None:
            try:
                self.on_request_done(record)
            except Exception:
                log.exception("on_request_done hook failed")

    def request_start(self, record: RequestRecord) -> None:
        """Call ``on_request_start``, logging (not raising) its errors."""
        if self.on_request_start is not None:
            try:
                self.on_request_start(record)
            except Exception:
                log.exception("on_request_start hook failed")

    def retry(self, reason: str, attempt: Attempt) -> None:
        """Call ``on_retry``, logging (not raising) its errors."""
        if self.on_retry is not None:
            try:
                self.on_retry(reason, attempt)
            except Exception:
                log.exception("on_retry hook failed")

    def decision(self, decision: Decision) -> None:
        """Call ``on_decision``, logging (not raising) its errors."""
        if self.on_decision is not None:
            try:
                self.on_decision(decision)
            except Exception:
                log.exception("on_decision hook failed")

    def upgrade(self, record: RequestRecord) -> None:
        """Call ``on_upgrade``, logging (not raising) its errors."""
        if self.on_upgrade is not None:
            try:
                self.on_upgrade(record)
            except Exception:
                log.exception("on_upgrade hook failed")

    def connection(self, delta: int) -> None:
        """Call ``on_connection``, logging (not raising) its errors."""
        if self.on_connection is not None:
            try:
                self.on_connection(delta)
            except Exception:
                log.exception("on_connection hook failed")

    def tls_failed(self, kind: TlsFailure) -> None:
        """Call ``on_tls_failed``, logging (not raising) its errors."""
        if self.on_tls_failed is not None:
            try:
                self.on_tls_failed(kind)
            except Exception:
                log.exception("on_tls_failed hook failed")

    def slow_body(self, closed_by: SlowBody) -> None:
        """Call ``on_slow_body``, logging (not raising) its errors."""
        if self.on_slow_body is not None:
            try:
                self.on_slow_body(closed_by)
            except Exception:
                log.exception("on_slow_body hook failed")

    def slow_read(self, closed_by: SlowRead) -> None:
        """Call ``on_slow_read``, logging (not raising) its errors."""
        if self.on_slow_read is not None:
            try:
                self.on_slow_read(closed_by)
            except Exception:
                log.exception("on_slow_read hook failed")
