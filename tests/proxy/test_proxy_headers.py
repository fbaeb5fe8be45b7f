"""Table tests of the pure header logic (lb/proxy/headers.py) and error mapping."""

from __future__ import annotations

import pytest

from lb.proxy.errors import error_body, public_status, reason_phrase
from lb.proxy.headers import (
    affinity_cookie,
    client_address,
    colo_from_ray,
    cookie_value,
    parse_cookies,
    replayable,
    response_headers,
    scan_request,
    upstream_headers,
)
from lb.proxy.upstream import keep_alive_timeout
from steering.affinity import expires_of, sign

IP, DC = b"cf-connecting-ip", b"cf-ray"


def _up(headers: list[tuple[bytes, bytes]], *, trusted: bool = False) -> dict[bytes, bytes]:
    facts = scan_request(headers, IP, DC)
    out = upstream_headers(
        headers,
        facts,
        host=b"origin.example",
        peer_ip=b"10.0.0.1",
        client_ip=b"192.0.2.1",
        client_ip_name=IP,
        proto=b"https",
        trusted=trusted,
        request_id=facts.request_id or b"generated",
    )
    names = [n for n, _ in out]
    assert len(names) == len(set(names)), out
    return dict(out)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic x"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"h2c"),
        (b"expect", b"100-continue"),
    ],
)
def test_hop_by_hop_request_headers_dropped(header: bytes, value: bytes) -> None:
    out = _up([(b"host", b"a"), (header, value)])
    assert header not in out


def test_connection_listed_names_dropped() -> None:
    out = _up([(b"host", b"a"), (b"connection", b"x-a, X-B"), (b"x-a", b"1"), (b"x-b", b"2")])
    assert b"x-a" not in out and b"x-b" not in out


def test_forwarding_headers() -> None:
    out = _up([(b"host", b"client.example"), (b"x-forwarded-for", b"1.1.1.1")])
    assert out[b"host"] == b"origin.example"
    assert out[b"x-forwarded-host"] == b"client.example"
    assert out[b"x-forwarded-for"] == b"1.1.1.1, 10.0.0.1"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[IP] == b"192.0.2.1"
    assert out[b"x-request-id"] == b"generated"


def test_forwarded_proto_kept_only_from_trusted_peer() -> None:
    headers = [(b"host", b"a"), (b"x-forwarded-proto", b"http")]
    assert _up(headers)[b"x-forwarded-proto"] == b"https"
    assert _up(headers, trusted=True)[b"x-forwarded-proto"] == b"http"


def test_websocket_and_chunked_framing() -> None:
    ws = _up([(b"host", b"a"), (b"connection", b"Upgrade"), (b"upgrade", b"WebSocket")])
    assert ws[b"upgrade"] == b"websocket" and ws[b"connection"] == b"upgrade"
    chunked = _up([(b"host", b"a"), (b"transfer-encoding", b"chunked")])
    assert chunked[b"transfer-encoding"] == b"chunked"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"0")], False),
        ([(b"content-length", b"7")], True),
        ([(b"transfer-encoding", b"chunked")], True),
        ([], False),
    ],
)
def test_has_body(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert scan_request(headers, IP, DC).has_body is expected


def test_response_headers() -> None:
    out = response_headers(
        [
            (b"content-length", b"5"),
            (b"connection", b"keep-alive, x-private"),
            (b"x-private", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"transfer-encoding", b"chunked"),
            (b"set-cookie", b"a=b"),
        ],
        set_cookie=b"__cflb=v",
        close=True,
    )
    assert out == [
        (b"content-length", b"5"),
        (b"set-cookie", b"a=b"),
        (b"set-cookie", b"__cflb=v"),
        (b"connection", b"close"),
    ]
    up = response_headers([(b"upgrade", b"websocket"), (b"connection", b"upgrade")], upgrade=True)
    assert up == [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (None, None),
        (b"", None),
        (b"a=1", None),
        (b"__cflb=xyz", "xyz"),
        (b"a=1; __cflb=v1.a.b.c; b=2", "v1.a.b.c"),
        (b"x__cflb=no", None),
    ],
)
def test_cookie_value(cookie: bytes | None, expected: str | None) -> None:
    assert cookie_value(cookie, "__cflb") == expected


