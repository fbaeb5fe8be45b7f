"""cloudflared-style ingress rules: parsing, validation and the R48 matcher.

Everything here is pure (no I/O) so the routing behaviour that tests, the demo and the
load balancer's tunnel endpoints rely on can be pinned down by table tests.  The matcher
mirrors cloudflared's ``Ingress.FindMatchingRule`` and ``matchHost`` (docs/connector.md,
R48): the port is stripped from the Host, ``*.d`` matches any name *under* ``d`` (at any
depth) but never ``d`` itself, the first rule whose hostname and path regex both match
wins, and when none matches the last (catch-all) rule answers.  Unlike cloudflared we
compare hostnames case-insensitively, because DNS names are and R48 says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "Bastion",
    "HelloWorld",
    "HttpStatus",
    "IngressRule",
    "OriginService",
    "RuleError",
    "Service",
    "TcpService",
    "UnixService",
    "match_rule",
    "parse_service",
    "request_host",
    "validate_rules",
]


@dataclass(frozen=True, slots=True)
class OriginService:
    """``http://host:port`` or ``https://host:port``: forward the request to that origin."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UnixService:
    """``unix:/path/to.sock`` (plain HTTP) or ``unix+tls:/path/to.sock`` (HTTPS) over a unix
    socket."""

    path: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class TcpService:
    """``tcp://``, ``ssh://``, ``rdp://``, ``smb://host:port``: a private TCP service reached by
    a WebSocket upgrade whose binary messages carry the byte stream (``cloudflared access``)."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Bastion:
    """``bastion``: like :class:`TcpService`, but the client names the destination in the
    ``Cf-Access-Jump-Destination`` header; the connector's ``bastion_allow`` list bounds it."""


@dataclass(frozen=True, slots=True)
class HttpStatus:
    """``http_status:NNN``: answer that status with an empty body (health routes, catch-alls)."""

    code: int


@dataclass(frozen=True, slots=True)
class HelloWorld:
    """``hello_world``: answer 200 with JSON naming the tunnel and replica that served."""


Service = OriginService | UnixService | HttpStatus | HelloWorld | TcpService | Bastion

TCP_DEFAULT_PORTS = {"ssh": 22, "rdp": 3389, "smb": 445}
"""cloudflared's default ports; ``tcp://`` has none worth guessing, so it needs one."""


