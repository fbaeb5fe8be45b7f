"""``tunnel-lb connector FILE``: run a local stand-in for a cloudflared tunnel replica."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from functools import partial

import trio

from lb import logs
from lb.config.hosts import split_host_port
from lb.connector import ConnectorConfig, ConnectorStats, load_connector_config, serve_connector
from lb.connector.faults import Faults, serve_control
from lb.lifecycle import STOP_SIGNALS, receive_signals

NAME = "connector"
HELP = "Serve cloudflared-style ingress rules locally (a tunnel endpoint for tests and demos)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE plus overrides that make one file usable for several replicas."""
    parser.add_argument("file", metavar="FILE", help="connector YAML file (docs/connector.md)")
    parser.add_argument("--listen", help="override `listen` (HTTPS), e.g. 127.0.0.1:18443")
    parser.add_argument("--listen-http", help="override `listen_http` (plain HTTP)")
    parser.add_argument("--replica", help="override `replica`, the name hello_world reports")
    parser.add_argument(
        "--control",
        metavar="ADDR:PORT",
        help="serve the fault control API here (loopback; port 0 = any free port)",
    )
    parser.add_argument("--check", action="store_true", help="validate FILE and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-request log lines")
    logs.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Load, validate and serve until interrupted; ConfigError reaches the CLI (exit 2)."""
    # The certificate, key and caPool are loaded here, as serving loads them, so that
    # --check says what a start would; a bad one is a problem at its line (exit 2).
    config = load_connector_config(args.file, files=True)
    overrides = {
        name: value
        for name, value in (
            ("listen", args.listen),
            ("listen_http", args.listen_http),
            ("replica", args.replica),
        )
        if value is not None
    }
    if overrides:
        try:
            config = replace(config, **overrides)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    control = None
    if args.control is not None:
        try:
            control = split_host_port(args.control)
        except ValueError as exc:
            print(f"error: --control: {exc}", file=sys.stderr)
            return 2
    if args.check:
        print(f"{args.file}: ok ({len(config.ingress)} ingress rules)")
        return 0
    logs.configure_from(args, level="warning" if args.quiet else None)
    error = trio.run(_main, config, control)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


async def _main(config: ConnectorConfig, control: tuple[str, int] | None = None) -> str | None:
    """Serve until SIGTERM or SIGINT (at any moment, even while starting); returns why the
    connector could not start, if it could not."""
    stats = ConnectorStats()
    faults = Faults()
    async with trio.open_nursery() as nursery:

        def on_signal(signum: int) -> None:
            if signum in STOP_SIGNALS:
                nursery.cancel_scope.cancel()

        await nursery.start(receive_signals, on_signal)
        try:
            await nursery.start(partial(serve_connector, config, stats=stats, faults=faults))
            bound = None
            if control is not None:
                bound = await nursery.start(partial(serve_control, faults, control, stats=stats))
        except (OSError, RuntimeError) as exc:  # port in use, unreadable certificate, ...
            nursery.cancel_scope.cancel()
            return str(exc)
        for url in stats.listening:
            # Whoever started us may have stopped reading; the tunnel still serves.
            with contextlib.suppress(BrokenPipeError):
                print(f"tunnel {config.tunnel} replica {config.replica}: {url}", flush=True)
        if bound is not None:
            with contextlib.suppress(BrokenPipeError):
                print(f"control: http://{bound[0]}:{bound[1]}/faults", flush=True)
    return None
