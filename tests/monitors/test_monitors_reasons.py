"""The one exception -> failure reason mapping, including wrapped causes."""

from __future__ import annotations

import errno
import socket
import ssl

import h11
import pytest
import trio

from monitors.failures import classify
from monitors.reasons import TIMEOUTS, Reason, timeout_reason


def caused(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def cert_error(code: int) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_code = code
    return e


def ssl_error(reason: str) -> ssl.SSLError:
    e = ssl.SSLError(1, reason)
    e.reason = reason
    return e


def trio_connect_error(inner: OSError) -> OSError:
    """What trio.open_tcp_stream raises: a plain OSError from a group of per-address errors."""
    return caused(OSError("all attempts to connect failed"), ExceptionGroup("x", [inner]))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Reason.TCP_CONNECTION_FAILED),
        (
            trio_connect_error(ConnectionRefusedError(errno.ECONNREFUSED, "x")),
            Reason.TCP_CONNECTION_FAILED,
        ),
        (trio_connect_error(OSError(errno.EHOSTUNREACH, "x")), Reason.NO_ROUTE_TO_HOST),
        (OSError(errno.ENETUNREACH, "x"), Reason.NETWORK_UNREACHABLE),
        (OSError(errno.ETIMEDOUT, "x"), Reason.TCP_TIMEOUT),
        (ConnectionResetError(errno.ECONNRESET, "x"), Reason.CONNECTION_RESET),
        (
            caused(trio.BrokenResourceError(), ConnectionResetError(errno.ECONNRESET, "x")),
            Reason.CONNECTION_RESET,
        ),
        (trio.BrokenResourceError(), Reason.CONNECTION_RESET),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), Reason.DNS_UNKNOWN_HOST),
        (caused(trio.BrokenResourceError(), cert_error(62)), Reason.TLS_NAME_MISMATCH),
        (cert_error(64), Reason.TLS_NAME_MISMATCH),
        (cert_error(20), Reason.TLS_UNTRUSTED_CERTIFICATE),
        (ssl_error("TLSV1_UNRECOGNIZED_NAME"), Reason.TLS_UNRECOGNIZED_NAME),
        (ssl_error("WRONG_VERSION_NUMBER"), Reason.TLS_PROTOCOL_ERROR),
        (ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"), Reason.TLS_HANDSHAKE_FAILURE),
        (h11.RemoteProtocolError("bad", 400), Reason.HTTP_INVALID_RESPONSE),
        (h11.LocalProtocolError("bad header"), Reason.MONITOR_CONFIG_ERROR),
        (trio.TooSlowError(), Reason.HTTP_TIMEOUT),
        (
            caused(OSError("wrapped"), ConnectionRefusedError(errno.ECONNREFUSED, "x")),
            Reason.TCP_CONNECTION_FAILED,
        ),
        (ValueError("bad"), Reason.MONITOR_CONFIG_ERROR),
        (RuntimeError("?"), Reason.OTHER),
    ],
)
def test_classify(exc: BaseException, reason: Reason) -> None:
    assert classify(exc) is reason


def test_reason_values_are_cloudflares_words() -> None:
    assert Reason.HTTP_TIMEOUT == "HTTP timeout occurred"
    assert len(Reason) == 17
    assert {Reason.TCP_TIMEOUT, Reason.HTTP_TIMEOUT} == TIMEOUTS


def test_timeout_reason_by_phase() -> None:
    assert timeout_reason("connect") is Reason.TCP_TIMEOUT
    assert timeout_reason("tls") is Reason.HTTP_TIMEOUT
    assert timeout_reason("http") is Reason.HTTP_TIMEOUT
