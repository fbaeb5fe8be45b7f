"""The ``tunnel-lb`` command: one sub-command per module in :mod:`lb.commands`.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.  No traceback reaches the user: a :class:`ConfigError` prints its
problems, one line each, and exits 2; anything else unexpected prints one line and exits 1
(``TUNNEL_LB_TRACEBACK=1`` shows the traceback instead, for a bug report).  Commands report
bad input themselves, as a :class:`ConfigError` or one ``error:`` line and exit 2; the
catch-all here is the safety net for bugs, not the way errors are reported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lb import __version__, lifecycle
from lb.config.errors import ConfigError, Problem

COMMANDS = (
    "demo",
    "run",
    "check",
    "explain",
    "probe",
    "simulate",
    "rehearse",
    "connector",
    "access",
)
"""Modules of :mod:`lb.commands`, in the order ``--help`` lists them."""
TRACEBACK_ENV = "TUNNEL_LB_TRACEBACK"
"""Set (non-empty) to let an unexpected exception through with its traceback."""

DAEMONS = frozenset({"run", "demo", "connector"})
"""Commands that run until signalled: SIGTERM/SIGINT stop them cleanly (exit 0), at any
moment, through :mod:`lb.lifecycle`; the others keep Python's default Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="tunnel-lb", description="A tunnel-aware load balancer and health-monitor engine."
    )
    parser.add_argument("--version", action="version", version=f"tunnel-lb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"lb.commands.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m lb``."""
    previous = lifecycle.defer_signals()  # before the command modules are imported
    try:
        args = build_parser().parse_args(argv)
        if args.command not in DAEMONS:
            try:
                lifecycle.restore_default_signals()  # Ctrl-C interrupts, as usual
            except KeyboardInterrupt:
                return 130
        return _run(args)
    finally:
        lifecycle.restore_signals(previous)
        lifecycle.take_early()  # a signal after the command stopped was handled by stopping


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tunnel-lb check lb.yaml | head`): stop quietly, as tools
        # killed by SIGPIPE do, and keep Python's exit-time flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        problems = _config_problems(exc)
        if problems is None:
            if os.environ.get(TRACEBACK_ENV):
                raise
            print(
                f"error: unexpected {type(exc).__name__}: {exc} "
                f"(a bug; set {TRACEBACK_ENV}=1 to see where)",
                file=sys.stderr,
            )
            return 1
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    return code


def _config_problems(exc: BaseException) -> list[Problem] | None:
    """The problems of a :class:`ConfigError`, also from inside an exception group (raised
    in a nursery); None when ``exc`` is anything else."""
    if isinstance(exc, ConfigError):
        return exc.problems
    if isinstance(exc, BaseExceptionGroup):
        found = [_config_problems(e) for e in exc.exceptions]
        if all(p is not None for p in found):
            return [p for problems in found if problems is not None for p in problems]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
