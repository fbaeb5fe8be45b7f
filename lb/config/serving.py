"""Refusing a configuration that would serve nothing, unless the operator says so.

An empty file, a file of comments or one that lost its ``load_balancers`` section is a
valid configuration for the loader (files merge, and a file of monitors alone is fine), but
served alone it answers every request 404.  That is almost always a truncated write or the
wrong file, so ``run`` refuses to start with it, a reload refuses to apply it and ``check``,
``explain`` and ``probe`` report it, each unless forced: ``--allow-empty`` on the command
line, ``POST /reload?force=1`` on the admin listener.
"""

from __future__ import annotations

from lb.config.errors import Problem
from lb.config.model import Config

__all__ = ["ALLOW_EMPTY_HINT", "RELOAD_FORCE_HINT", "serving_problem"]

ALLOW_EMPTY_HINT = "pass --allow-empty to accept that"
RELOAD_FORCE_HINT = "the old configuration keeps serving; POST /reload?force=1 applies it anyway"


def serving_problem(config: Config, hint: str = "") -> Problem | None:
    """The problem of a configuration without any load balancer, or None.

    ``hint`` says how to accept it where that is possible (:data:`ALLOW_EMPTY_HINT`,
    :data:`RELOAD_FORCE_HINT`).
    """
    if config.load_balancers:
        return None
    message = "no load balancer is configured: every request would be answered 404"
    return Problem(
        file=", ".join(config.source) or "<none>",
        line=None,
        path="load_balancers",
        message=f"{message} ({hint})" if hint else message,
    )
