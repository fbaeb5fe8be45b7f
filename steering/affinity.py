"""Session affinity state: the signed ``__cflb`` cookie and the header-session table.

The cookie (R35) is stateless: it carries the load balancer, the endpoint and the absolute
expiry, signed with HMAC-SHA256 under a configured secret, so any replica with the same secret
honours it and a forged, altered or expired value is ignored (and reported as ``invalid`` or
``expired``).  Format, all URL-safe::

    v1.<b64url(lb \\x1f pool \\x1f endpoint)>.<expiry: Unix seconds>.<b64url(mac[:16])>

Header sessions (R39) cannot be stateless, since the client never sees a token: they live
in :class:`HeaderSessions`, keyed by (load balancer, header values), with a sliding idle TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "COOKIE_NAME",
    "CookieValue",
    "HeaderSession",
    "HeaderSessions",
    "expires_of",
    "session_key",
    "sign",
    "verify",
]

COOKIE_NAME = "__cflb"
_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class CookieValue:
    """What a valid ``__cflb`` says."""

    load_balancer: str
    pool: str
    endpoint: str
    expires: float


@dataclass(frozen=True, slots=True)
class HeaderSession:
    """A header-affinity session to store (R39): the router says what to remember in
    ``Decision.remember``, and the owner of the :class:`HeaderSessions` table stores it
    (:meth:`HeaderSessions.store`), so that steering itself never writes the table.

    Storing a session that was just honoured restarts its idle timer, as Cloudflare's sliding
    TTL does.
    """

    load_balancer: str
    key: tuple[str, ...]
    """The session key (:func:`session_key`)."""
    endpoint: str
    """The ``pool/endpoint`` key the session is pinned to."""
    now: float
    """The engine clock of the request (the last use)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest()[:16])


def sign(secret: bytes, load_balancer: str, pool: str, endpoint: str, expires: float) -> str:
    """A ``__cflb`` value pinning ``load_balancer`` to ``pool/endpoint`` until ``expires``.

    The expiry is written in whole seconds, rounded up: rounded down, a cookie issued late in
    one second and sent early in the next would carry a ``Max-Age`` one second short of its
    TTL (the proxy derives Max-Age from the embedded expiry).
    """
    ident = _b64(_SEP.join((load_balancer, pool, endpoint)).encode())
    body = f"v1.{ident}.{math.ceil(expires)}"
    return f"{body}.{_mac(secret, body)}"


def verify(secret: bytes, value: str) -> CookieValue | None:
    """The content of a genuine ``__cflb`` value, or None for anything forged or malformed.

    Expiry is not judged here: the caller compares ``expires`` with its own wall clock so that
    it can tell ``expired`` from ``invalid``.
    """
    if len(value) > 4096 or not value.isascii():
        return None  # hmac.compare_digest raises TypeError on non-ASCII str
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        return None
    body = value.rsplit(".", 1)[0]
    if not hmac.compare_digest(_mac(secret, body), parts[3]):
        return None
    try:
        fields = _unb64(parts[1]).decode().split(_SEP)
        expires = int(parts[2])
    except (ValueError, UnicodeDecodeError):
        return None
    if len(fields) != 3:
        return None
    return CookieValue(fields[0], fields[1], fields[2], float(expires))


def expires_of(value: str) -> float | None:
    """The expiry (Unix seconds) embedded in a ``__cflb`` value, or None if malformed.

    Not a verification: for a value this process just signed or verified (the Max-Age of the
    Set-Cookie that carries it).
    """
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not (parts[2].isascii() and parts[2].isdigit()):
        return None
    return float(parts[2])


def session_key(
    names: tuple[str, ...],
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    *,
    require_all: bool,
) -> tuple[str, ...] | None:
    """R39: the header-affinity key, or None when no session may be created.

    ``names`` are the configured ``headers``: a header name, ``cookie`` (every cookie) or
    ``cookie:a,b`` (the named cookies).  Missing values are empty strings in the key.
    """
    values: list[str] = []
    present = 0
    for name in names:
        lowered = name.lower()
        if lowered == "cookie":
            value = ";".join(f"{k}={v}" for k, v in sorted(cookies.items()) if k != COOKIE_NAME)
        elif lowered.startswith("cookie:"):
            wanted = [c.strip() for c in name[7:].split(",") if c.strip()]
            found = [f"{c}={cookies[c]}" for c in wanted if c in cookies]
            value = ";".join(found) if len(found) == len(wanted) or not require_all else ""
        else:
            value = headers.get(lowered, "")
        if value:
            present += 1
        values.append(value)
    if present == 0 or (require_all and present < len(names)):
        return None
    return tuple(values)


class HeaderSessions:
    """Header-affinity sessions (R39): key -> endpoint, expiring after an idle TTL.

    Keys come from client headers, so the table stores a 16-byte digest of each, never the
    values, and is bounded: past ``max_sessions`` the least recently used session is dropped
    (one per insertion, O(1)), which only costs that client a fresh steering decision.
    """

    def __init__(self, max_sessions: int = 1_000_000) -> None:
        self._sessions: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._max = max_sessions

    @staticmethod
    def _digest(lb: str, key: tuple[str, ...]) -> bytes:
        raw = "\x1f".join((lb, *key)).encode("utf-8", "surrogateescape")
        return hashlib.blake2b(raw, digest_size=16).digest()

    def put(self, lb: str, key: tuple[str, ...], endpoint: str, now: float) -> None:
        """Pin a session to ``endpoint`` (a ``pool/endpoint`` key)."""
        digest = self._digest(lb, key)
        self._sessions[digest] = (endpoint, now)
        self._sessions.move_to_end(digest)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def store(self, session: HeaderSession) -> None:
        """Store what a decision asked to remember (see :class:`HeaderSession`)."""
        self.put(session.load_balancer, session.key, session.endpoint, session.now)

    def peek(self, lb: str, key: tuple[str, ...], now: float, ttl: float) -> str | None:
        """The endpoint key of a live session, or None; reading refreshes nothing (a hit is
        stored again through ``Decision.remember``, which restarts its idle timer)."""
        entry = self._sessions.get(self._digest(lb, key))
        if entry is None or now - entry[1] > ttl:
            return None
        return entry[0]

    def saved(self) -> list[tuple[bytes, str, float]]:
        """Every session as ``(digest, endpoint key, last use)``, oldest first (state file)."""
        return [(digest, ep, last) for digest, (ep, last) in self._sessions.items()]

    def load(self, saved: list[tuple[bytes, str, float]]) -> None:
        """Add sessions from :meth:`saved` (last-use times already on this clock)."""
        for digest, endpoint, last in saved:
            self._sessions[digest] = (endpoint, last)
            self._sessions.move_to_end(digest)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)
