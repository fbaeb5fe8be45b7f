"""Who may talk to the admin listener: bearer token, Host, Origin and cross-site requests.

Why a guard at all
==================

The admin listener binds loopback by default, which keeps other machines out but not other
*web pages*: a browser on the same machine runs whatever a visited site sends it, and that
code can reach ``127.0.0.1:9100``.  Three attacks work against an unguarded listener:

* a cross-site "simple" request (an HTML form, or ``fetch`` with ``mode: "no-cors"``) can
  ``POST /reload`` with ``Content-Type: text/plain``: browsers send it without asking first;
* DNS rebinding: a name the attacker controls first resolves to their server, then to
  127.0.0.1, and the page reads ``/status`` or ``/explain`` as "same origin";
* anyone who can reach a listener bound to another interface can do everything.

So, for every request (:meth:`Guard.refusal`):

1. ``Host`` must name this listener: the address the client connected to, ``localhost`` or a
   loopback address on a loopback connection, the host of ``engine.admin``, or one of
   ``engine.admin_names``.  Otherwise 421.  This defeats rebinding, whose Host is the
   attacker's name.
2. ``Origin``, when a browser sends one, must be this same listener (``http://`` + Host), else
   403.
3. Calls that show configuration (``/explain``) or change state need the bearer token when one
   is configured (``Authorization: Bearer ...``), else 401.
4. Calls that change state also need proof that they are not a browser's simple request: the
   header ``X-Tunnel-LB`` (any value), a valid bearer token, or a ``Content-Type`` that a form
   cannot send (``application/json``...).  Otherwise 403.  Browsers only send such requests
   cross-site after a CORS preflight, which this listener never grants.

The token comes from ``engine.admin_token_file`` or the environment variable named by
``engine.admin_token_env``; it is never in :class:`lb.config.model.Config`, never logged and
never part of a reply.  A listener on a non-loopback address without a token refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lb.config.errors import ConfigError, Problem
from lb.config.hosts import is_loopback, normalise_host
from lb.config.model import Config

__all__ = [
    "ADMIN_HEADER",
    "MIN_TOKEN_LENGTH",
    "Guard",
    "Refusal",
    "guard_for",
    "guard_with",
    "is_loopback",
    "load_token",
]

ADMIN_HEADER = "X-Tunnel-LB"
"""The custom header that marks a state-changing call as not coming from a web form."""
MIN_TOKEN_LENGTH = 16
"""Shortest token accepted: a guessable token is no token."""
_MAX_TOKEN_FILE = 4096
_SIMPLE_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
"""Content types a browser sends cross-site without a preflight (the Fetch standard's
CORS-safelisted ``Content-Type`` values)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the status, a one-line message and extra reply headers."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Guard:
    """The access rules of one admin listener (see the module docstring).

    Attributes:
        token: the bearer token, or None when the listener needs none (loopback only).
        names: lower-case host names accepted in ``Host`` besides the listener's addresses.
    """

    token: str | None = None
    names: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log line
        return f"Guard(token={'set' if self.token else None}, names={sorted(self.names)})"

    def refusal(
        self,
        *,
        headers: Mapping[str, list[str]],
        local_address: str,
        http10: bool = False,
        protected: bool = False,
        changes_state: bool = False,
    ) -> Refusal | None:
        """Check one request; None when it may proceed.

        Args:
            headers: request headers, lower-case names, every value in order.
            local_address: the IP address the client connected to (this socket's end).
            http10: an HTTP/1.0 request, which may omit ``Host`` (no browser does).
            protected: the call shows configuration: the token is required when set.
            changes_state: the call changes state: token, and the cross-site proof.
        """
        for name in ("host", "origin", "authorization", "content-type"):
            if len(headers.get(name, ())) > 1:
                return Refusal(400, f"more than one {name} header")
        host = _one(headers, "host")
        if host is None and not http10:
            return Refusal(400, "missing Host header")
        if host is not None and not self._host_ok(host, local_address):
            return Refusal(
                421,
                f"Host {host[:100]!r} does not name this admin listener; "
                "add the name to engine.admin_names",
            )
        origin = _one(headers, "origin")
        if origin is not None and not _same_origin(origin, host):
            return Refusal(403, f"cross-origin request from {origin[:100]!r} refused")
        authorised = self._authorised(_one(headers, "authorization"))
        if (protected or changes_state) and self.token is not None and not authorised:
            return Refusal(
                401,
                "this call needs the admin token: Authorization: Bearer <token>",
                (("WWW-Authenticate", 'Bearer realm="tunnel-lb admin"'),),
            )
        if changes_state and not authorised and not _not_simple(headers):
            return Refusal(
                403,
                f"state-changing calls need the header {ADMIN_HEADER}: 1 "
                "(or a Content-Type such as application/json); browsers' cross-site "
                "requests are refused",
            )
        return None

    def _host_ok(self, host: str, local_address: str) -> bool:
        name = _host_name(host)
        if name is None:
            return False
        if name in self.names:
            return True
        local = local_address.lower().removeprefix("::ffff:")
        if _ip_equal(name, local):
            return True
        return is_loopback(local) and is_loopback(name)

    def _authorised(self, authorization: str | None) -> bool:
        if self.token is None or authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())


