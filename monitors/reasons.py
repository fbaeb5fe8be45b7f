"""Failure reasons of a check: a pure vocabulary, shared by the judge, the drivers and the core.

The values are Cloudflare's failure-reason strings (docs/monitors.md), so that health
events, ``/status`` and ``tunnel-lb probe`` read like Cloudflare's analytics.  ``DNS internal``
is left out: it describes Cloudflare's own proxied addresses, which cannot occur here.

No I/O imports: the pure :mod:`monitors.judge` reads these.  Turning an exception into a
reason is a driver's job, in :mod:`monitors.failures`.
"""

from __future__ import annotations

import enum

__all__ = ["TIMEOUTS", "Reason", "hint", "timeout_reason"]


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
