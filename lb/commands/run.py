"""``tunnel-lb run``: the load balancer process (proxy, monitors, admin)."""

from __future__ import annotations

import argparse
import gc
import sys

import trio

from lb import logs
from lb.admin_guard import guard_with
from lb.config.errors import ConfigError
from lb.config.hosts import LOOPBACK, split_host_port
from lb.config.loader import load_config
from lb.config.model import Config, Listener
from lb.config.serving import ALLOW_EMPTY_HINT, serving_problem
from lb.files import read_files
from lb.lifecycle import listen_error
from lb.service import Overrides, serve_lb, serve_worker

NAME = "run"
HELP = "Run the load balancer: reverse proxy, health monitors and admin API."


def address(text: str) -> tuple[str, int]:
    """An ``ADDR:PORT`` option value (``[v6]:port`` too; port 0 = any free port)."""
    try:
        return split_host_port(text, default_host=LOOPBACK)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:8080 (port 0 = any free port)"
        ) from None


def add_address_arguments(parser: argparse.ArgumentParser) -> None:
    """``--listen`` (repeatable) and ``--admin``, shared with ``tunnel-lb demo``."""
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        type=address,
        metavar="ADDR:PORT",
        help="proxy listener instead of engine.listen (repeatable; port 0 = any free port)",
    )
    parser.add_argument(
        "--admin",
        type=address,
        default=None,
        metavar="ADDR:PORT",
        help="admin listener instead of engine.admin (port 0 = any free port)",
    )


def overrides_from(args: argparse.Namespace) -> Overrides:
    """The :class:`Overrides` of ``--listen`` and ``--admin``."""
    listen = tuple(Listener(address=host, port=port) for host, port in args.listen)
    admin = None if args.admin is None else _join(*args.admin)
    return Overrides(listen=listen, admin=admin)


def _admin_option_problem(
    args: argparse.Namespace, config: Config, token: str | None
) -> str | None:
    """Why the admin listener of ``--admin`` must not start, as the option's problem: the
    address came from the command line, not from the line of ``engine.admin`` it replaces
    (a wide ``engine.admin`` in the file is the checks' error, at its line)."""
    if args.admin is None:
        return None
    try:
        guard_with(config, args.admin[0], token)
    except ConfigError as exc:
        return f"--admin {_join(*args.admin)}: {exc.problems[0].message}"
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="configuration files")
    parser.add_argument("--seed", type=int, default=None, help="seed for probe spreading/picks")
    add_address_arguments(parser)
    logs.add_arguments(parser)
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="start even without any load balancer (every request answered 404)",
    )
    # Internal: one proxy worker process started by `run` itself for engine.workers > 1.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def _freeze_startup_objects() -> None:
    """Keep what startup made (modules, the configuration, the built-in data centers: ~90,000
    objects) out of the cyclic garbage collector's way.

    Every full collection walked all of them: up to ~100 ms with every request stalled,
    several times a minute under load, right in the latency tail (docs/bench.md, "The
    proxy's hot path").  Startup garbage is collected first, then the rest is frozen
    (``gc.freeze``); what is allocated later is collected as before, but the youngest
    generation every 10,000 net allocations instead of 700: each young collection walks
    every request in flight, and a request frees its objects by reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run(args: argparse.Namespace) -> int:
    """Validate first (errors exit 2 before anything listens), then serve until stopped.

    SIGTERM or SIGINT at any moment drains and exits 0; a listener that cannot be bound is
    one line naming its address, exit 2.
    """
    logs.configure_from(args)
    if args.worker:
        _freeze_startup_objects()
        serve_worker()
        return 0
    overrides = overrides_from(args)
    result = load_config(args.files)
    empty = None if args.allow_empty else serving_problem(result.config, ALLOW_EMPTY_HINT)
    if empty is not None:
        raise ConfigError([empty])
    for warning in result.warnings:
        logs.event("config_warning", message=str(warning))
    config = overrides.apply(result.config)
    # Every file the configuration names is read before anything listens, as `check` and a
    # reload read them: a bad one is a ConfigError (exit 2) with its file and line.
    files = read_files(result, config)
    if (refused := _admin_option_problem(args, config, files.token)) is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    _freeze_startup_objects()
    try:
        trio.run(
            lambda: serve_lb(
                args.files, config=config, files=files, seed=args.seed, overrides=overrides
            )
        )
    except (OSError, BaseExceptionGroup) as exc:
        error = listen_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
