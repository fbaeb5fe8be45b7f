"""Pure header logic of the proxy: what the upstream and the client get to see.

No I/O and no parser state here, so every rule has a table test (tests/proxy/test_proxy_headers.py).
Header names are the lowercase ``bytes`` the parser hands out; values are ``bytes``.

Rules (docs/proxy.md, "Headers"):

* Content-Length never goes upstream beside Transfer-Encoding (such a request is refused
  with 400 before this point: :attr:`RequestFacts.ambiguous_framing`).
* Hop-by-hop headers are removed both ways: Connection, Keep-Alive, Proxy-Connection,
  Proxy-* (Authorization, Authenticate...), TE, Trailer, Transfer-Encoding, Upgrade, and every
  name listed in Connection except the framing header Content-Length (``Connection:
  content-length`` must not unframe a body the parser has already framed by it).  A WebSocket
  upgrade keeps ``Upgrade: websocket`` and ``Connection: upgrade``.  Framing is redone on each
  side (lb/proxy/http1.py).
* ``Expect`` is not forwarded: the proxy answers ``100 Continue`` itself once the upstream
  connection stands, so the client does not upload into a failing attempt.
* Host is the endpoint's ``header.Host`` when set, else the client's (R47);
  ``X-Forwarded-Host`` carries the client's.
* ``X-Forwarded-For`` gets the TCP peer appended; ``X-Forwarded-Proto`` is the downstream
  scheme unless a trusted proxy sent one; the client-IP header (CF-Connecting-IP by default) is
  always overwritten with the client IP the proxy believed, so an untrusted client cannot
  spoof it to the origin.  ``X-Request-Id`` is kept, or generated.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "HOP_BY_HOP",
    "RequestFacts",
    "affinity_cookie",
    "client_address",
    "colo_from_ray",
    "cookie_value",
    "parse_cookies",
    "response_headers",
    "safe_header_name",
    "safe_header_value",
    "scan_request",
    "upstream_headers",
]

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
"""Never dropped because Connection lists them: the body is framed by them (Transfer-Encoding
is re-added from :class:`RequestFacts` on the request side and re-framed by the writer)."""
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HOST = re.compile(r"[-A-Za-z0-9._~:\[\]%]+")
_checked: dict[object, bool] = {}


def safe_header_name(name: bytes) -> bool:
    """Whether ``name`` is an HTTP token (cached: names come from the configuration)."""
    ok = _checked.get(name)
    if ok is None:
        ok = _checked[name] = _TOKEN.fullmatch(name) is not None
    return ok


def safe_header_value(host: str) -> bool:
    """Whether a Host value is plain host[:port] text (cached per value)."""
    ok = _checked.get(host)
    if ok is None:
        if len(_checked) > 10_000:
            _checked.clear()
        ok = _checked[host] = _HOST.fullmatch(host) is not None
    return ok


_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


@dataclass(slots=True)
class RequestFacts:
    """What one pass over the request headers found."""

    host: bytes = b""
    connection: tuple[bytes, ...] = ()
    """Lowercase tokens of Connection (names to drop, ``close``, ``upgrade``)."""
    content_length: int | None = None
    chunked: bool = False
    websocket: bool = False
    expect_continue: bool = False
    cookie: bytes | None = None
    """All Cookie headers joined with ``; ``."""
    request_id: bytes | None = None
    client_ip: bytes | None = None
    """Value of the configured client-IP header (believed only from trusted peers)."""
    ray: bytes | None = None
    """Value of the configured data-center header."""
    forwarded_proto: bytes | None = None
    idempotency_key: bool = False
    head_bytes: int = 0
    """Bytes of the header lines (name, value, separators), for the 431 limit."""

    @property
    def has_body(self) -> bool:
        """Whether a request body follows the head."""
        return self.chunked or bool(self.content_length)

    @property
    def ambiguous_framing(self) -> bool:
        """Content-Length and Transfer-Encoding together: the request-smuggling shape.

        RFC 9112 §6.1 lets a server frame by Transfer-Encoding, but a proxy that forwards
        both lets an origin framing by Content-Length read the rest as a second request; the
        proxy answers 400 and closes instead (the parser already refuses a Transfer-Encoding
        other than ``chunked`` and conflicting Content-Length values).
        """
        return self.chunked and self.content_length is not None


def scan_request(
    headers: Iterable[Header], client_ip_name: bytes, datacenter_name: bytes
) -> RequestFacts:
    """Collect the facts the proxy needs from the request headers in one pass."""
    f = RequestFacts()
    upgrade = b""
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"host":
            f.host = value
        elif name == b"connection":
            f.connection += tuple(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            f.content_length = int(value)
        elif name == b"transfer-encoding":
            f.chunked = True
        elif name == b"cookie":
            f.cookie = value if f.cookie is None else f.cookie + b"; " + value
        elif name == b"upgrade":
            upgrade = value
        elif name == b"expect":
            f.expect_continue = value.lower() == b"100-continue"
        elif name == b"x-request-id":
            f.request_id = value
        elif name == b"x-forwarded-proto":
            f.forwarded_proto = value
        elif name == b"idempotency-key" or name == b"x-idempotency-key":
            f.idempotency_key = True
        if name == client_ip_name:
            f.client_ip = value
        elif name == datacenter_name:
            f.ray = value
    f.head_bytes = size
    if upgrade and b"upgrade" in f.connection and upgrade.lower().startswith(b"websocket"):
        f.websocket = True
    return f


def idempotent(method: bytes) -> bool:
    """Whether ``method`` is idempotent (RFC 9110 §9.2.2): what ``retry_on`` retries."""
    return method in _IDEMPOTENT


def replayable(method: bytes, facts: RequestFacts) -> bool:
    """Whether a request may be sent again after a stale connection failed (Go's rule).

    Idempotent methods (RFC 9110 §9.2.2), or any method carrying an Idempotency-Key.
    """
    return method in _IDEMPOTENT or facts.idempotency_key


def upstream_headers(
    headers: Iterable[Header],
    facts: RequestFacts,
    *,
    host: bytes,
    peer_ip: bytes,
    client_ip: bytes,
    client_ip_name: bytes,
    proto: bytes,
    trusted: bool,
    request_id: bytes,
) -> list[Header]:
    """The request headers to send upstream (see the module docstring for the rules).

    ``request_id`` is the client's X-Request-Id when it sent one, else a generated one.
    """
    drop = tuple(t for t in facts.connection if t not in _FRAMING) if facts.connection else ()
    out: list[Header] = [(b"host", host)]
    xff: bytes | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in drop or name.startswith(b"proxy-"):
            continue
        if name == b"content-length" and facts.chunked:
            continue  # never both framing headers (the request is refused before, anyway)
        if name == b"host" or name == b"expect" or name == client_ip_name:
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if name == b"x-forwarded-proto" or name == b"x-forwarded-host" or name == b"x-request-id":
            continue
        out.append((name, value))
    if facts.websocket:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", b"websocket"))
    elif facts.chunked:
        out.append((b"transfer-encoding", b"chunked"))
    out.append((b"x-forwarded-for", peer_ip if xff is None else xff + b", " + peer_ip))
    fwd_proto = facts.forwarded_proto if trusted and facts.forwarded_proto else proto
    out.append((b"x-forwarded-proto", fwd_proto))
    out.append((b"x-forwarded-host", facts.host))
    out.append((client_ip_name, client_ip))
    out.append((b"x-request-id", request_id))
    return out


def response_headers(
    headers: Sequence[Header],
    *,
    set_cookie: bytes | None = None,
    close: bool = False,
    upgrade: bool = False,
) -> list[Header]:
    """The response headers to send downstream.

    Hop-by-hop headers go; Content-Length stays (the writer re-frames everything else); ``upgrade``
    keeps Upgrade and Connection for a 101.
    """
    drop: tuple[bytes, ...] = ()
    for name, value in headers:
        if name == b"connection" and value.lower() != b"keep-alive":
            # (``keep-alive``, what most servers send, names a header dropped anyway.)
            drop += tuple(
                t for t in (t.strip().lower() for t in value.split(b",")) if t not in _FRAMING
            )
    out: list[Header] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name.startswith(b"proxy-") or (drop and name in drop):
            if upgrade and (name == b"upgrade" or name == b"connection"):
                out.append((name, value))
            continue
        out.append((name, value))
    if set_cookie is not None:
        out.append((b"set-cookie", set_cookie))
    if close:
        out.append((b"connection", b"close"))
    return out


def cookie_value(cookie: bytes | None, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header, or None."""
    if not cookie:
        return None
    key = name.encode() + b"="
    if key not in cookie:
        return None
    for part in cookie.split(b";"):
        part = part.strip()
        if part.startswith(key):
            return part[len(key) :].decode("latin-1")
    return None


def parse_cookies(cookie: bytes | None) -> dict[str, str]:
    """Every cookie of a Cookie header (for header affinity on ``cookie``)."""
    out: dict[str, str] = {}
    if not cookie:
        return out
    for part in cookie.split(b";"):
        name, sep, value = part.strip().partition(b"=")
        if sep and name:
            out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


def affinity_cookie(value: str, ttl: float, *, samesite: str, secure: str, https: bool) -> bytes:
    """The ``Set-Cookie`` value for ``__cflb`` (R35, docs/cloudflare-rules.md).

    ``secure``: Always / Never, or Auto = Secure iff the downstream connection is HTTPS (our
    stand-in for Cloudflare's "Always Use HTTPS").  ``samesite``: Lax / Strict / None, or
    Auto = None on a secure cookie and Lax otherwise.  ``SameSite=None`` always comes with
    Secure, whatever ``secure`` says (browsers drop it without; configuration validation
    rejects ``samesite: None`` with ``secure: Never``).
    """
    is_secure = secure == "Always" or (secure == "Auto" and https)
    site = samesite if samesite != "Auto" else ("None" if is_secure else "Lax")
    if site == "None":
        is_secure = True  # browsers reject SameSite=None without Secure (also on plain HTTP)
    parts = [f"__cflb={value}", "Path=/", "HttpOnly", f"Max-Age={int(ttl)}"]
    if is_secure:
        parts.append("Secure")
    parts.append(f"SameSite={site}")
    return "; ".join(parts).encode("latin-1")


def colo_from_ray(ray: bytes | None) -> str:
    """The data-center code of a CF-Ray value (``8c2f1a2b3c4d5e6f-FRA`` -> ``FRA``)."""
    if not ray:
        return ""
    _, sep, colo = ray.rpartition(b"-")
    colo = colo.strip()
    if not sep or not colo.isalnum() or len(colo) > 8:
        return ""
    return colo.decode("ascii").upper()


def client_address(header_value: bytes | None, peer: str) -> str:
    """The client IP from a trusted header (its last comma item, if a valid IP), else ``peer``.

    The last item is the one the trusted proxy itself wrote when the header is a list like
    X-Forwarded-For; a single-valued header such as CF-Connecting-IP is its own last item.
    """
    if not header_value:
        return peer
    candidate = header_value.rpartition(b",")[2].strip().decode("latin-1")
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer
