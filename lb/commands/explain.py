"""``tunnel-lb explain``: where would this request go, and why?

Every monitored endpoint is taken as healthy except those named with ``--down``, so the
answer shows the steering of a configuration, not the state of a network.  On a pool with a
monitor group, ``--down POOL/ENDPOINT/MONITOR`` fails one member only, and the endpoint gets
whatever health the group makes of it (R16), shown with its members.  ``--ejected
POOL/ENDPOINT`` feeds 5xx answers (or failed connections) through passive health until it
ejects the endpoint, as real traffic would (``passive_health`` must cover its pool).  The
decision comes from the same :class:`~steering.Router` the proxy and the simulator use.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from lb.config.errors import ConfigError
from lb.config.loader import load_config
from lb.config.serving import serving_problem
from lb.core.attempts import Failure
from lb.engine import Engine
from lb.proxy.headers import parse_cookies
from steering import Request
from steering.geo import client_country
from steering.whatif import client_ip_problem, datacenter_code, datacenter_problem

NAME = "explain"
HELP = "Show which pool and endpoint a request would get, with the full trace."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="configuration files")
    parser.add_argument("--host", required=True, help="the request's Host (load balancer name)")
    parser.add_argument("--client-ip", default="", help="client IP (hash, ip_cookie, shedding)")
    parser.add_argument("--datacenter", default="", help="entry data center code, e.g. FRA")
    parser.add_argument(
        "--country",
        default="",
        help="the client's country (ISO code, as CF-IPCountry says); default: the data center's",
    )
    parser.add_argument("--cookie", default=None, help="the __cflb value the client sends")
    parser.add_argument("--method", default="GET", help="request method (custom rules)")
    parser.add_argument("--path", default="/", help="request path and query (custom rules)")
    parser.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="a request header"
    )
    parser.add_argument(
        "--down",
        action="append",
        default=[],
        metavar="POOL/ENDPOINT[/MONITOR]",
        help="mark an endpoint, or one monitor group member's view of it, unhealthy (repeatable)",
    )
    parser.add_argument(
        "--ejected",
        action="append",
        default=[],
        metavar="POOL/ENDPOINT",
        help="eject an endpoint as passive health would after failed traffic (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random picks")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Load, mark health, decide once and print the decision with its trace."""
    if problem := client_ip_problem(args.client_ip):
        print(f"error: --client-ip {args.client_ip!r}: {problem}", file=sys.stderr)
        return 2
    config = load_config(args.files).config
    empty = serving_problem(config)
    if empty is not None:
        raise ConfigError([empty])
    datacenter = datacenter_code(args.datacenter)
    if problem := datacenter_problem(datacenter, config.datacenters):
        print(f"error: --datacenter {args.datacenter!r}: {problem}", file=sys.stderr)
        return 2
    engine = Engine(config, secret=b"explain")
    down = set(args.down)
    targets = engine.targets()
    known = {f"{t.pool}/{t.endpoint}" for t in targets}
    known |= {f"{t.pool}/{t.endpoint}/{t.member}" for t in targets if t.member}
    for name in sorted(down - known):
        print(
            f"error: --down {name}: no monitored endpoint of that name (nor a monitor "
            "group member)",
            file=sys.stderr,
        )
        return 2
    for target in targets:
        name = f"{target.pool}/{target.endpoint}"
        ok = name not in down and f"{name}/{target.member}" not in down
        engine.book.settle(
            target.pool,
            target.endpoint,
            ok=ok,
            at=0.0,
            reason="--down",
            member=target.member or None,
        )
    for name in args.ejected:
        problem = _eject(engine, name)
        if problem:
            print(f"error: --ejected {name}: {problem}", file=sys.stderr)
            return 2
    groups = _group_health(engine, {t.pool for t in targets if t.member})
    headers: dict[str, str] = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --header {item!r}: expected K=V", file=sys.stderr)
            return 2
        headers[key.strip().lower()] = value.strip()
    request = Request(
        host=args.host,
        client_ip=args.client_ip,
        datacenter=datacenter,
        country=client_country(args.country),
        cookie=args.cookie,
        headers=headers,
        cookies=parse_cookies(headers.get("cookie", "").encode("latin-1")),
        method=args.method.upper(),
        uri=args.path,
    )
    decision = engine.router.decide(request, random.Random(args.seed), trace=True)
    if decision.status == 404:
        names = ", ".join(lb.name for lb in config.load_balancers) or "none"
        print(
            f"error: no load balancer answers for host {args.host!r} (known: {names})",
            file=sys.stderr,
        )
        return 2
    if args.json:
        document = decision.as_json()
        if groups:
            document["monitor_groups"] = groups
        print(json.dumps(document, indent=2))
        return 0
    if decision.fixed is not None:
        print(f"{args.host} -> fixed response {decision.fixed.status_code} (custom rule)")
    elif decision.endpoint is not None:
        tunnel = f" (tunnel {decision.tunnel_id})" if decision.tunnel_id else ""
        print(
            f"{args.host} -> pool {decision.pool.name if decision.pool else '-'}, "
            f"endpoint {decision.endpoint.name}{tunnel}"
        )
    else:
        print(f"{args.host} -> HTTP {decision.status} (error 1016: no pool can serve)")
    print(f"reason: {decision.reason}; policy: {decision.policy}; affinity: {decision.affinity}")
    for step in decision.trace or ():
        print(f"  - {step}")
    for name, group in groups.items():
        if any(m != "healthy" for m in group["members"].values()):
            members = ", ".join(f"{m} {h}" for m, h in group["members"].items())
            print(f"monitor group of {name}: {group['health']} ({members})")
    return 0


def _eject(engine: Engine, name: str) -> str:
    """Feed failed attempts to ``POOL/ENDPOINT`` until passive health ejects it; "" when it
    did, else why not."""
    pool, _, endpoint = name.partition("/")
    ejector = engine.book.passive(pool, endpoint)
    if ejector is None:
        return "passive_health does not cover that endpoint (or there is none of that name)"
    if ejector.config.consecutive_5xx:
        status, failure = 502, None
    else:
        status, failure = 521, Failure.CONNECT_REFUSED
    for _ in range(1001):  # thresholds are at most 1000
        if ejector.ejected:
            return ""
        if engine.book.snapshot().pools[pool].endpoint(endpoint) is None:
            break
        engine.outcome(pool, endpoint, status=status, failure=failure, now=0.0)
    if ejector.ejected:
        return ""
    return "not ejected: it is not healthy, or max_ejection_percent of its pool is out already"


def _group_health(engine: Engine, pools: set[str]) -> dict[str, dict[str, Any]]:
    """R16: per endpoint of a monitor group pool, its health and each member's state.

    ``explain`` runs one vantage point's worth of what-if results: the first vantage point
    stands for all of them (``--down`` marks every vantage point alike).
    """
    out: dict[str, dict[str, Any]] = {}
    snapshot = engine.book.snapshot()
    for pool in sorted(pools):
        for ep in snapshot.pools[pool].endpoints:
            states = engine.book.member_states(pool, ep.name)
            if not states:
                continue
            first = next(iter(states.values()))
            out[f"{pool}/{ep.name}"] = {
                "health": ep.health.value,
                "members": {m: h.value for m, h in first.items()},
            }
    return out
