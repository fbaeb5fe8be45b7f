"""Steering decisions per second, next to a bare ``bisect`` weighted pick.

Run: ``.venv/bin/python bench/steering.py [--repeat 7] [--n 100000] [--profile CASE]``

Every case calls :meth:`steering.Router.decide` with tracing off, on a router compiled once
(as the proxy does between health changes).  The bare loop is the floor: one weighted pick
over 10 endpoints, ``eps[bisect(cum, random() * total)]``, with nothing else.  Each case is
timed ``--repeat`` times over ``--n`` decisions, each timing paired with a timing of the bare
loop just before it; the medians are reported as ns/decision and as the ratio to the bare loop.
See docs/bench.md.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import sys
import time
import uuid
from bisect import bisect
from collections import deque
from collections.abc import Callable
from itertools import accumulate
from random import Random

# This file is bench/steering.py: running it puts bench/ first on sys.path, where this very
# module would shadow the ``steering`` package.  Put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from lb.config.model import (  # noqa: E402
    Config,
    Datacenter,
    EngineSettings,
    LoadBalancer,
    Monitor,
    Origin,
    OriginSteering,
    Pool,
    Tunnel,
    TunnelReplica,
)
from lb.core.book import HealthBook  # noqa: E402
from lb.core.health import ProbeResult  # noqa: E402
from lb.core.snapshot import EndpointView  # noqa: E402
from steering import Live, Request, Router  # noqa: E402
from steering.affinity import sign  # noqa: E402
from steering.pick import load_terms  # noqa: E402

HOST = "app.example.com"
SECRET = b"bench"
WALL = 1_700_000_000.0


def _address(label: str) -> str:
    return f"{uuid.uuid5(uuid.NAMESPACE_DNS, label)}.cfargotunnel.com"


def _pool(name: str, n: int, policy: str = "random") -> Pool:
    origins = tuple(
        Origin(name=f"{name}-{i}", address=_address(f"{name}-{i}"), weight=(i + 1) / n)
        for i in range(n)
    )
    return Pool(
        name=name, origins=origins, monitor="m", origin_steering=OriginSteering(policy=policy)
    )


def _router(config: Config, down: set[str] = frozenset()) -> Router:  # type: ignore[assignment]
    """Every monitored endpoint healthy except ``pool/endpoint`` keys in ``down``."""
    book = HealthBook(config)
    for t in book.targets():
        ok = f"{t.pool}/{t.endpoint}" not in down
        for v in config.engine.vantage_points:
            book.apply(ProbeResult(pool=t.pool, endpoint=t.endpoint, vantage=v, at=0.0, ok=ok))
    return Router(book.snapshot(), secret=SECRET)


def _config(pools: list[Pool], lb: LoadBalancer, **kw: object) -> Config:
    return Config(
        monitors=(Monitor(id="m", type="https"),),
        pools=tuple(pools),
        load_balancers=(lb,),
        **kw,  # type: ignore[arg-type]
    )


Case = Callable[[int], None]


def bare(n: int) -> None:
    """The floor: a weighted pick over 10 endpoints with a precomputed cumulative table."""
    eps = [f"e{i}" for i in range(10)]
    cum, total = [], 0.0
    for i in range(10):
        total += (i + 1) / 10
        cum.append(total)
    rnd = Random(1).random
    for _ in range(n):
        eps[bisect(cum, rnd() * total)]


def bare_lor(n: int) -> None:
    """Reference only: the least_outstanding_requests arithmetic alone, from scratch (4
    endpoints with in-flight counts, ``w / (n + 1)`` each, running sums, then ``bisect``), with
    no steering around it: what a decision would cost on top of the pipeline if it rebuilt
    R21's table every time."""
    items = [f"e{i}" for i in range(4)]
    indexes = (1, 2, 3, 4)
    weights = (0.4, 0.6, 0.8, 1.0)
    counts = [0, 1, 2, 3, 4]
    rnd = Random(1).random
    for _ in range(n):
        cum = list(accumulate(load_terms(weights, indexes, counts)))
        items[bisect(cum, rnd() * cum[-1])]


def _loop(router: Router, req: Request, live: Live | None = None) -> Case:
    def run(n: int) -> None:
        decide, rng = router.decide, Random(1)
        for _ in range(n):
            decide(req, rng, live)

    return run


def case_random() -> Case:
    """(a) a weighted random endpoint in a pool of 10."""
    lb = LoadBalancer(proxied=True, name=HOST, default_pools=("a",), fallback_pool="a")
    return _loop(_router(_config([_pool("a", 10)], lb)), Request(host=HOST))


def case_random_pools() -> Case:
    """(extra) the ``random`` pool policy: one of 3 pools drawn by weight, then (a) in it
    (the router's ``_FastPools`` path)."""
    lb = LoadBalancer(
        proxied=True,
        name=HOST,
        default_pools=("a", "b", "c"),
        fallback_pool="c",
        steering_policy="random",
    )
    pools = [_pool("a", 10), _pool("b", 10), _pool("c", 10)]
    return _loop(_router(_config(pools, lb)), Request(host=HOST))


def case_failover() -> Case:
    """(b) failover across 3 pools, the first two critical."""
    lb = LoadBalancer(proxied=True, name=HOST, default_pools=("a", "b", "c"), fallback_pool="c")
    pools = [_pool("a", 3), _pool("b", 3), _pool("c", 3)]
    down = {f"{p}/{p}-{i}" for p in "ab" for i in range(3)}
    return _loop(_router(_config(pools, lb), down), Request(host=HOST))


