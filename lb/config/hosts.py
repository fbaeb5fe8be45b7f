"""Host names and ``host:port`` values, read the same way everywhere (pure, no I/O).

One reading for the proxy and the monitors: before this module the proxy looked ``connect_to``
up by the endpoint address as written while the monitors lowercased it, so an address such as
``Origin.Example.com`` was probed on its ``connect_to`` stand-in and proxied to the real host.

* :func:`split_host_port`: the one ``host:port`` parser (configuration, admin and connector
  addresses, command-line options, Host values): ``host:port`` and ``[v6]:port``, with an
  optional default port (then ``[v6]``, a bare IPv6 address or a bare host too) and default
  host; brackets removed, one-line errors.
* :func:`normalise_host`: the canonical name of a Host value for lookups (lowercase, port and
  one trailing dot removed), or None when it is not a valid host name or IP address.
* :func:`is_loopback`: whether a bind address keeps a listener on this machine.
* :func:`dial_address`: where ``address:port`` is actually dialled, given ``connect_to``.
  The loader stores ``connect_to`` keys as ``host:port`` in lower case
  (:mod:`lb.config._checks`); the address is normalised the same way before the lookup.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

__all__ = [
    "LOOPBACK",
    "connect_key",
    "dial_address",
    "is_loopback",
    "normalise_host",
    "split_host_port",
]

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
"""One DNS label, as leniently as :data:`_HOSTNAME` reads host names."""
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?\Z"
)
"""A host name as the configuration accepts it (``_`` too, and one trailing dot)."""
_MAX_NAME = 253
LOOPBACK = "127.0.0.1"
"""The host of an admin or ``--listen`` address written as a bare ``:port``: never every
interface unless an address says so."""
_CACHE_LIMIT = 4096
_normalised: dict[str, str | None] = {}


def split_host_port(
    text: str, *, default_port: int | None = None, default_host: str | None = None
) -> tuple[str, int]:
    """``text`` as ``(host, port)``: the project's one reading of ``host:port``.

    ``"a.example:8443"`` -> ``("a.example", 8443)``, ``"[::1]:443"`` -> ``("::1", 443)``.
    IPv6 addresses are bracketed, as in URLs and curl's ``--connect-to``, so the port is never
    ambiguous; brackets are removed from the result.  The host is returned as written (see
    :func:`normalise_host` for the canonical form).

    Args:
        text: the value to read.
        default_port: the port of a value that names none (``a.example``, ``a.example:``,
            ``[::1]``, or a bare IPv6 address such as ``::1``, which can then carry no port).
            None (the default) makes the port required.
        default_host: the host of a value with an empty one (``:8080``); None (the default)
            makes the host required.

    Raises:
        ValueError: with a one-line message fit for the user: a missing host or port, a port
            that is not a number in 0..65535, an unclosed bracket, brackets around something
            other than an IPv6 address, an unbracketed IPv6 address with a port, or a host
            that is not a host name or IP address.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f'unclosed "[" in "{text}"')
        if rest and not rest.startswith(":"):
            raise ValueError(f'unexpected text after "]" in "{text}"')
        if not _is_ipv6(host):
            raise ValueError(f'"{host}" in brackets is not an IPv6 address')
        return host, _port(rest[1:], default_port, text)
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = text, ""
    elif ":" in host:
        if default_port is None or not _is_ipv6(text):
            raise ValueError(f'IPv6 addresses need brackets, e.g. "[{host}]:{port_text}"')
        return text, default_port  # a bare IPv6 address: it carries no port
    port = _port(port_text, default_port, text)
    if not host:
        if default_host is None:
            raise ValueError(f'expected "host:port", got "{text}"')
        return default_host, port
    if not _HOSTNAME.match(host):
        raise ValueError(f'"{host}" is not a host name or IP address')
    return host, port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str, default_port: int | None, value: str) -> int:
    if not text:  # "host:" as well (RFC 3986 allows an empty port)
        if default_port is None:
            raise ValueError(f'expected "host:port", got "{value}"')
        return default_port
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ValueError(f'port must be a number between 0 and 65535, got "{text}"')
    return int(text)


def normalise_host(host: str) -> str | None:
    """The lookup form of a Host value or address, or None when it is not one.

    Lowercase; the port, IPv6 brackets and one trailing dot (the DNS root) removed; IP
    addresses in their canonical text form.  None for an empty name, an empty label
    (``a..example``, ``example..``), a label over 63 characters or with characters other than
    letters, digits, ``-`` and ``_``, a name over 253 characters, or a bad port.  Cached.
    """
    try:
        return _normalised[host]
    except KeyError:
        pass
    result = _normalise(host)
    if len(_normalised) >= _CACHE_LIMIT:  # values come from request headers
        _normalised.clear()
    _normalised[host] = result
    return result


def _normalise(value: str) -> str | None:
    try:
        host, _ = split_host_port(value, default_port=0)
    except ValueError:
        return None
    if ":" in host or value.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME or not name.isascii():
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        return name


def connect_key(address: str, port: int) -> str | None:
    """The ``connect_to`` key of ``address:port``: normalised host (IPv6 in brackets)."""
    host = normalise_host(address)
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dial_address(address: str, port: int, connect_to: Mapping[str, str]) -> tuple[str, int]:
    """Where ``address:port`` is dialled: its ``connect_to`` stand-in, else itself.

    The key looked up is ``host:port`` with the host normalised (:func:`normalise_host`;
    IPv6 in brackets), which is how the loader stores the keys.  Only the socket address
    changes; Host and SNI stay what they would be without ``connect_to``.
    """
    if not connect_to:
        return address, port
    key = connect_key(address, port)
    mapped = connect_to.get(key) if key else None
    if not mapped:
        return address, port
    return split_host_port(mapped, default_port=port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses, bracketed or not.  Any other name or
    address is not: an empty host, ``0.0.0.0`` and ``::`` mean every interface."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
