"""Request targets: the origin-form an endpoint gets.

:func:`origin_form` turns an absolute-form target (``GET http://host/path HTTP/1.1``,
RFC 9112 §3.2.2) into the origin-form ``/path`` sent upstream, and returns the URL's
authority, which then stands for the Host header (the RFC says to ignore the Host header of
such a request).  Origin-form and ``*`` pass through unchanged.  The endpoint gets the path
as sent; the path custom rules see is normalized by the router (:mod:`steering.urls`).

A pure function over the request-target bytes the parser hands out (already free of spaces
and control characters); table tests in tests/proxy/test_proxy_urls.py.
"""

from __future__ import annotations

import re

__all__ = ["BadTargetError", "origin_form"]


class BadTargetError(ValueError):
    """A request-target the proxy does not serve (answered 400)."""


_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """``(origin-form target, authority)``; authority is None unless the target was absolute.

    Raises BadTargetError for a target that is neither origin-form, ``*`` nor an ``http(s)`` URL
    with a host (an authority-form target outside CONNECT, another scheme, userinfo).
    """
    if target[:1] == b"/" or target == b"*":
        return target, None
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise BadTargetError("request-target is neither a path nor an absolute URL")
    scheme, authority, rest = m.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise BadTargetError("absolute URL with a scheme other than http or https")
    if not authority or b"@" in authority:
        raise BadTargetError("absolute URL without a host, or with userinfo")
    if not rest:
        rest = b"/"
    elif rest[:1] == b"?":
        rest = b"/" + rest
    return rest, authority
