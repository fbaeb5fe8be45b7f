"""Cloudflare's URL normalization, applied to the path custom rules see.

Cloudflare normalizes incoming URLs before its rules run; a zone's default is the
"Cloudflare" type with the "incoming" scope: rules see the normalized URL and the origin gets
the URL as sent (docs/semantics.md, "URL normalization before custom rules").  In
Cloudflare's order: backslashes become slashes, runs of slashes become one, percent-encoded
unreserved characters are decoded, other percent-encodings are upper-cased, other literal
bytes are percent-encoded, and dot segments are removed (RFC 3986 §5.2.4).  Only the path is
normalized; the query is left as sent.

The router applies it when it builds the fields of a request's custom rules
(``http.request.uri``, ``http.request.uri.path``); the ``raw.`` fields keep the target as
sent.  Pure functions, table tests in tests/steering/test_urls.py.
"""

from __future__ import annotations

import re

__all__ = ["normalize_path", "normalize_uri"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RESERVED = frozenset(b":/?#[]@!$&'()*+,;=")
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
"""A path with only these characters and no ``//``, ``/.`` needs no normalization."""
_HEX = frozenset(b"0123456789abcdefABCDEF")


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
