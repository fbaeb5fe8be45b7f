"""``tunnel-lb check``: validate configuration files and say what they describe.

Exit status 0 when the configuration is usable (warnings are printed but do not fail it), 2
when it is not.  Usable includes the files it names: certificates, keys, CA bundle and token
files are read by the same function as ``tunnel-lb run`` and a reload (:mod:`lb.files`), so
``check`` passes exactly what ``run`` starts with.  The summary is meant to be read before
deploying: which load balancer uses which pools in which order, how many endpoints each pool
has and what monitors them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lb.config import markdown_reference
from lb.config.errors import ConfigError, Problem
from lb.config.loader import load_config
from lb.config.model import Config, LoadBalancer, Monitor, MonitorGroup, Pool, Tunnel
from lb.config.serving import ALLOW_EMPTY_HINT, serving_problem
from lb.files import read_files

NAME = "check"
HELP = "Validate configuration files and summarise them (exit 2 on errors)."

EXIT_OK = 0
EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options.  FILE is optional to argparse only because
    ``--explain-fields`` needs none; the usage line says so instead of ``[FILE ...]``."""
    parser.usage = (
        "%(prog)s [-h] [--json] [--allow-empty] FILE [FILE ...]\n       %(prog)s --explain-fields"
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="configuration files (merged); at least one, unless --explain-fields",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--explain-fields",
        action="store_true",
        help="print every configuration field with its type, default and allowed values",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a configuration without any load balancer (it would answer 404)",
    )


def run(args: argparse.Namespace) -> int:
    """Load ``args.files``; print the summary or the problems; return the exit status."""
    if args.explain_fields:
        print(markdown_reference(), end="")
        return EXIT_OK
    if not args.files:
        print("tunnel-lb check: give at least one FILE", file=sys.stderr)
        return EXIT_INVALID
    try:
        result = load_config(args.files)
    except ConfigError as exc:
        errors, warnings, summary = exc.problems, exc.warnings, None
    else:
        errors, warnings, summary = [], result.warnings, None
        try:
            # Certificates, CA bundle, token file: read as `run` and a reload read them.
            read_files(result, environment=False)
        except ConfigError as exc:
            errors = exc.problems
        empty = None if args.allow_empty else serving_problem(result.config, ALLOW_EMPTY_HINT)
        if empty is not None:
            errors = [*errors, empty]
        if not errors:
            summary = summarize(result.config)
    if args.json:
        _print_json(errors, warnings, summary)
    else:
        _print_text(errors, warnings, summary)
    return EXIT_INVALID if errors else EXIT_OK


def summarize(config: Config) -> dict[str, Any]:
    """The JSON-ready summary of a valid configuration."""
    return {
        "files": list(config.source),
        "load_balancers": [_lb_summary(lb) for lb in config.load_balancers],
        "pools": [_pool_summary(pool) for pool in config.pools],
        "monitors": [_monitor_summary(m) for m in config.monitors],
        "monitor_groups": [_group_summary(g) for g in config.monitor_groups],
        "tunnels": [_tunnel_summary(t) for t in config.tunnels],
    }


def _lb_summary(lb: LoadBalancer) -> dict[str, Any]:
    return {
        "name": lb.name,
        "enabled": lb.enabled,
        "proxied": lb.proxied,
        "policy": lb.effective_policy,
        "default_pools": list(lb.default_pools),
        "fallback_pool": lb.fallback_pool,
        "affinity": lb.affinity,
        "rules": len(lb.rules),
        "pool_sets": len(lb.pool_sets or ()),
    }


def _pool_summary(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool.name,
        "id": pool.id,
        "enabled": pool.enabled,
        "endpoints": len(pool.origins),
        "tunnel_endpoints": sum(1 for o in pool.origins if o.tunnel_id),
        "enabled_endpoints": sum(1 for o in pool.origins if o.enabled),
        "minimum_origins": pool.minimum_origins,
        "monitor": pool.monitor,
        "monitor_group": pool.monitor_group,
        "steering": pool.origin_steering.policy,
    }


def _monitor_summary(monitor: Monitor) -> dict[str, Any]:
    return {
        "id": monitor.id,
        "type": monitor.type,
        "method": monitor.effective_method,
        "path": monitor.path,
        "port": monitor.port or None,  # None: the endpoint's port, else 443/80 (R7)
        "interval": monitor.interval,
        "timeout": monitor.timeout,
        "expected_codes": monitor.expected_codes,
        "host": monitor.host_header,
    }


