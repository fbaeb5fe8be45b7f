"""The connector's own small YAML file (cloudflared-like) and its frozen model.

The file deliberately mirrors cloudflared's ``config.yml`` (``tunnel``, ``ingress``,
``originRequest``) so a test fixture reads like the production configuration it stands
in for; fields only the stand-in needs (``replica``, ``datacenter``, ``listen``) are
ours.  Every problem found is reported at once, each naming the file, the line and a
dotted path such as ``ingress[3].service``, through the project's :class:`ConfigError`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from lb.config import Node, read_file
from lb.config.errors import ConfigError, Problem
from lb.config.hosts import split_host_port
from lb.config.kinds import CONNECTOR, wrong_kind
from lb.connector.ingress import Bastion, IngressRule, RuleError, validate_rules
from lb.connector.tls import CertificateError, check_files

__all__ = ["ConnectorConfig", "load_connector_config"]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _field_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Cross-field checks shared by code construction and the file loader."""
    problems: list[tuple[str, str]] = []
    if not _UUID.match(values["tunnel"]):
        problems.append(("tunnel", f"{values['tunnel']!r} is not a tunnel UUID"))
    for name in ("listen", "listen_http"):
        if values[name] is not None:
            try:
                split_host_port(values[name])
            except ValueError as exc:
                problems.append((name, str(exc)))
    if values["key"] and not values["certificate"]:
        problems.append(("key", "`key` needs `certificate`"))
    problems.extend(
        (name, "must be a positive number of seconds")
        for name in ("connect_timeout", "idle_timeout")
        if values[name] <= 0
    )
    if values["keep_alive_idle"] is not None and values["keep_alive_idle"] <= 0:
        problems.append(("keep_alive_idle", "must be a positive number of seconds"))
    if values["keep_alive_announce"] and values["keep_alive_idle"] is None:
        problems.append(("keep_alive_announce", "needs keep_alive_idle: the timeout it announces"))
    if values["random_closes"] < 0:
        problems.append(("random_closes", "must be 0 or more closes per connection-second"))
    problems.extend(
        ("ingress" if index is None else f"ingress[{index}]", message)
        for index, message in validate_rules(values["ingress"])
    )
    for index, entry in enumerate(values["bastion_allow"]):
        try:
            split_host_port(entry)
        except ValueError as exc:
            problems.append((f"bastion_allow[{index}]", str(exc)))
    if not values["bastion_allow"]:
        problems.extend(
            (
                f"ingress[{index}].service",
                "a bastion rule needs `bastion_allow`: the host:port destinations clients may "
                "name in Cf-Access-Jump-Destination",
            )
            for index, rule in enumerate(values["ingress"])
            if isinstance(rule.parsed_service, Bastion)
        )
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorConfig:
    """One connector: a tunnel replica's listener and its ingress rules.

    Build it in code for tests (``ssl_context`` and ``origin_ssl_context`` accept contexts
    made with trustme) or load it with :func:`load_connector_config`.  Construction
    raises ValueError listing every problem, so an invalid connector never starts.
    """

    tunnel: str
    """The tunnel UUID this stand-in pretends to be (shown by ``hello_world``)."""
    ingress: tuple[IngressRule, ...]
    replica: str = "replica-0"
    datacenter: str | None = None
    listen: str = "127.0.0.1:0"
    """HTTPS listener; port 0 binds a free port (``serve_connector`` reports it)."""
    listen_http: str | None = None
    """Optional plain-HTTP listener serving the same rules."""
    certificate: str | None = None
    """PEM certificate chain (may also hold the key); absent: self-signed at start."""
    key: str | None = None
    no_tls_verify: bool = False
    """For ``https://`` origins: skip certificate verification (cloudflared's noTLSVerify)."""
    ca_pool: str | None = None
    """For ``https://`` origins: PEM file of CAs to trust (cloudflared's caPool)."""
    connect_timeout: float = 10.0
    """Seconds to connect (and TLS-handshake) to an origin before answering 502."""
    idle_timeout: float = 60.0
    keep_alive_idle: float | None = None
    """Seconds a kept-alive connection may wait for its next request before the connector
    closes it, silently, as Node.js does after 5 s; None: ``idle_timeout`` bounds it."""
    keep_alive_announce: bool = False
    """Say ``keep_alive_idle`` in a ``Keep-Alive: timeout=N`` header of every local answer."""
    random_closes: float = 0.0
    """Besides, close connections at random moments between requests: this many closes per
    connection-second on average (a load shedder, a restarting worker)."""
    bastion_allow: tuple[str, ...] = ()
    """``host:port`` destinations a ``bastion`` rule may connect to; any other is refused (403).
    cloudflared leaves this to Access policies, which the stand-in does not have."""
    """Seconds a client connection may sit idle (or dribble a request head) before closing."""
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    """Use this server context instead of ``certificate``/``key`` (tests)."""
    origin_ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    """Use this client context for ``https://`` origins instead of ``ca_pool`` (tests)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ingress", tuple(self.ingress))
        object.__setattr__(self, "bastion_allow", tuple(self.bastion_allow))
        object.__setattr__(self, "tunnel", self.tunnel.lower())
        problems = _field_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))


# --------------------------------------------------------------------------- file loading

_SCALARS: dict[str, tuple[str, str]] = {
    "tunnel": ("string", "tunnel"),
    "replica": ("string", "replica"),
    "datacenter": ("string", "datacenter"),
    "listen": ("string", "listen"),
    "listen_http": ("string", "listen_http"),
    "certificate": ("string", "certificate"),
    "key": ("string", "key"),
    "idle_timeout": ("number", "idle_timeout"),
    "keep_alive_idle": ("number", "keep_alive_idle"),
    "keep_alive_announce": ("boolean", "keep_alive_announce"),
    "random_closes": ("number", "random_closes"),
    "bastion_allow": ("list of host:port strings", "bastion_allow"),
}
_ORIGIN_REQUEST: dict[str, tuple[str, str]] = {
    "noTLSVerify": ("boolean", "no_tls_verify"),
    "caPool": ("string", "ca_pool"),
    "connectTimeout": ("number", "connect_timeout"),
}
_RULE_KEYS = ("hostname", "path", "service")


def _lines(node: Node, path: str, out: dict[str, int]) -> None:
    """Map every dotted path under ``node`` to its 1-based line (a key's own line for a
    mapping entry), for error messages."""
    out.setdefault(path, node.line)
    if isinstance(node.value, dict):
        for key, child in node.value.items():
            sub = f"{path}.{key}" if path else key
            out[sub] = node.key_lines.get(key, child.line)
            _lines(child, sub, out)
    elif isinstance(node.value, list):
        for index, item in enumerate(node.value):
            _lines(item, f"{path}[{index}]", out)


def _typed(
    data: Mapping[str, Any],
    spec: Mapping[str, tuple[str, str]],
    prefix: str,
    kwargs: dict[str, Any],
    problems: list[tuple[str, str]],
) -> None:
    """Copy known keys of ``data`` into ``kwargs`` after a type check; flag unknown keys."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in spec:
            problems.append((path, f"unknown field (known: {', '.join(spec)})"))
            continue
        kind, name = spec[key]
        if value is None:
            continue
        if not _is_kind(value, kind):
            problems.append((path, f"expected a {kind}, got {value!r}"))
            continue
        kwargs[name] = value