def test_parse_cookies() -> None:
    assert parse_cookies(b"a=1; b=2; junk; a=3") == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("samesite", "secure", "https", "flags"),
    [
        ("Auto", "Auto", False, ["SameSite=Lax"]),
        ("Auto", "Auto", True, ["Secure", "SameSite=None"]),
        ("Strict", "Always", False, ["Secure", "SameSite=Strict"]),
        ("Lax", "Never", True, ["SameSite=Lax"]),
        # SameSite=None is always Secure: browsers reject it otherwise, even on plain HTTP.
        ("None", "Auto", False, ["Secure", "SameSite=None"]),
        ("None", "Never", False, ["Secure", "SameSite=None"]),
    ],
)
def test_affinity_cookie(samesite: str, secure: str, https: bool, flags: list[str]) -> None:
    value = affinity_cookie("v", 1800, samesite=samesite, secure=secure, https=https).decode()
    parts = value.split("; ")
    assert parts[:4] == ["__cflb=v", "Path=/", "HttpOnly", "Max-Age=1800"]
    assert parts[4:] == flags


@pytest.mark.parametrize(
    ("ray", "colo"),
    [
        (b"8c2f1a2b3c4d5e6f-FRA", "FRA"),
        (b"8c2f1a2b3c4d5e6f-ams", "AMS"),
        (b"nodash", ""),
        (b"abc-", ""),
        (b"abc-<script>", ""),
        (None, ""),
    ],
)
def test_colo_from_ray(ray: bytes | None, colo: str) -> None:
    assert colo_from_ray(ray) == colo


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"198.51.100.7", "198.51.100.7"),
        (b"1.1.1.1, 198.51.100.7", "198.51.100.7"),
        (b"2001:db8::1", "2001:db8::1"),
        (b"not-an-ip", "10.0.0.1"),
        (None, "10.0.0.1"),
    ],
)
def test_client_address(value: bytes | None, expected: str) -> None:
    assert client_address(value, "10.0.0.1") == expected


def test_replayable() -> None:
    facts = scan_request([], IP, DC)
    assert replayable(b"GET", facts) and replayable(b"PUT", facts)
    assert not replayable(b"POST", facts)
    keyed = scan_request([(b"idempotency-key", b"k")], IP, DC)
    assert replayable(b"POST", keyed)


@pytest.mark.parametrize(
    ("status", "style", "shown", "body"),
    [
        (521, "cloudflare", 521, b"error code: 521\n"),
        (522, "plain", 504, b"522 Connection Timed Out\n"),
        (523, "plain", 502, None),
        (525, "plain", 502, None),
        (526, "plain", 502, None),
        (524, "plain", 504, None),
        (530, "cloudflare", 530, b"error code: 1016\n"),
        (530, "plain", 503, None),
    ],
)
def test_error_mapping(status: int, style: str, shown: int, body: bytes | None) -> None:
    assert public_status(status, style) == shown
    if body is not None:
        assert error_body(status, style) == body
    assert reason_phrase(status)


def test_connection_never_strips_framing_headers() -> None:
    # "Connection: content-length" must not unframe a body h11 framed by Content-Length.
    out = _up(
        [
            (b"host", b"app.example"),
            (b"connection", b"content-length, x-drop"),
            (b"content-length", b"5"),
            (b"x-drop", b"1"),
        ]
    )
    assert out[b"content-length"] == b"5"
    assert b"x-drop" not in out
    down = response_headers(
        [(b"connection", b"Content-Length, x-drop"), (b"content-length", b"2"), (b"x-drop", b"1")]
    )
    assert down == [(b"content-length", b"2")]


def test_keep_alive_timeout_parsing() -> None:
    assert keep_alive_timeout([(b"keep-alive", b"timeout=5, max=100")]) == 5.0
    assert keep_alive_timeout([(b"keep-alive", b"max=100")]) is None
    assert keep_alive_timeout([(b"keep-alive", b"timeout=x")]) is None
    assert keep_alive_timeout([(b"content-length", b"1")]) is None


def test_expires_of() -> None:
    value = sign(b"k", "lb", "p", "e", 1_700_000_000.7)
    assert (
        expires_of(value) == 1_700_000_001.0
    )  # whole seconds, rounded up (steering.affinity.sign)
    assert expires_of("v1.abc.x.mac") is None
    assert expires_of("garbage") is None
