"""Error statuses of the proxy and the bodies it answers them with.

Two styles (``engine.error_style``):

* ``cloudflare``: the codes Cloudflare's edge uses, so that dashboards and runbooks written
  for Cloudflare read the same here: 521 refused, 522 connect timeout, 523 unreachable or DNS
  failure, 524 no response in time, 525 TLS handshake failure, 526 invalid certificate, and
  530 with ``error code: 1016`` when no pool can serve (R30).  The body is Cloudflare's
  plain-text form, ``error code: NNN``.
* ``plain``: what a generic reverse proxy answers, for clients that do not know the 52x
  codes: 502 for refused, unreachable and TLS failures, 504 for timeouts, 503 for "no pool".

The zero-downtime-failover decision (R42) is always made on the Cloudflare code; the style only
changes what the client finally sees.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus

from lb.core.attempts import Failure

__all__ = [
    "ATTEMPT_ERRORS",
    "CONNECT_REFUSED",
    "CONNECT_TIMEOUT",
    "NO_POOL",
    "RESPONSE_TIMEOUT",
    "TLS_BAD_CERT",
    "TLS_HANDSHAKE",
    "UNREACHABLE",
    "RequestError",
    "UpstreamError",
    "error_body",
    "failure_of",
    "public_status",
    "reason_phrase",
]

CONNECT_REFUSED = 521
CONNECT_TIMEOUT = 522
UNREACHABLE = 523
RESPONSE_TIMEOUT = 524
TLS_HANDSHAKE = 525
TLS_BAD_CERT = 526
NO_POOL = 530
BAD_GATEWAY = 502
"""The upstream broke the exchange after the connection stood (reset, garbage, early EOF)."""


class RequestError(StrEnum):
    """What went wrong in an exchange: ``error`` of the access log and of
    :class:`~lb.proxy.hooks.RequestRecord` / :class:`~lb.proxy.hooks.Attempt`, and the
    ``kind`` label of ``lb_upstream_errors_total`` (:data:`ATTEMPT_ERRORS`).

    A ``StrEnum``: each member is its string, so logs, metric labels and docs read the same
    words as before the names were typed.
    """

    # One attempt to an endpoint (UpstreamError.reason, Attempt.error)
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    DNS = "dns"
    UNREACHABLE = "unreachable"
    TLS_HANDSHAKE = "tls_handshake"
    TLS_SERVER_NAME = "tls_server_name"
    TLS_CERTIFICATE = "tls_certificate"
    RESPONSE_TIMEOUT = "response_timeout"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_TRUNCATED = "upstream_truncated"
    """Closed in a response body read whole before relaying (``retry_on.buffer_response``)."""
    UPSTREAM_PROTOCOL = "upstream_protocol"
    BAD_CONFIG = "bad_config"
    # The request as a whole (RequestRecord.error)
    UPSTREAM_ABORTED = "upstream_aborted"
    NO_POOL = "no_pool"
    BAD_HOST = "bad_host"
    UNKNOWN_HOST = "unknown_host"
    BAD_REQUEST = "bad_request"
    BAD_TARGET = "bad_target"
    BAD_CHUNK = "bad_chunk"
    AMBIGUOUS_FRAMING = "ambiguous_framing"
    METHOD_NOT_SUPPORTED = "method_not_supported"
    VERSION_NOT_SUPPORTED = "version_not_supported"
    """A request line whose major version is not 1 (505)."""
    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TOO_LARGE = "body_too_large"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_TIMEOUT = "client_timeout"
    BODY_TOO_SLOW = "body_too_slow"
    """The request body came slower than ``limits.min_body_rate`` (or, at the connection
    cap, than the cap's minimum): 408, or the connection cut once a response started."""
    READ_TOO_SLOW = "read_too_slow"
    """The client took the response slower than ``limits.min_response_rate`` (or, at the
    connection cap, than the cap's minimum): the connection is cut."""
    WEBSOCKET_IDLE = "websocket_idle"
    SHUTDOWN = "shutdown"


ATTEMPT_ERRORS = frozenset(
    {
        RequestError.REFUSED,
        RequestError.CONNECT_TIMEOUT,
        RequestError.DNS,
        RequestError.UNREACHABLE,
        RequestError.TLS_HANDSHAKE,
        RequestError.TLS_SERVER_NAME,
        RequestError.TLS_CERTIFICATE,
        RequestError.RESPONSE_TIMEOUT,
        RequestError.UPSTREAM_CLOSED,
        RequestError.UPSTREAM_TRUNCATED,
        RequestError.UPSTREAM_PROTOCOL,
        RequestError.BAD_CONFIG,
    }
)
"""The errors of one attempt to an endpoint: the ``kind`` values of
``lb_upstream_errors_total`` (an attempt cut short by ``shutdown`` counts as ``other``)."""

_PLAIN = {
    CONNECT_REFUSED: 502,
    CONNECT_TIMEOUT: 504,
    UNREACHABLE: 502,
    RESPONSE_TIMEOUT: 504,
    TLS_HANDSHAKE: 502,
    TLS_BAD_CERT: 502,
    NO_POOL: 503,
}

_CLOUDFLARE_REASONS = {
    520: b"Web Server Returned an Unknown Error",
    CONNECT_REFUSED: b"Web Server Is Down",
    CONNECT_TIMEOUT: b"Connection Timed Out",
    UNREACHABLE: b"Origin Is Unreachable",
    RESPONSE_TIMEOUT: b"A Timeout Occurred",
    TLS_HANDSHAKE: b"SSL Handshake Failed",
    TLS_BAD_CERT: b"Invalid SSL Certificate",
    NO_POOL: b"Origin DNS Error",
}

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS.update(_CLOUDFLARE_REASONS)


class UpstreamError(Exception):
    """One attempt to an endpoint failed before a usable response head arrived.

    ``status`` is the Cloudflare code (52x, or 502 for a broken exchange); ``reason`` is a
    short machine-readable word for logs and metrics (``refused``, ``timeout``...);
    ``before_response`` is True when no response byte had arrived, which is what makes the
    stale-pooled-connection retry safe.
    """

    def __init__(self, status: int, reason: RequestError, *, before_response: bool = True) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.before_response = before_response


_FAILURES = {
    RequestError.REFUSED: Failure.CONNECT_REFUSED,
    RequestError.CONNECT_TIMEOUT: Failure.CONNECT_TIMEOUT,
    RequestError.DNS: Failure.UNREACHABLE,
    RequestError.UNREACHABLE: Failure.UNREACHABLE,
    RequestError.TLS_HANDSHAKE: Failure.TLS_HANDSHAKE,
    RequestError.TLS_SERVER_NAME: Failure.TLS_HANDSHAKE,
    RequestError.TLS_CERTIFICATE: Failure.TLS_CERTIFICATE,
    RequestError.UPSTREAM_TRUNCATED: Failure.TRUNCATED,
    RequestError.UPSTREAM_PROTOCOL: Failure.PROTOCOL,
    RequestError.BAD_CONFIG: Failure.BAD_CONFIG,
}


def failure_of(err: UpstreamError) -> Failure:
    """The attempt policy's name (:mod:`lb.core.attempts`) for an upstream error."""
    if err.reason == RequestError.UPSTREAM_CLOSED:
        if err.before_response:
            return Failure.CLOSED_BEFORE_RESPONSE
        return Failure.CLOSED_IN_RESPONSE
    return _FAILURES[err.reason]


def reason_phrase(status: int) -> bytes:
    """The reason phrase for ``status``; the writer would otherwise send an empty one."""
    return _REASONS.get(status, b"")


def public_status(status: int, style: str) -> int:
    """What the client sees for an internal outcome ``status`` under ``error_style``."""
    if style == "plain":
        return _PLAIN.get(status, status)
    return status


def error_body(status: int, style: str) -> bytes:
    """The plain-text body of a proxy-generated error.

    Cloudflare style: ``error code: NNN`` (1016 for 530, as Cloudflare's edge does); plain
    style: the status line text.
    """
    if style == "plain":
        return b"%d %s\n" % (status, reason_phrase(status))
    code = 1016 if status == NO_POOL else status
    return b"error code: %d\n" % code
