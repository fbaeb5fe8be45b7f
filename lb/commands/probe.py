"""``tunnel-lb probe``: check every selected endpoint once, now (Cloudflare's monitor preview).

Each enabled endpoint of each enabled, monitored pool (R10) gets one check with its pool's
monitor, exactly as the scheduler would run it (same Host, SNI, port, ``connect_to``, timeout
and retries), from the first configured vantage point.  Endpoints that share a probe identity
are probed once, as in the scheduler.  On a pool with a monitor group (R16) every enabled
member checks each endpoint, one row per member (``endpoint/monitor`` in the table).

Exit status: 0 when every probed endpoint passed, 1 when one failed or nothing was probed
(a health check that checks nothing should not look green in CI), 2 for a configuration error
or an unknown ``--pool`` / ``--endpoint``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import trio

from lb.config.errors import ConfigError
from lb.config.loader import load_config
from lb.config.model import Config
from lb.config.serving import serving_problem
from lb.core.book import HealthBook, ProbeTarget
from lb.files import read_upstream_ca
from monitors import NetworkTransport, ProbeTransport, Verdict, plan, probe_once
from monitors.reasons import hint

NAME = "probe"
HELP = "Run one health check now for each monitored endpoint and print the results."

_CONCURRENCY = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="configuration files")
    parser.add_argument("--pool", action="append", default=[], help="only this pool (repeatable)")
    parser.add_argument(
        "--endpoint", action="append", default=[], help="only this endpoint (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")


@dataclass(frozen=True, slots=True)
class Row:
    """One (pool, endpoint) and the verdict of its check."""

    pool: str
    endpoint: str
    verdict: Verdict
    host: str
    sni: str | None
    hint: str = ""
    """What to do about the failure, when there is something specific (a private CA)."""
    member: str = ""
    """The monitor group member that made this check, empty for a pool's single monitor."""

    def as_json(self) -> dict[str, Any]:
        """The documented JSON shape."""
        v = self.verdict
        out: dict[str, Any] = {"pool": self.pool, "endpoint": self.endpoint}
        if self.member:
            out["member"] = self.member
        return out | {
            "healthy": v.ok,
            "reason": v.reason.value if v.reason else "",
            "status": v.status,
            "rtt_ms": None if v.rtt is None else round(v.rtt * 1000, 1),
            "host": self.host,
            "sni": self.sni,
            "hint": self.hint,
        }


def select(targets: list[ProbeTarget], pools: list[str], endpoints: list[str]) -> list[ProbeTarget]:
    """The targets named by ``--pool`` / ``--endpoint`` (all when none is given)."""
    return [
        t
        for t in targets
        if (not pools or t.pool in pools) and (not endpoints or t.endpoint in endpoints)
    ]


async def probe_targets(
    config: Config, targets: list[ProbeTarget], transport: ProbeTransport
) -> list[Row]:
    """Check each target once, concurrently; rows in target order."""
    vantage = config.engine.vantage_points[0] if config.engine.vantage_points else "local"
    jobs = plan(
        targets,
        vantage_points=(vantage,),
        connect_to=config.connect_to,
        user_agent_mode=config.engine.probe_user_agent,
    )
    verdicts: dict[tuple[str, str, str], Row] = {}
    limiter = trio.CapacityLimiter(_CONCURRENCY)

    async def one(i: int) -> None:
        job = jobs[i]
        async with limiter:
            verdict = await probe_once(job.probe, transport, job.vantage)
        advice = hint(verdict.reason, upstream_ca=config.engine.upstream_ca)
        for pool, endpoint, member in job.deliveries:
            verdicts[pool, endpoint, member] = Row(
                pool, endpoint, verdict, job.probe.host, job.probe.sni, advice, member
            )

    async with trio.open_nursery() as nursery:
        for i in range(len(jobs)):
            nursery.start_soon(one, i)
    return [verdicts[t.pool, t.endpoint, t.member] for t in targets]


def render_table(rows: list[Row]) -> str:
    """A fixed-width table for people."""
    head = ("POOL", "ENDPOINT", "RESULT", "STATUS", "RTT", "HOST", "SNI", "REASON")
    lines = [head]
    for r in rows:
        j = r.as_json()
        lines.append(
            (
                r.pool,
                f"{r.endpoint}/{r.member}" if r.member else r.endpoint,
                "healthy" if j["healthy"] else "UNHEALTHY",
                "-" if j["status"] is None else str(j["status"]),
                "-" if j["rtt_ms"] is None else f"{j['rtt_ms']:.1f}ms",
                r.host,
                r.sni or "-",
                j["reason"] or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def render_hints(rows: list[Row]) -> str:
    """One ``hint:`` line per distinct hint, naming the endpoints it concerns."""
    by_hint: dict[str, list[str]] = {}
    for r in rows:
        if r.hint:
            by_hint.setdefault(r.hint, []).append(f"{r.pool}/{r.endpoint}")
    return "".join(f"hint: {', '.join(names)}: {text}\n" for text, names in by_hint.items())


def run(args: argparse.Namespace, transport: ProbeTransport | None = None) -> int:
    """Load, probe, print; see the module docstring for the exit status."""
    result = load_config(args.files)
    config = result.config
    empty = serving_problem(config)
    if empty is not None:
        raise ConfigError([empty])
    targets = HealthBook(config).targets()
    known_pools = {t.pool for t in targets}
    known_endpoints = {t.endpoint for t in targets}
    unknown = [f"--pool {p}" for p in args.pool if p not in known_pools] + [
        f"--endpoint {e}" for e in args.endpoint if e not in known_endpoints
    ]
    for name in unknown:
        print(f"error: {name}: no monitored, enabled endpoint there", file=sys.stderr)
    if unknown:
        return 2
    chosen = select(targets, args.pool, args.endpoint)
    if transport is None:  # engine.upstream_ca, as the running LB's probes
        transport = NetworkTransport(ssl_context=read_upstream_ca(result))
    rows = trio.run(probe_targets, config, chosen, transport)
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    elif rows:
        print(render_table(rows))
        print(render_hints(rows), end="")
    else:
        print("nothing to probe: no enabled endpoint of an enabled pool has a monitor")
    return 0 if rows and all(r.verdict.ok for r in rows) else 1
