"""The seam between scheduling and the network, and the check logic both sides share.

Why a seam
==========

The simulator runs *the same* scheduler and check code in virtual time (``trio.testing.
MockClock``) against simulated endpoints.  Everything that touches a socket therefore sits
behind two small protocols, and everything else (timeouts, retries, judging) lives here, once:

* :class:`ProbeTransport` opens a :class:`ProbeSession` for one probe identity seen from one
  vantage point.  The real one is :class:`monitors.network.NetworkTransport` (trio sockets,
  ``trio.SSLStream`` and h11, one keep-alive connection per session); the simulator plugs an
  in-memory one that looks up the vantage point's view of the endpoint and ``await
  trio.sleep(...)`` s its latency.
* :meth:`ProbeSession.attempt` performs ONE attempt and returns an :class:`Exchange` (the
  status and at most the first 10 KB of the body, or a failure reason), or raises; an exception
  is mapped by :func:`monitors.failures.classify`.  It must keep :attr:`ProbeSession.phase`
  current (``"connect"`` until a connection exists, then ``"tls"``, then ``"http"``) and must
  never reuse a connection whose attempt was cancelled.  It does not time itself out:
* :func:`run_check` wraps every attempt in ``trio.move_on_after(probe.timeout)`` (so a hanging,
  dripping or huge endpoint costs at most its own attempt), maps a cut-off attempt to ``TCP
  timeout`` / ``HTTP timeout occurred`` by phase, judges the response (R1-R3, via
  :mod:`monitors.judge`) and retries immediately after a timeout only (R8).

A simulated transport thus only says what the endpoint does; a silent endpoint is simply
``await trio.sleep_forever()`` and times out exactly as a real one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from monitors.failures import classify
from monitors.judge import judge
from monitors.reasons import TIMEOUTS, Reason, timeout_reason
from monitors.spec import Probe

__all__ = ["Exchange", "ProbeSession", "ProbeTransport", "Verdict", "probe_once", "run_check"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """What one attempt saw: a response, a successful tcp connect, or a failure."""

    failure: Reason | None = None
    status: int | None = None
    """``None`` for a tcp check or a failure."""
    body: bytes = b""
    """At most the first 10 KB of the (final) response body."""
    rtt: float | None = None
    """Seconds from sending the request to the response head (tcp: to the connection)."""
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The result of one check: all its attempts, judged."""

    ok: bool
    reason: Reason | None = None
    status: int | None = None
    rtt: float | None = None
    attempts: int = 1
    detail: str = ""


class ProbeSession(Protocol):
    """A probe identity's connection state (e.g. one keep-alive connection); see module doc."""

    phase: str

    async def attempt(self) -> Exchange:
        """Make one attempt, without a timeout of its own."""
        ...

    async def aclose(self) -> None:
        """Release every resource; the session is not used again."""
        ...


class ProbeTransport(Protocol):
    """Opens sessions; one transport serves every probe of a scheduler."""

    def open_session(self, probe: Probe, vantage: str) -> ProbeSession:
        """A session for ``probe`` as seen from ``vantage``; connects lazily, on attempt."""
        ...


def verdict_of(probe: Probe, ex: Exchange, attempts: int) -> Verdict:
    """Judge one completed attempt."""
    if ex.failure is not None:
        return Verdict(
            ok=False,
            reason=ex.failure,
            status=ex.status,
            rtt=ex.rtt,
            attempts=attempts,
            detail=ex.detail,
        )
    if probe.scheme == "tcp" or ex.status is None:
        return Verdict(ok=True, rtt=ex.rtt, attempts=attempts)
    reason = judge(
        ex.status, ex.body, expected_codes=probe.expected_codes, expected_body=probe.expected_body
    )
    return Verdict(
        ok=reason is None,
        reason=reason,
        status=ex.status,
        rtt=ex.rtt,
        attempts=attempts,
        detail=ex.detail,
    )


async def run_check(session: ProbeSession, probe: Probe) -> Verdict:
    """One check: up to ``1 + retries`` attempts, retried only after a timeout (R8)."""
    verdict = Verdict(ok=False, reason=Reason.OTHER)
    for n in range(1, probe.retries + 2):
        ex: Exchange | None = None
        with trio.move_on_after(probe.timeout):
            try:
                ex = await session.attempt()
            except Exception as exc:  # any failure of the endpoint is a verdict, not a crash
                ex = Exchange(failure=classify(exc), detail=f"{type(exc).__name__}: {exc}"[:200])
        if ex is None:
            ex = Exchange(failure=timeout_reason(session.phase), detail=f"after {probe.timeout}s")
        verdict = verdict_of(probe, ex, n)
        if verdict.reason not in TIMEOUTS:
            break
    return verdict


async def probe_once(probe: Probe, transport: ProbeTransport, vantage: str = "local") -> Verdict:
    """One check now, on a fresh session (``tunnel-lb probe``, Cloudflare's monitor preview)."""
    session = transport.open_session(probe, vantage)
    try:
        return await run_check(session, probe)
    finally:
        await session.aclose()