def _is_kind(value: object, kind: str) -> bool:
    """YAML type check; booleans are not numbers here even though Python says so."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind.startswith("list"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rules(items: object, problems: list[tuple[str, str]]) -> tuple[IngressRule, ...]:
    """Build each rule, reporting problems under ``ingress[i]``/``ingress[i].field``."""
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        problems.append(("ingress", "must be a non-empty list of rules, the last a catch-all"))
        return ()
    rules: list[IngressRule] = []
    for index, item in enumerate(items):
        where = f"ingress[{index}]"
        if not isinstance(item, Mapping):
            problems.append((where, "a rule must be a mapping with `service`"))
            continue
        bad = [k for k in item if k not in _RULE_KEYS]
        known = ", ".join(_RULE_KEYS)
        problems.extend((f"{where}.{k}", f"unknown field (known: {known})") for k in bad)
        values = {k: item.get(k) for k in _RULE_KEYS}
        if not isinstance(values["service"], str):
            problems.append((f"{where}.service", "required: a service string"))
            continue
        wrong = [
            k
            for k in ("hostname", "path")
            if values[k] is not None and not isinstance(values[k], str)
        ]
        problems.extend((f"{where}.{k}", "expected a string") for k in wrong)
        if bad or wrong:
            continue
        try:
            rules.append(IngressRule(values["service"], values["hostname"], values["path"]))
        except RuleError as exc:
            problems.append((f"{where}.{exc.field}", str(exc)))
    return tuple(rules) if len(rules) == len(items) else ()


def load_connector_config(path: str | Path, *, files: bool = False) -> ConnectorConfig:
    """Read and validate a connector file; raises :class:`ConfigError` with every problem.

    With ``files``, also load the certificate, key and ``caPool`` it names, as serving will
    (``tunnel-lb connector`` and its ``--check``): one that cannot be loaded is a problem at
    the line of the field that names it, like every other problem of the file.
    """
    file = str(path)
    node, read_problems = read_file(path)
    if read_problems:
        raise ConfigError(read_problems)
    if node is not None and (other := wrong_kind(node, CONNECTOR)) is not None:
        raise ConfigError([node.at(()).problem(other)])
    data = None if node is None else node.plain()
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, "", lines)

    def fail(problems: list[tuple[str, str]]) -> ConfigError:
        return ConfigError(
            [Problem(file=file, line=_line_of(lines, p), path=p, message=m) for p, m in problems]
        )

    if not isinstance(data, Mapping):
        raise fail([("", "the file must be a mapping with `tunnel` and `ingress`")])
    problems: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    top = {k: v for k, v in data.items() if k not in ("ingress", "originRequest")}
    _typed(top, _SCALARS, "", kwargs, problems)
    origin_request = data.get("originRequest") or {}
    if isinstance(origin_request, Mapping):
        _typed(origin_request, _ORIGIN_REQUEST, "originRequest.", kwargs, problems)
    else:
        problems.append(("originRequest", "must be a mapping"))
    if "tunnel" not in kwargs:
        problems.append(("tunnel", "required: the tunnel UUID this connector stands in for"))
    rules = _rules(data.get("ingress"), problems)
    if problems:
        raise fail(problems)
    for key in ("certificate", "key", "ca_pool"):
        if kwargs.get(key):  # relative to the file, like every path in our configs
            kwargs[key] = str((Path(file).parent / kwargs[key]).resolve())
    values = {**_DEFAULTS, **kwargs, "ingress": rules}
    problems = [(_FILE_NAMES.get(p, p), m) for p, m in _field_problems(values)]
    if problems:
        raise fail(problems)
    config = ConnectorConfig(**values)
    if files:
        try:
            check_files(config.certificate, config.key, config.ca_pool)
        except CertificateError as exc:
            field = _FILE_NAMES.get(_FIELDS.get(exc.what, exc.what), exc.what)
            raise fail([(field, str(exc).removeprefix(f"{exc.what} "))]) from None
    return config


_DEFAULTS = {f.name: f.default for f in fields(ConnectorConfig) if f.default is not MISSING}
_FILE_NAMES = {name: f"originRequest.{key}" for key, (_, name) in _ORIGIN_REQUEST.items()}
"""Where a field set through ``originRequest`` lives in the file, for error paths."""
_FIELDS = {key: name for key, (_, name) in {**_SCALARS, **_ORIGIN_REQUEST}.items()}
"""The model field of each key of the file (``caPool`` -> ``ca_pool``)."""


def _line_of(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path`` or of its nearest ancestor present in the file."""
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0] if "." in path else path.rpartition("[")[0]
    return lines.get("")