def _group_summary(group: MonitorGroup) -> dict[str, Any]:
    return {
        "id": group.id,
        "members": [
            {
                "monitor_id": m.monitor_id,
                "enabled": m.enabled,
                "monitoring_only": m.monitoring_only,
                "must_be_healthy": m.must_be_healthy,
            }
            for m in group.members
        ],
    }


def _tunnel_summary(tunnel: Tunnel) -> dict[str, Any]:
    return {
        "id": tunnel.id,
        "name": tunnel.name,
        "replicas": len(tunnel.replicas),
        "datacenters": sorted(tunnel.datacenters),
    }


# --------------------------------------------------------------------------- output


def _print_json(
    errors: list[Problem], warnings: list[Problem], summary: dict[str, Any] | None
) -> None:
    document = {
        "ok": not errors,
        "errors": [p.as_json() for p in errors],
        "warnings": [p.as_json() for p in warnings],
        "summary": summary,
    }
    print(json.dumps(document, indent=2))


def _print_text(
    errors: list[Problem], warnings: list[Problem], summary: dict[str, Any] | None
) -> None:
    """Problems go to stderr (one ``file:line: path: message`` each), the summary to stdout."""
    for problem in errors:
        print(problem, file=sys.stderr)
    for problem in warnings:
        print(f"warning: {problem}", file=sys.stderr)
    if summary is None:
        print(
            _count(len(errors), "error") + ", " + _count(len(warnings), "warning"), file=sys.stderr
        )
        return
    print(f"OK: {', '.join(summary['files'])} ({_count(len(warnings), 'warning')})")
    for title, rows in (
        ("load balancers", [_lb_line(s) for s in summary["load_balancers"]]),
        ("pools", [_pool_line(s) for s in summary["pools"]]),
        ("monitors", [_monitor_line(s) for s in summary["monitors"]]),
        ("monitor groups", [_group_line(s) for s in summary["monitor_groups"]]),
        ("tunnels", [_tunnel_line(s) for s in summary["tunnels"]]),
    ):
        if not rows and title == "monitor groups":  # shown only when used
            continue
        print(f"{title} ({len(rows)}):")
        for row in rows:
            print(f"  {row}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _lb_line(s: dict[str, Any]) -> str:
    flags = [] if s["enabled"] else ["disabled"]
    flags.append("proxied" if s["proxied"] else "DNS-only")
    if s["affinity"] != "none":
        flags.append(f"affinity {s['affinity']}")
    if s["pool_sets"]:
        flags.append(_count(s["pool_sets"], "pool set"))
    if s["rules"]:
        flags.append(_count(s["rules"], "custom rule"))
    pools = " > ".join(s["default_pools"])
    fallback = s["fallback_pool"]
    return f"{s['name']}: {s['policy']} over {pools}, fallback {fallback} ({', '.join(flags)})"


def _pool_line(s: dict[str, Any]) -> str:
    endpoints = _count(s["endpoints"], "endpoint")
    if s["tunnel_endpoints"]:
        endpoints += f" ({s['tunnel_endpoints']} tunnel{'s' if s['tunnel_endpoints'] > 1 else ''})"
    monitor = f"monitor {s['monitor']}" if s["monitor"] else "no monitor"
    if s["monitor_group"]:
        monitor = f"monitor group {s['monitor_group']}"
    disabled = ", disabled" if not s["enabled"] else ""
    return f"{s['name']}: {endpoints}, {s['steering']} steering, {monitor}{disabled}"


def _group_line(s: dict[str, Any]) -> str:
    def role(m: dict[str, Any]) -> str:
        flags = [
            flag
            for flag, on in (
                ("disabled", not m["enabled"]),
                ("monitoring only", m["monitoring_only"]),
                ("must be healthy", m["must_be_healthy"]),
            )
            if on
        ]
        return str(m["monitor_id"]) + (f" ({', '.join(flags)})" if flags else "")

    return f"{s['id']}: " + ", ".join(role(m) for m in s["members"])


def _monitor_line(s: dict[str, Any]) -> str:
    target = f"{s['method']} {s['path']}" if s["type"] != "tcp" else "connect"
    host = f" Host {s['host']}" if s["host"] else ""
    return (
        f"{s['id']}: {s['type']} {target} port {s['port'] or 'of the endpoint'}{host} "
        f"every {s['interval']:g}s, "
        f"expects {s['expected_codes']}"
    )


def _tunnel_line(s: dict[str, Any]) -> str:
    where = f" in {', '.join(s['datacenters'])}" if s["datacenters"] else ""
    name = f" ({s['name']})" if s["name"] else ""
    return f"{s['id']}{name}: {_count(s['replicas'], 'replica')}{where}"
