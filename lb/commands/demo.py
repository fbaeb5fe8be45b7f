"""``tunnel-lb demo``: the live demo over local tunnel stand-ins (see :mod:`lb.demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from lb import logs
from lb.commands.run import add_address_arguments, overrides_from
from lb.demo import DEFAULT_CONFIG, run_demo
from lb.lifecycle import listen_error

NAME = "demo"
HELP = "Run a load balancer over two local tunnel stand-ins and show how to watch failover."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "config", nargs="?", default=str(DEFAULT_CONFIG), help="configuration (quickstart)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="send a few requests, stop after N seconds"
    )
    add_address_arguments(parser)
    logs.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (or ``--duration`` seconds); a busy port given with
    ``--listen``/``--admin`` is one line naming it, exit 2."""
    logs.configure_from(args)
    given = overrides_from(args)
    overrides = given if (given.listen or given.admin is not None) else None
    try:
        return trio.run(
            lambda: run_demo(Path(args.config), duration=args.duration, overrides=overrides)
        )
    except (OSError, BaseExceptionGroup) as exc:
        error = listen_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
