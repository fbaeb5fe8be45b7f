"""The TLS trust a configuration gives endpoint connections, checked for commands.

``engine.upstream_ca`` is only read when a TLS context is made, which ``tunnel-lb run``
does inside the service and ``tunnel-lb probe`` before probing.  A missing or malformed file
there is a configuration problem: this turns it into a :class:`ConfigError` (one line, exit
2) before anything starts, instead of an exception from deep inside start-up.
"""

from __future__ import annotations

import ssl

from lb.config.errors import ConfigError, Problem
from lb.config.model import Config
from lb.service import upstream_context

__all__ = ["checked_upstream_context"]


def checked_upstream_context(config: Config) -> ssl.SSLContext:
    """:func:`lb.service.upstream_context`, a bad ``engine.upstream_ca`` a ConfigError."""
    try:
        return upstream_context(config)
    except (OSError, ssl.SSLError) as exc:
        why = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        problem = Problem(
            file=", ".join(config.source) or "<none>",
            line=None,
            path="engine.upstream_ca",
            message=f"cannot load {config.engine.upstream_ca}: {why}",
        )
        raise ConfigError([problem]) from None
