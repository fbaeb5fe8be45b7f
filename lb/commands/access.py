"""``tunnel-lb access tcp``: carry local TCP connections as WebSockets to a public hostname."""

from __future__ import annotations

import argparse
import ssl
import sys
from functools import partial

import trio

from lb import logs
from lb.access import AccessConfig, AccessStats, parse_via, serve_access
from lb.config.hosts import split_host_port
from lb.connector.tls import CertificateError, trust_context

NAME = "access"
HELP = "Client side of a private TCP service (as `cloudflared access tcp`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command, ``tcp`` (ssh, rdp and smb are TCP too)."""
    sub = parser.add_subparsers(dest="access_kind", required=True, metavar="KIND")
    tcp = sub.add_parser(
        "tcp",
        help="listen locally; each connection becomes a WebSocket to HOSTNAME",
        description="Listen on --url; carry each accepted connection in a WebSocket to the "
        "public hostname (through the load balancer with --via), as `cloudflared access tcp`.",
    )
    tcp.add_argument("--hostname", required=True, help="public hostname of the TCP service")
    tcp.add_argument("--url", required=True, metavar="HOST:PORT", help="local address to listen on")
    tcp.add_argument(
        "--via",
        metavar="URL",
        help="the load balancer: https://host:port, http://host:port or host:port (HTTPS); "
        "default https://HOSTNAME",
    )
    tcp.add_argument(
        "--destination",
        metavar="HOST:PORT",
        help="for a bastion service: where the connector should connect",
    )
    tcp.add_argument("--ca", metavar="FILE", help="PEM CAs to trust for an HTTPS --via")
    tcp.add_argument("--insecure", action="store_true", help="do not verify the --via certificate")
    tcp.add_argument("-q", "--quiet", action="store_true", help="no per-session log lines")
    logs.add_arguments(tcp)


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    context = trust_context(args.ca, what="--ca") if args.ca else ssl.create_default_context()
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def run(args: argparse.Namespace) -> int:
    """Validate the options (exit 2 with one line), then serve until interrupted."""
    try:
        listen = args.url.removeprefix("tcp://")
        split_host_port(listen)
        if args.via:
            parse_via(args.via)
        if args.destination:
            split_host_port(args.destination)
        context = _context(args)
    except (ValueError, OSError, CertificateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = AccessConfig(
        hostname=args.hostname,
        listen=listen,
        via=args.via,
        destination=args.destination,
        ssl_context=context,
    )
    logs.configure_from(args, level="warning" if args.quiet else None)
    error = trio.run(_main, config)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


async def _main(config: AccessConfig) -> str | None:
    """Serve until cancelled; returns why the listener could not start, if it could not."""
    stats = AccessStats()
    async with trio.open_nursery() as nursery:
        try:
            host, port = await nursery.start(partial(serve_access, config, stats=stats))
        except OSError as exc:  # port in use, bad address
            return str(exc)
        via = config.via or f"https://{config.hostname}"
        print(f"access {config.hostname}: listening on {host}:{port}, via {via}", flush=True)
    return None
