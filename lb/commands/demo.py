"""``tunnel-lb demo``: the live demo over local tunnel stand-ins (see :mod:`lb.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from lb import logs
from lb.demo import DEFAULT_CONFIG, run_demo

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


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (or ``--duration`` seconds)."""
    logs.configure()
    return trio.run(lambda: run_demo(Path(args.config), duration=args.duration))
