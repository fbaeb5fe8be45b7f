"""``tunnel-lb run``: the load balancer process (proxy, monitors, admin)."""

from __future__ import annotations

import argparse

import trio

from lb import logs
from lb.commands._trust import checked_upstream_context
from lb.config.errors import ConfigError
from lb.config.loader import load_config
from lb.config.serving import ALLOW_EMPTY_HINT, serving_problem
from lb.proxy.listeners import listener_contexts
from lb.service import serve_lb, serve_worker

NAME = "run"
HELP = "Run the load balancer: reverse proxy, health monitors and admin API."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="configuration files")
    parser.add_argument("--seed", type=int, default=None, help="seed for probe spreading/picks")
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="start even without any load balancer (every request answered 404)",
    )
    # Internal: one proxy worker process started by `run` itself for engine.workers > 1.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Validate first (errors exit 2 before anything listens), then serve until stopped."""
    logs.configure()
    if args.worker:
        serve_worker()
        return 0
    result = load_config(args.files)
    empty = None if args.allow_empty else serving_problem(result.config, ALLOW_EMPTY_HINT)
    if empty is not None:
        raise ConfigError([empty])
    for warning in result.warnings:
        logs.event("config_warning", message=str(warning))
    # Certificates are read before anything listens: a bad path is a ConfigError (exit 2).
    listener_contexts(result.config.engine.listen, source=args.files[0])
    checked_upstream_context(result.config)  # likewise engine.upstream_ca
    trio.run(lambda: serve_lb(args.files, config=result.config, seed=args.seed))
    return 0
