"""A small configuration, engine and probe helpers for the admin and metrics tests.

Built in code with Cloudflare's field names (no loader), like ``tests/steering/builders.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lb.config.model import (
    Config,
    EngineSettings,
    LoadBalancer,
    Monitor,
    Origin,
    Pool,
    SessionAffinityAttributes,
)
from lb.core.health import ProbeResult
from lb.engine import Engine

__all__ = [
    "HEADER_HOST",
    "HOST",
    "TUNNEL",
    "VANTAGES",
    "StartAdmin",
    "all_healthy",
    "config",
    "engine",
    "key",
    "probe",
    "samples",
]

HOST = "app.example.com"
HEADER_HOST = "hdr.example.com"
TUNNEL = "6b7c2f1e-5a4d-4c3b-9a8f-1e2d3c4b5a69"
VANTAGES = ("FRA", "IAD", "SIN")

StartAdmin = Callable[..., Awaitable[httpx.AsyncClient]]
"""The ``start_admin`` fixture: ``await start_admin(reload=None)`` -> a client bound to it."""


def config(*, admin: str = "127.0.0.1:0", vantages: Iterable[str] = VANTAGES) -> Config:
    """Two monitored pools (eu, us), an unmonitored fallback (fb), two load balancers.

    ``eu/c`` is disabled.  ``app.example.com`` uses cookie affinity, ``hdr.example.com``
    header affinity on ``x-user``.
    """
    monitor = Monitor(id="m", type="https", header={"Host": (HOST,)})
    eu = Pool(
        name="eu",
        monitor="m",
        minimum_origins=1,
        origins=(
            Origin(name="a", address=f"{TUNNEL}.cfargotunnel.com"),
            Origin(name="b", address="10.0.0.2", port=8443, weight=0.5),
            Origin(name="c", address="10.0.0.3", enabled=False),
        ),
    )
    us = Pool(name="us", monitor="m", origins=(Origin(name="d", address="10.0.1.1"),))
    fb = Pool(name="fb", origins=(Origin(name="z", address="10.0.9.9"),))
    lbs = (
        LoadBalancer(
            proxied=True,
            name=HOST,
            default_pools=("eu", "us"),
            fallback_pool="fb",
            steering_policy="off",
            session_affinity="cookie",
        ),
        LoadBalancer(
            proxied=True,
            name=HEADER_HOST,
            default_pools=("eu",),
            fallback_pool="fb",
            session_affinity="header",
            session_affinity_attributes=SessionAffinityAttributes(headers=("x-user",)),
        ),
    )
    return Config(
        monitors=(monitor,),
        pools=(eu, us, fb),
        load_balancers=lbs,
        engine=EngineSettings(vantage_points=tuple(vantages), admin=admin),
        source=("test.yaml",),
    )


def engine(cfg: Config | None = None) -> Engine:
    """An engine for ``cfg`` (default :func:`config`) with a fixed affinity secret."""
    return Engine(cfg or config(), secret=b"admin-tests")


def probe(
    eng: Engine,
    pool: str,
    endpoint: str,
    *,
    ok: bool,
    vantages: Iterable[str] = VANTAGES,
    at: float = 1.0,
    reason: str = "",
    status: int | None = None,
    rtt: float | None = None,
) -> None:
    """Apply one result per vantage point for ``pool/endpoint``."""
    for v in vantages:
        eng.apply(
            ProbeResult(
                pool=pool,
                endpoint=endpoint,
                vantage=v,
                at=at,
                ok=ok,
                reason=reason if not ok else "",
                status=status,
                rtt=rtt,
            )
        )


def all_healthy(eng: Engine) -> None:
    """Every monitored endpoint healthy from every vantage point."""
    for t in eng.targets():
        probe(eng, t.pool, t.endpoint, ok=True, status=200, rtt=0.02)


def samples(text: str | bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition into ``{(sample name, labels): value}``."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """The :func:`samples` key of one series."""
    return (name, frozenset(labels.items()))