def _one(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


def _host_name(host: str) -> str | None:
    """The lower-case name or address of a ``Host`` value without its port; None if malformed."""
    name = normalise_host(host)
    if name is None or any(c in host for c in "/?#@ \\"):
        return None
    return name


def _ip_equal(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _same_origin(origin: str, host: str | None) -> bool:
    """``Origin`` names this listener: ``http://`` and exactly the request's Host."""
    if host is None:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme == "http" and parts.netloc.lower() == host.lower() and not parts.path


def _not_simple(headers: Mapping[str, list[str]]) -> bool:
    """The request carries something a cross-site form or no-cors fetch cannot send."""
    if ADMIN_HEADER.lower() in headers:
        return True
    content_type = _one(headers, "content-type")
    if not content_type:
        return False  # a no-cors fetch with no body sends no Content-Type at all
    media = content_type.split(";", 1)[0].strip().lower()
    return media not in _SIMPLE_TYPES


# --------------------------------------------------------------------------- from the config


def load_token(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """Read the admin token named by ``engine.admin_token_file`` / ``admin_token_env``.

    Raises:
        ConfigError: the file cannot be read or is empty, the variable is unset, or the token
            is shorter than :data:`MIN_TOKEN_LENGTH` or not printable ASCII.  The message
            never contains the token.
    """
    settings = config.engine
    environ = os.environ if environ is None else environ
    if settings.admin_token_file:
        field, where = "admin_token_file", settings.admin_token_file
        try:
            with open(settings.admin_token_file, "rb") as f:
                raw = f.read(_MAX_TOKEN_FILE + 1)
        except OSError as exc:
            raise _error(config, field, f"cannot read {where}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_TOKEN_FILE:
            raise _error(config, field, f"{where} is larger than {_MAX_TOKEN_FILE} bytes")
        text = raw.decode("ascii", "replace").strip()
    elif settings.admin_token_env:
        field, where = "admin_token_env", f"environment variable {settings.admin_token_env}"
        if settings.admin_token_env not in environ:
            raise _error(config, field, f"{where} is not set")
        text = environ[settings.admin_token_env].strip()
    else:
        return None
    if not text:
        raise _error(config, field, f"{where} is empty")
    if not all(33 <= ord(c) < 127 for c in text):
        raise _error(config, field, f"the token in {where} must be printable ASCII, no spaces")
    if len(text) < MIN_TOKEN_LENGTH:
        raise _error(
            config, field, f"the token in {where} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    return text


def guard_for(config: Config, bind_host: str, extra_names: Iterable[str] = ()) -> Guard:
    """The guard of an admin listener bound to ``bind_host`` under ``config``.

    Raises:
        ConfigError: the token cannot be read, or ``bind_host`` is not loopback and no token
            is configured (the listener refuses to start rather than serve everyone).
    """
    return guard_with(config, bind_host, load_token(config), extra_names)


def guard_with(
    config: Config, bind_host: str, token: str | None, extra_names: Iterable[str] = ()
) -> Guard:
    """:func:`guard_for` with the token already read (by :func:`lb.files.read_files`)."""
    if token is None and not is_loopback(bind_host):
        shown = bind_host or "every interface"
        raise _error(
            config,
            "admin",
            f"the admin API would listen on {shown}, beyond this machine, without a token: "
            "set engine.admin_token_file or engine.admin_token_env, or bind 127.0.0.1",
        )
    written = [*config.engine.admin_names, *extra_names]
    if bind_host and not _is_any(bind_host):
        written.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    names = {name for n in written if (name := normalise_host(n))}
    return Guard(token=token, names=frozenset(names))


def _is_any(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _error(config: Config, field: str, message: str) -> ConfigError:
    source = config.source[0] if config.source else "<config>"
    return ConfigError([Problem(file=source, line=None, path=f"engine.{field}", message=message)])
