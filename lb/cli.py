"""The ``tunnel-lb`` command: one sub-command per module in :mod:`lb.commands`.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.  No traceback reaches the user: a :class:`ConfigError` prints its
problems and exits 2; anything else unexpected prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lb import __version__, lifecycle
from lb.config.errors import ConfigError

COMMANDS = ("demo", "run", "check", "explain", "probe", "simulate", "connector")
"""Modules of :mod:`lb.commands`, in the order ``--help`` lists them."""

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
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