def case_cookie_hit() -> Case:
    """(c) a valid ``__cflb`` whose endpoint is healthy."""
    lb = LoadBalancer(
        proxied=True, name=HOST, default_pools=("a",), fallback_pool="a", session_affinity="cookie"
    )
    cookie = sign(SECRET, HOST, "a", "a-3", WALL + 3600)
    req = Request(host=HOST, cookie=cookie, wall=WALL)
    router = _router(_config([_pool("a", 10)], lb))
    assert router.decide(req, Random(1)).reason == "affinity"
    return _loop(router, req)


def _geo_lor(size: int = 5) -> tuple[Router, Request, Live]:
    lb = LoadBalancer(
        proxied=True,
        name=HOST,
        default_pools=("us",),
        fallback_pool="us",
        steering_policy="geo",
        region_pools={"WEU": ("eu1", "eu2"), "ENAM": ("us",)},
        country_pools={"US": ("us",)},
    )
    pools = [_pool(n, size, "least_outstanding_requests") for n in ("eu1", "eu2", "us")]
    dcs = {"FRA": Datacenter(code="FRA", region="WEU", country="DE")}
    cfg = _config(pools, lb, datacenters=dcs)
    live = Live(in_flight={f"eu1/eu1-{i}": i % 5 for i in range(size)})
    return _router(cfg, {"eu1/eu1-0"}), Request(host=HOST, datacenter="FRA"), live


def case_geo_lor() -> Case:
    """(d) geo pools by region + request data center, least_outstanding_requests endpoints."""
    return _loop(*_geo_lor())


def case_geo_lor_moving(size: int = 5) -> Case:
    """Reference only: (d) as the proxy drives it.  Each decision's endpoint is started and
    the request decided 4 decisions earlier finishes, so the counts move twice per decision
    and R21's table is brought up to date every time; ``Live.started``/``finished`` are in the
    timing."""
    router, req, live = _geo_lor(size)

    def run(n: int) -> None:
        decide, rng = router.decide, Random(1)
        started, finished = live.started, live.finished
        window: deque[EndpointView] = deque()
        for _ in range(n):
            ep = decide(req, rng, live).endpoint
            assert ep is not None
            started(ep)
            window.append(ep)
            if len(window) > 4:
                finished(window.popleft())
        for ep in window:
            finished(ep)

    return run


def case_local() -> Case:
    """(e, extra) (a) with local-data-center preference: 10 tunnels, 3 connected in FRA."""
    lb = LoadBalancer(proxied=True, name=HOST, default_pools=("a",), fallback_pool="a")
    pool = _pool("a", 10)
    tunnels = tuple(
        Tunnel(
            id=o.address.split(".")[0],
            replicas=(TunnelReplica(name="r", datacenters=("FRA",) if i < 3 else ("IAD",)),),
        )
        for i, o in enumerate(pool.origins)
    )
    engine = dataclasses.replace(
        EngineSettings(),
        local_preference=dataclasses.replace(EngineSettings().local_preference, enabled=True),
    )
    cfg = _config([pool], lb, tunnels=tunnels, engine=engine)
    return _loop(_router(cfg), Request(host=HOST, datacenter="FRA"))


REFERENCES: dict[str, Callable[[], Case]] = {
    "(reference: bare LOR arithmetic)": lambda: bare_lor,
    "(reference: (d), counts moving)": case_geo_lor_moving,
    "(reference: same, 50 endpoints)": lambda: case_geo_lor_moving(50),
}
"""Rows printed for comparison, outside the goal."""

CASES: dict[str, Callable[[], Case]] = {
    "random endpoint, pool of 10": case_random,
    "random pool of 3, then endpoint": case_random_pools,
    "failover, 3 pools, 2 critical": case_failover,
    "cookie affinity hit": case_cookie_hit,
    "geo + LOR, full pipeline": case_geo_lor,
    "random + local preference": case_local,
}


def _time(run: Case, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n * 1e9


def measure(run: Case, n: int, repeat: int) -> tuple[float, float, float]:
    """Median ns per call of ``run``, of the bare loop, and of their ratio.

    Each repetition times the bare loop right before the case, so that a ratio compares two
    timings taken under the same machine load; the median ratio is what the goal is about.
    """
    run(n // 10)  # warm caches (routes, endpoint sets, compiled plans, fast paths)
    pairs = []
    for _ in range(repeat):
        base = _time(bare, n)
        pairs.append((_time(run, n), base))
    return (
        statistics.median(ns for ns, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(ns / b for ns, b in pairs),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="decisions per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings per case (median)")
    parser.add_argument("--profile", metavar="CASE", help="cProfile one case (name prefix)")
    args = parser.parse_args(argv)

    if args.profile:
        every = {**CASES, **REFERENCES}
        name = next(k for k in every if k.startswith(args.profile))
        run = every[name]()
        profiler = cProfile.Profile()
        profiler.runcall(run, args.n)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return 0

    print(f"python {sys.version.split()[0]}, n={args.n}, median of {args.repeat}")
    print(f"{'case':32} {'ns/decision':>12} {'decisions/s':>12} {'bare ns':>8} {'x bare':>7}")
    worst = 0.0
    for name, make in (*REFERENCES.items(), *CASES.items()):
        ns, base, ratio = measure(make(), args.n, args.repeat)
        if name in CASES:
            worst = max(worst, ratio)
        print(f"{name:32} {ns:12.0f} {1e9 / ns:12,.0f} {base:8.0f} {ratio:7.2f}")
    verdict = "met" if worst <= 5 else "NOT met"
    print(f"worst ratio {worst:.2f}: goal (every case within 5x of the bare loop) {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
