"""Failure reasons of a check, and the one place that maps exceptions onto them.

The values are Cloudflare's failure-reason strings (cloudflare-lb.md §1.1), so that health
events, ``/status`` and ``tunnel-lb probe`` read like Cloudflare's analytics.  ``DNS internal``
is left out: it describes Cloudflare's own proxied addresses, which cannot occur here.

:func:`classify` is the only function that turns an exception into a reason.  Every driver
(the h11 prober, an httpx-based one, the tcp check) calls it, so "what does ECONNRESET mean"
is answered once.  It walks the exception's cause chain (``__cause__`` / ``__context__`` and
exception groups) because trio, httpx and httpcore wrap the interesting OS or TLS error in
their own types.
"""

from __future__ import annotations

import enum
import errno
import socket
import ssl

import h11
import httpx
import trio

__all__ = ["TIMEOUTS", "Reason", "classify", "hint", "timeout_reason"]


class Reason(enum.StrEnum):
    """Why a check failed, in Cloudflare's words."""

    TCP_CONNECTION_FAILED = "TCP connection failed"
    HTTP_TIMEOUT = "HTTP timeout occurred"
    RESPONSE_CODE_MISMATCH = "Response code mismatch"
    RESPONSE_BODY_MISMATCH = "Response body mismatch"
    TLS_UNTRUSTED_CERTIFICATE = "TLS untrusted certificate"
    TLS_NAME_MISMATCH = "TLS name mismatch"
    TLS_PROTOCOL_ERROR = "TLS protocol error"
    TLS_UNRECOGNIZED_NAME = "TLS unrecognized name"
    NO_ROUTE_TO_HOST = "No route to host"
    TCP_TIMEOUT = "TCP timeout"
    TLS_HANDSHAKE_FAILURE = "TLS handshake failure"
    NETWORK_UNREACHABLE = "Network unreachable"
    HTTP_INVALID_RESPONSE = "HTTP invalid response"
    DNS_UNKNOWN_HOST = "DNS unknown host"
    CONNECTION_RESET = "Connection reset by peer"
    MONITOR_CONFIG_ERROR = "Monitor config error"
    OTHER = "Other failure"


TIMEOUTS = frozenset({Reason.TCP_TIMEOUT, Reason.HTTP_TIMEOUT})
"""The reasons that R8 retries: nothing came back in time.  Everything else is an answer."""


def timeout_reason(phase: str) -> Reason:
    """The reason for an attempt cut off by its timeout while in ``phase``.

    Still dialling is a ``TCP timeout``; anything later (TLS handshake, waiting for the head,
    dripping body) is an ``HTTP timeout occurred``, as Cloudflare reports a silent server.
    """
    return Reason.TCP_TIMEOUT if phase == "connect" else Reason.HTTP_TIMEOUT


def hint(reason: Reason | None, *, upstream_ca: str = "") -> str:
    """What an operator can do about a failure for ``reason``, or ``""`` if nothing specific.

    ``upstream_ca`` is the configured ``engine.upstream_ca`` (empty: the system store only).
    An untrusted certificate is nearly always an endpoint with a private CA, and the
    reason string alone does not say that the fix is in our configuration.
    """
    if reason is not Reason.TLS_UNTRUSTED_CERTIFICATE:
        return ""
    if not upstream_ca:
        return (
            "the certificate is not signed by a CA in the system trust store; if the "
            "endpoints use a private CA, set engine.upstream_ca to its PEM file"
        )
    return (
        f"the certificate is signed neither by a CA in engine.upstream_ca ({upstream_ca}) "
        "nor by the system trust store; that file must hold the CA that issued it"
    )


_ERRNO = {
    errno.ECONNREFUSED: Reason.TCP_CONNECTION_FAILED,
    errno.ECONNRESET: Reason.CONNECTION_RESET,
    errno.ECONNABORTED: Reason.CONNECTION_RESET,
    errno.EPIPE: Reason.CONNECTION_RESET,
    errno.EHOSTUNREACH: Reason.NO_ROUTE_TO_HOST,
    errno.EHOSTDOWN: Reason.NO_ROUTE_TO_HOST,
    errno.ENETUNREACH: Reason.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Reason.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: Reason.TCP_TIMEOUT,
}

# OpenSSL "reason" mnemonics (ssl.SSLError.reason) that mean the peers could not agree on TLS
# itself, as opposed to a failed handshake.
_TLS_PROTOCOL = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LENGTH_MISMATCH",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
    }
)

# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH_CODES = frozenset({62, 64})


def classify(exc: BaseException) -> Reason:
    """The failure reason for ``exc``, raised by one attempt of a check.

    The most specific cause wins: an ``httpx.ConnectError`` caused by a
    ``ConnectionRefusedError`` is ``TCP connection failed``, not a generic failure.
    """
    for cause in _chain(exc):
        reason = _direct(cause)
        if reason is not None:
            return reason
    for cause in _chain(exc):
        reason = _fallback(cause)
        if reason is not None:
            return reason
    return Reason.OTHER


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, innermost last, with exception groups flattened."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(out) < 32:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        nxt = e.__cause__ or e.__context__
        if nxt is not None:
            todo.append(nxt)
    # Innermost causes carry the facts (errno, OpenSSL reason): look at them first.
    out.reverse()
    return out


def _direct(exc: BaseException) -> Reason | None:
    """Reasons that a low-level exception states outright."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH_CODES:
            return Reason.TLS_NAME_MISMATCH
        return Reason.TLS_UNTRUSTED_CERTIFICATE
    if isinstance(exc, ssl.SSLError):
        name = exc.reason or ""
        if name == "TLSV1_UNRECOGNIZED_NAME":
            return Reason.TLS_UNRECOGNIZED_NAME
        if name in _TLS_PROTOCOL:
            return Reason.TLS_PROTOCOL_ERROR
        return Reason.TLS_HANDSHAKE_FAILURE
    if isinstance(exc, socket.gaierror):
        return Reason.DNS_UNKNOWN_HOST
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    if isinstance(exc, h11.RemoteProtocolError):
        return Reason.HTTP_INVALID_RESPONSE
    if isinstance(exc, h11.LocalProtocolError):
        return Reason.MONITOR_CONFIG_ERROR
    return None


def _fallback(exc: BaseException) -> Reason | None:
    """Reasons implied by a wrapper type when no cause was more specific."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Reason.TCP_TIMEOUT
    if isinstance(exc, httpx.TimeoutException | trio.TooSlowError):
        return Reason.HTTP_TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return Reason.TCP_CONNECTION_FAILED
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return Reason.HTTP_INVALID_RESPONSE
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.LocalProtocolError):
        return Reason.MONITOR_CONFIG_ERROR
    if isinstance(exc, httpx.ReadError | httpx.WriteError | trio.BrokenResourceError):
        return Reason.CONNECTION_RESET
    if isinstance(exc, ValueError | UnicodeError):
        return Reason.MONITOR_CONFIG_ERROR
    return None
