"""Table tests of steering/urls.py: Cloudflare's URL normalization of the path rules see.

The normalization rows include the examples of Cloudflare's URL normalization docs for the
"Cloudflare" type (docs/semantics.md, "URL normalization").
"""

from __future__ import annotations

import pytest

from steering.urls import normalize_path, normalize_uri


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/hello", "/hello"),
        ("/%68ello", "/hello"),  # Cloudflare's example
        ("/%68ello//pa\\th", "/hello/pa/th"),  # Cloudflare's example
        ("/hello//../path", "/path"),  # Cloudflare's example
        ("/hello/\\../path", "/path"),  # Cloudflare's example
        ("//admin/secret", "/admin/secret"),
        ("/%61dmin/secret", "/admin/secret"),
        ("/%41%2d%2E%5f%7E%30", "/A-._~0"),  # every unreserved class decodes
        ("/a%2fb", "/a%2Fb"),  # reserved stays encoded, upper-cased
        ("/a%3Fb%25c", "/a%3Fb%25c"),
        ("/a/./b/../c", "/a/c"),
        ("/../../a", "/a"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("/%2e%2e/admin", "/admin"),  # decoded dots are dot segments
        ("/.well-known/x", "/.well-known/x"),
        ("/caf\xe9", "/caf%E9"),  # a literal byte is percent-encoded
        ('/a"b<c>', "/a%22b%3Cc%3E"),
        ("/100%", "/100%25"),  # a % that starts no escape
        ("/%zz", "/%25zz"),
        ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal
    assert normalize_path(normal) == normal  # idempotent


def test_normalize_uri_keeps_the_query() -> None:
    assert normalize_uri("//a/%62?x=%61&y=//") == "/a/b?x=%61&y=//"
    plain = "/a/b?c=d"
    assert normalize_uri(plain) is plain
