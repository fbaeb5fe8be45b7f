"""The one place that turns an exception raised by a check into its failure :class:`Reason`.

Every driver (the h11 prober, the tcp check) calls :func:`classify`, so "what does ECONNRESET
mean" is answered once.  It walks the exception's cause chain (``__cause__`` / ``__context__``
and exception groups) because trio wraps the interesting OS or TLS error in its own types.
"""

from __future__ import annotations

import errno
import socket
import ssl

import h11
import trio

from monitors.reasons import Reason

__all__ = ["classify"]


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

    The most specific cause wins: an ``OSError`` wrapping a
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
    if isinstance(exc, trio.TooSlowError):
        return Reason.HTTP_TIMEOUT
    if isinstance(exc, trio.BrokenResourceError):
        return Reason.CONNECTION_RESET
    if isinstance(exc, ValueError | UnicodeError):
        return Reason.MONITOR_CONFIG_ERROR
    return None
