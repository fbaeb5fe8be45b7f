"""Table tests of lb/proxy/urls.py: the origin-form an absolute-form target becomes."""

from __future__ import annotations

import pytest

from lb.proxy.urls import BadTargetError, origin_form


@pytest.mark.parametrize(
    ("target", "origin", "authority"),
    [
        (b"/a?b", b"/a?b", None),
        (b"*", b"*", None),
        (b"http://h/a?b", b"/a?b", b"h"),
        (b"HTTPS://H:8443", b"/", b"H:8443"),
        (b"http://h?q=1", b"/?q=1", b"h"),
        (b"http://[::1]:80/x", b"/x", b"[::1]:80"),
    ],
)
def test_origin_form(target: bytes, origin: bytes, authority: bytes | None) -> None:
    assert origin_form(target) == (origin, authority)


@pytest.mark.parametrize(
    "target", [b"h:80", b"ftp://h/x", b"http:///x", b"http://u@h/x", b"x", b"http:/x"]
)
def test_origin_form_refuses(target: bytes) -> None:
    with pytest.raises(BadTargetError):
        origin_form(target)