class RuleError(ValueError):
    """A rule field that cannot be used; ``field`` names it for the config error's path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def parse_service(text: str) -> Service:
    """Parse a service string; raises ValueError with a message fit for a config error.

    Origins must not carry a path, like cloudflared ("ingress services don't support
    paths"), so that a typo such as ``http://host:80/api`` is not silently ignored.
    """
    if text == "hello_world":
        return HelloWorld()
    if text == "bastion":
        return Bastion()
    if text.startswith("http_status:"):
        code = text.removeprefix("http_status:")
        if not (code.isascii() and code.isdigit() and 200 <= int(code) <= 599):
            raise ValueError(f"http_status needs a final status code from 200 to 599, not {code!r}")
        return HttpStatus(int(code))
    if text.startswith(("unix:", "unix+tls:")):
        tls, _, path = text.partition(":")
        if not path.startswith("/"):
            raise ValueError(f"unix service needs an absolute socket path, not {path!r}")
        return UnixService(path, tls=tls == "unix+tls")
    if not text.startswith(
        ("http://", "https://", "tcp://", *(f"{s}://" for s in TCP_DEFAULT_PORTS))
    ):
        raise ValueError(
            f"unknown service {text!r}: expected http://host:port, https://host:port, "
            "unix:/path, unix+tls:/path, tcp://host:port, ssh://, rdp://, smb://, bastion, "
            "http_status:NNN or hello_world"
        )
    url = urlsplit(text)
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"service {text!r} has an invalid port") from None
    if not url.hostname:
        raise ValueError(f"service {text!r} has no host")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ValueError(f"service {text!r} must be scheme://host:port without a path")
    if url.scheme not in ("http", "https"):
        port = port if port is not None else TCP_DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise ValueError(f"service {text!r} needs a port (tcp://host:port)")
        return TcpService(url.scheme, url.hostname, port)
    default = 443 if url.scheme == "https" else 80
    return OriginService(url.scheme, url.hostname, port if port is not None else default)


def _check_hostname(hostname: str) -> None:
    """Reject hostnames cloudflared rejects (ports, misplaced wildcards) and non-DNS names."""
    if ":" in hostname:
        raise ValueError(f"hostname {hostname!r} must not contain a port")
    if "*" in hostname[1:]:
        raise ValueError(
            f"hostname {hostname!r}: a wildcard is only allowed as the first label, "
            "as in *.example.com"
        )
    name = hostname.removeprefix("*.")
    if hostname.startswith("*") and not hostname.startswith("*."):
        raise ValueError(f"hostname {hostname!r}: a wildcard must be followed by a dot")
    labels = name.lower().split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"hostname {hostname!r} is not a valid DNS name")


@dataclass(frozen=True, slots=True)
class IngressRule:
    """One ingress rule as written in the file; derived fields are parsed on construction.

    ``hostname`` None, empty or ``"*"`` with no ``path`` is a catch-all.  Construction
    raises :class:`RuleError` (a ValueError) on a bad hostname, regex or service, so a
    rule built in code is as trustworthy as one loaded from YAML.
    """

    service: str
    hostname: str | None = None
    path: str | None = None
    parsed_service: Service = field(init=False, compare=False, repr=False)
    path_regex: re.Pattern[str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.hostname not in (None, "", "*"):
            try:
                _check_hostname(self.hostname)
            except ValueError as exc:
                raise RuleError("hostname", str(exc)) from None
        regex = None
        if self.path:
            try:
                regex = re.compile(self.path)
            except re.error as exc:
                raise RuleError("path", f"{self.path!r} is not a valid regex: {exc}") from None
        object.__setattr__(self, "path_regex", regex)
        try:
            object.__setattr__(self, "parsed_service", parse_service(self.service))
        except ValueError as exc:
            raise RuleError("service", str(exc)) from None

    @property
    def is_catch_all(self) -> bool:
        """True when the rule matches every request (what cloudflared requires last)."""
        return self.hostname in (None, "", "*") and self.path_regex is None

    def matches(self, host: str, path: str) -> bool:
        """Whether this rule takes a request for ``host`` (already port-stripped) and ``path``."""
        return _host_matches(self.hostname, host) and (
            self.path_regex is None or self.path_regex.search(path) is not None
        )


def _host_matches(rule_host: str | None, host: str) -> bool:
    """cloudflared's ``matchHost``: exact, or ``*.d`` as a suffix test keeping the dot."""
    if rule_host in (None, "", "*"):
        return True
    rule = rule_host.lower()
    if rule == host:
        return True
    return rule.startswith("*.") and host.endswith(rule[1:])


def request_host(host_header: str) -> str:
    """The Host header as the matcher compares it: port stripped, lowercased.

    ``[::1]:443`` gives ``::1``; a bare IPv6 address without brackets is left whole,
    like Go's ``net.SplitHostPort`` failing and cloudflared keeping the input.
    """
    host = host_header.strip()
    if host.startswith("["):
        inside, closed, rest = host[1:].partition("]")
        if closed and (not rest or rest.startswith(":")):
            host = inside
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.lower()


def match_rule(rules: Sequence[IngressRule], host_header: str, path: str) -> int:
    """Index of the rule that serves a request (R48): first match, else the last rule.

    ``path`` is the request target's path (query excluded), searched by the rule's regex
    as Go's ``MatchString`` does (unanchored).  ``rules`` must be non-empty.
    """
    host = request_host(host_header)
    for index, rule in enumerate(rules):
        if rule.matches(host, path):
            return index
    return len(rules) - 1


def validate_rules(rules: Sequence[IngressRule]) -> list[tuple[int | None, str]]:
    """Problems of a rule list as ``(index, message)``; an empty list means usable.

    The last rule must be a catch-all (cloudflared refuses to start otherwise) so that
    every request has an answer; an earlier catch-all would hide the rules after it.
    """
    if not rules:
        return [(None, "at least one rule is required, the last being a catch-all")]
    problems: list[tuple[int | None, str]] = []
    last = len(rules) - 1
    for index, rule in enumerate(rules[:-1]):
        if rule.is_catch_all:
            problems.append(
                (
                    index,
                    f"matches every request, so the rules after it (up to ingress[{last}]) "
                    "would never be used; only the last rule may be a catch-all",
                )
            )
    if not rules[-1].is_catch_all:
        problems.append(
            (
                last,
                'the last rule must be a catch-all (no hostname, or hostname "*", '
                "and no path), e.g. `- service: http_status:404`",
            )
        )
    return problems
