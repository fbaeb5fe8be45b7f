"""Checking network addresses written in the configuration (``host:port``, CIDRs)."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["cidr_problem", "host_port_problem", "split_host_port"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def split_host_port(text: str) -> tuple[str, int]:
    """``"example.com:443"`` -> ``("example.com", 443)``; ``"[::1]:80"`` -> ``("::1", 80)``.

    Raises ValueError with a message fit for the user.  IPv6 addresses must be bracketed, as
    in URLs and curl's ``--connect-to``, so the port is never ambiguous.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "host:port", got "{text}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" in brackets is not an IPv6 address') from None
    elif ":" in host:
        raise ValueError(f'IPv6 addresses need brackets, e.g. "[{host}]:{port_text}"')
    elif not _HOSTNAME.match(host):
        raise ValueError(f'"{host}" is not a host name or IP address')
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number between 0 and 65535, got "{port_text}"')
    return host, int(port_text)


def host_port_problem(text: str, *, allow_port_zero: bool = False) -> str:
    """The reason ``text`` is not a usable ``host:port``, or ``''``.

    Port 0 ("any free port") only makes sense for addresses we listen on.
    """
    try:
        _, port = split_host_port(text)
    except ValueError as exc:
        return str(exc)
    if port == 0 and not allow_port_zero:
        return f'port 0 is not a port to connect to, in "{text}"'
    return ""


def cidr_problem(text: str) -> str:
    """The reason ``text`` is not a network such as ``10.0.0.0/8`` or ``::1/128``, or ``''``."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"not a network address: {exc}"
    return ""
