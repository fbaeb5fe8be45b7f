"""Checking network addresses written in the configuration (``host:port``, CIDRs)."""

from __future__ import annotations

import ipaddress

from lb.config.hosts import split_host_port

__all__ = ["cidr_problem", "host_port_problem"]


def host_port_problem(text: str, *, allow_port_zero: bool = False) -> str:
    """The reason ``text`` is not a usable ``host:port``, or ``''``.

    Read by :func:`lb.config.hosts.split_host_port` (host and port both required).  Port 0
    ("any free port") only makes sense for addresses we listen on.
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
