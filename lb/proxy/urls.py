"""Request targets: the origin-form the endpoint gets, and the path custom rules see.

Pure functions over the request-target bytes h11 hands out (already free of spaces and
control characters); table tests in tests/proxy/test_proxy_urls.py.

* :func:`origin_form` turns an absolute-form target (``GET http://host/path HTTP/1.1``,
  RFC 9112 §3.2.2) into the origin-form ``/path`` sent upstream, and returns the URL's
  authority, which then stands for the Host header (the RFC says to ignore the Host header
  of such a request).  Origin-form and ``*`` pass through unchanged.
* :func:`normalize_path` is Cloudflare's default URL normalization (type "Cloudflare",
  scope "incoming"; docs/semantics.md, "URL normalization"), in Cloudflare's order:
  backslashes become slashes, runs of slashes become one, percent-encoded unreserved
  characters are decoded, other percent-encodings are upper-cased, other literal bytes are
  percent-encoded, and dot segments are removed (RFC 3986 §5.2.4).  Only the path is
  normalized; the query is left as sent.

Rules read the normalized path (``http.request.uri``, ``http.request.uri.path``); the
``raw.`` fields and the endpoint see the target as the client sent it, as Cloudflare does
when "Normalize URLs to origin" is off, its default.
"""

from __future__ import annotations

import re

__all__ = ["BadTargetError", "normalize_path", "normalize_uri", "origin_form"]


class BadTargetError(ValueError):
    """A request-target the proxy does not serve (answered 400)."""


_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RESERVED = frozenset(b":/?#[]@!$&'()*+,;=")
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
"""A path with only these characters and no ``//``, ``/.`` needs no normalization."""
_HEX = frozenset(b"0123456789abcdefABCDEF")


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


def normalize_uri(target: str) -> str:
    """The target (path and query) with its path normalized (:func:`normalize_path`)."""
    path, sep, query = target.partition("?")
    normal = normalize_path(path)
    if normal is path:
        return target
    return f"{normal}{sep}{query}"


def normalize_path(path: str) -> str:
    """Cloudflare's URL normalization of one path (see the module docstring).

    ``path`` is the latin-1 text of the request bytes; the result is ASCII.  The path is
    returned as is (the same object) when nothing in it can change.
    """
    if "//" not in path and "/." not in path and _PLAIN.fullmatch(path):
        return path
    merged = re.sub(r"/{2,}", "/", path.replace("\\", "/"))
    return _remove_dot_segments(_rfc3986_encoding(merged.encode("latin-1")))


def _rfc3986_encoding(raw: bytes) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            value = int(raw[i + 1 : i + 3], 16)
            out.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
            i += 3
            continue
        if byte in _UNRESERVED or byte in _RESERVED:
            out.append(chr(byte))
        else:  # a literal byte, or a "%" that starts no escape
            out.append(f"%{byte:02X}")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, for an absolute path (a relative one gets the same treatment)."""
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    if path.startswith("/") and not result.startswith("/"):
        result = "/" + result
    return result
