"""Every file a configuration names, read and checked in one place.

The loader only resolves file names (relative to the configuration file that names them);
the files themselves are read here, by :func:`read_files`, which ``tunnel-lb check``,
``tunnel-lb run`` and every reload call.  So ``check`` accepts exactly the files ``run``
accepts, and a reload whose files are missing or broken is refused like any configuration
error instead of being accepted and leaving the next restart to fail.  Each problem is a
:class:`~lb.config.errors.Problem` with the file and line the name was written on.

The files, and what reading them gives:

* ``engine.listen[i].certificate``/``key`` and ``.certificates[j]``: the listener's server
  TLS context (:func:`lb.proxy.listeners.listener_contexts`).  They are read again on every
  reload even when their names did not change, so a renewed certificate is served after
  ``systemctl reload``;
* ``engine.upstream_ca``: the TLS context that verifies endpoints (probes and traffic);
* ``engine.admin_token_file`` (or ``admin_token_env``): the admin API's token
  (:func:`lb.admin_guard.load_token`: readable, not empty, long enough);
* ``engine.affinity_secret_file`` is checked by the loader itself (readable), so every
  caller of the loader sees that problem already;
* ``engine.state_file`` is written by tunnel-lb, so a missing one is a first start; its
  directory must exist.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from lb.admin_guard import load_token
from lb.config.errors import ConfigError, Problem
from lb.config.loader import LoadResult
from lb.config.model import Config
from lb.proxy.listeners import listener_contexts

__all__ = ["Files", "read_files", "read_upstream_ca", "upstream_context"]

Locate = Callable[[str, str], Problem]
"""(dotted path, message) -> a problem at the line the path was written on."""


@dataclass(frozen=True, slots=True)
class Files:
    """What the files of one configuration hold, ready to use."""

    listeners: tuple[ssl.SSLContext | None, ...]
    """The server TLS context of each ``engine.listen`` entry (None: plain HTTP)."""
    upstream: ssl.SSLContext
    """Verifies endpoints: ``engine.upstream_ca``, else the system store."""
    token: str | None
    """The admin API's bearer token, None when none is configured."""


def read_files(
    result: LoadResult,
    config: Config | None = None,
    *,
    environment: bool = True,
    token: bool = True,
) -> Files:
    """Read and check every file ``config`` names (``result.config`` when None: pass the
    configuration with command-line overrides applied; ``result`` says where each name was
    written).

    Without ``environment`` (``tunnel-lb check``), a token named by ``admin_token_env`` is
    not read: the variable belongs to the environment the service will run in, not to the
    one the configuration is checked in.  Without ``token`` (a child worker, which has no
    admin listener), the admin token is not read at all and :attr:`Files.token` is None: a
    token file rewritten around a reload must not keep a child on its old certificates.

    Raises:
        ConfigError: one problem per missing, unreadable or unusable file, each with its
            file, line and dotted path.
    """
    config = result.config if config is None else config
    problems: list[Problem] = []

    def relocated(exc: ConfigError) -> None:
        problems.extend(result.problem(p.path, p.message) for p in exc.problems)

    listeners: tuple[ssl.SSLContext | None, ...] = ()
    try:
        listeners = tuple(listener_contexts(config.engine.listen))
    except ConfigError as exc:
        relocated(exc)
    upstream = _upstream(config, result.problem, problems)  # as read_upstream_ca
    secret = None
    try:
        if token and (environment or config.engine.admin_token_file):
            secret = load_token(config)
    except ConfigError as exc:
        relocated(exc)
    _state_file(config, result.problem, problems)
    if problems or upstream is None:
        raise ConfigError(problems)
    return Files(listeners=listeners, upstream=upstream, token=secret)


def read_upstream_ca(result: LoadResult) -> ssl.SSLContext:
    """Only the ``engine.upstream_ca`` part of :func:`read_files` (``tunnel-lb probe``, which
    neither listens nor serves the admin API).

    Raises:
        ConfigError: the CA bundle is missing or unusable, at the line that names it.
    """
    problems: list[Problem] = []
    context = _upstream(result.config, result.problem, problems)
    if context is None:
        raise ConfigError(problems)
    return context


def upstream_context(config: Config) -> ssl.SSLContext:
    """The TLS context that verifies endpoints: ``engine.upstream_ca`` (which the loader made
    relative to its configuration file) or the system store.  Raises OSError or SSLError
    (:func:`read_files` turns them into configuration problems)."""
    ctx = ssl.create_default_context()
    if config.engine.upstream_ca:
        ctx.load_verify_locations(cafile=config.engine.upstream_ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _upstream(config: Config, locate: Locate, problems: list[Problem]) -> ssl.SSLContext | None:
    name = config.engine.upstream_ca
    try:
        return upstream_context(config)
    except OSError as exc:  # ssl.SSLError is an OSError too: a file that is not a CA bundle
        if isinstance(exc, ssl.SSLError):
            why = str(exc).split(" (_ssl.c:", 1)[0]
            message = f'cannot use "{name}" as a CA bundle: {why} (is it PEM certificates?)'
        else:
            message = f'cannot read "{name}": {exc.strerror or exc}'
        problems.append(locate("engine.upstream_ca", message))
        return None


def _state_file(config: Config, locate: Locate, problems: list[Problem]) -> None:
    name = config.engine.state_file
    if not name:
        return
    directory = os.path.dirname(name) or "."
    if not os.path.isdir(directory):
        message = f'cannot write "{name}": the directory "{directory}" does not exist'
        problems.append(locate("engine.state_file", message))
