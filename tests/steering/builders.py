"""Build configurations, health books and routers in code, for the steering and core tests.

Every builder takes the Cloudflare field names of :mod:`lb.config.model` as keyword arguments,
so a test reads like the YAML it stands for.  Nothing here uses the loader.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from random import Random
from typing import Any

from lb.config.model import (
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
from lb.core.book import HealthBook
from lb.core.health import ProbeResult
from steering import Decision, HeaderSessions, Request, Router

__all__ = [
    "DATACENTERS",
    "HOST",
    "MONITOR",
    "SECRET",
    "book",
    "config",
    "endpoint",
    "load_balancer",
    "mark",
    "pool",
    "remembering",
    "replace",
    "request",
    "router",
    "tunnel",
    "tunnel_address",
]

HOST = "app.example.com"
SECRET = b"test-secret"
MONITOR = Monitor(id="m", type="https", header={"Host": (HOST,)})

DATACENTERS: Mapping[str, Datacenter] = {
    "FRA": Datacenter(code="FRA", region="WEU", country="DE", latitude=50.03, longitude=8.57),
    "AMS": Datacenter(code="AMS", region="WEU", country="NL", latitude=52.31, longitude=4.76),
    "LHR": Datacenter(code="LHR", region="WEU", country="GB", latitude=51.47, longitude=-0.45),
    "IAD": Datacenter(code="IAD", region="ENAM", country="US", latitude=38.95, longitude=-77.45),
    "SJC": Datacenter(code="SJC", region="WNAM", country="US", latitude=37.36, longitude=-121.93),
    "SIN": Datacenter(code="SIN", region="SEAS", country="SG", latitude=1.36, longitude=103.99),
    "NRT": Datacenter(code="NRT", region="NEAS", country="JP", latitude=35.77, longitude=140.39),
}


def tunnel_address(label: str) -> str:
    """A stable ``<uuid>.cfargotunnel.com`` address derived from ``label``."""
    return f"{uuid.uuid5(uuid.NAMESPACE_DNS, label)}.cfargotunnel.com"


def tunnel(label: str, *datacenters: str, replicas: int = 1) -> Tunnel:
    """The ``tunnels`` entry of :func:`tunnel_address` (label), connected in ``datacenters``."""
    tid = tunnel_address(label).split(".", 1)[0]
    return Tunnel(
        id=tid,
        name=label,
        replicas=tuple(
            TunnelReplica(name=f"{label}-{i}", datacenters=tuple(datacenters))
            for i in range(replicas)
        ),
    )


def endpoint(name: str, *, address: str | None = None, **kw: Any) -> Origin:
    """An endpoint (API: origin); the address defaults to a tunnel address named after it."""
    return Origin(name=name, address=address or tunnel_address(name), **kw)


def pool(
    name: str,
    endpoints: int | Sequence[Origin] = 2,
    *,
    policy: str = "random",
    monitor: str | None = "m",
    **kw: Any,
) -> Pool:
    """A pool; an int ``endpoints`` makes ``<name>-0`` .. ``<name>-(n-1)`` of weight 1."""
    origins = (
        tuple(endpoint(f"{name}-{i}") for i in range(endpoints))
        if isinstance(endpoints, int)
        else tuple(endpoints)
    )
    return Pool(
        name=name,
        origins=origins,
        monitor=monitor,
        origin_steering=OriginSteering(policy=policy),
        **kw,
    )


def load_balancer(
    default_pools: Sequence[str], fallback_pool: str | None = None, **kw: Any
) -> LoadBalancer:
    """A load balancer for :data:`HOST`; the fallback defaults to the last default pool."""
    kw.setdefault("name", HOST)
    kw.setdefault("proxied", True)  # tunnel endpoints need it (Cloudflare's default is false)
    return LoadBalancer(
        default_pools=tuple(default_pools),
        fallback_pool=fallback_pool if fallback_pool is not None else default_pools[-1],
        **kw,
    )


def config(
    pools: Iterable[Pool],
    lbs: LoadBalancer | Iterable[LoadBalancer],
    *,
    tunnels: Iterable[Tunnel] = (),
    monitors: Iterable[Monitor] = (MONITOR,),
    datacenters: Mapping[str, Datacenter] = DATACENTERS,
    **engine: Any,
) -> Config:
    """A whole configuration; keyword arguments become :class:`EngineSettings` fields."""
    lbs = (lbs,) if isinstance(lbs, LoadBalancer) else tuple(lbs)
    return Config(
        monitors=tuple(monitors),
        pools=tuple(pools),
        load_balancers=lbs,
        tunnels=tuple(tunnels),
        datacenters=dict(datacenters),
        engine=EngineSettings(**engine),
    )


def mark(
    hb: HealthBook,
    *,
    down: Iterable[str] = (),
    unknown: Iterable[str] = (),
    at: float = 0.0,
    rtt: Mapping[tuple[str, str], float] | None = None,
) -> HealthBook:
    """Drive every monitored endpoint to healthy, except ``pool/endpoint`` keys in ``down``
    (unhealthy) and ``unknown`` (never probed).  ``rtt`` maps (pool, vantage) to the RTT of
    the passing probes."""
    down, unknown = set(down), set(unknown)
    cfg = hb.config
    for target in hb.targets():
        key = f"{target.pool}/{target.endpoint}"
        if key in unknown:
            continue
        ok = key not in down
        runs = max(1, target.monitor.consecutive_up if ok else target.monitor.consecutive_down)
        for vantage in cfg.engine.vantage_points:
            for _ in range(runs):
                hb.apply(
                    ProbeResult(
                        pool=target.pool,
                        endpoint=target.endpoint,
                        vantage=vantage,
                        at=at,
                        ok=ok,
                        reason="" if ok else "tcp_connection_failed",
                        status=200 if ok else None,
                        rtt=(rtt or {}).get((target.pool, vantage)) if ok else None,
                    )
                )
    return hb


def book(cfg: Config, **kw: Any) -> HealthBook:
    """A health book for ``cfg`` with health driven as :func:`mark` says."""
    return mark(HealthBook(cfg), **kw)


def router(
    cfg: Config | HealthBook, *, sessions: HeaderSessions | None = None, **kw: Any
) -> Router:
    """A router over ``cfg`` (a config: every monitored endpoint healthy unless ``down``)."""
    hb = cfg if isinstance(cfg, HealthBook) else book(cfg, **kw)
    return Router(hb.snapshot(), secret=SECRET, sessions=sessions)


class Remembering:
    """A router and its header-session table, storing what each decision asks to remember as
    the engine does (``lb.engine.Engine.decide`` / ``retry``): the router only reads it."""

    def __init__(self, r: Router, sessions: HeaderSessions) -> None:
        self.router, self.sessions = r, sessions

    def _store(self, d: Decision | None) -> None:
        if d is not None and d.remember is not None:
            self.sessions.store(d.remember)

    def decide(self, req: Request, rng: Random, **kw: Any) -> Decision:
        d = self.router.decide(req, rng, **kw)
        self._store(d)
        return d

    def retry(self, first: Decision, req: Request, rng: Random, **kw: Any) -> Decision | None:
        d = self.router.retry(first, req, rng, **kw)
        self._store(d)
        return d


def remembering(cfg: Config | HealthBook, **kw: Any) -> Remembering:
    """:func:`router` with a session table of its own, remembered as the engine does."""
    sessions = kw.pop("sessions", None)
    if sessions is None:
        sessions = HeaderSessions()
    return Remembering(router(cfg, sessions=sessions, **kw), sessions)


def request(**kw: Any) -> Request:
    """A request for :data:`HOST` unless ``host`` is given."""
    kw.setdefault("host", HOST)
    return Request(**kw)


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace``, re-exported for brevity."""
    return dataclasses.replace(obj, **changes)
