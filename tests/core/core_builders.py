"""Small configuration builders for the health-core tests (no loader involved)."""

from __future__ import annotations

from typing import Any

from lb.config.model import (
    Config,
    EngineSettings,
    LoadBalancer,
    Monitor,
    Origin,
    Pool,
    RetryOn,
)
from lb.core.attempts import Body, Failure, Retry, Step, next_step
from lb.core.book import HealthBook
from lb.core.budget import RetryBudget
from lb.core.health import ProbeResult

__all__ = ["FAILOVER_CODES", "health_view", "make_config", "make_pool", "result", "step"]

FAILOVER_CODES = frozenset({521, 522, 523})


def make_pool(name: str, n: int = 2, *, monitor: str | None = "m", **kw: Any) -> Pool:
    """A pool of ``n`` endpoints ``<name>-0`` .. named after the pool."""
    origins = kw.pop("origins", None) or tuple(
        Origin(name=f"{name}-{i}", address=f"10.0.{len(name)}.{i + 1}") for i in range(n)
    )
    return Pool(name=name, origins=origins, monitor=monitor, **kw)


def make_config(
    *pools: Pool, up: int = 0, down: int = 0, vantage_points: tuple[str, ...] = ("local",)
) -> Config:
    """A configuration with monitor ``m`` and one load balancer over ``pools``."""
    names = tuple(p.name for p in pools)
    return Config(
        monitors=(Monitor(id="m", consecutive_up=up, consecutive_down=down),),
        pools=pools,
        load_balancers=(
            LoadBalancer(
                proxied=True, name="app.example.com", default_pools=names, fallback_pool=names[-1]
            ),
        ),
        engine=EngineSettings(vantage_points=vantage_points),
    )


def result(
    pool: str, endpoint: str, ok: bool, *, vantage: str = "local", at: float = 0.0, **kw: Any
) -> ProbeResult:
    """One probe result; failures carry a reason and no status unless given."""
    if not ok:
        kw.setdefault("reason", "tcp_connection_failed")
    else:
        kw.setdefault("status", 200)
    return ProbeResult(pool=pool, endpoint=endpoint, vantage=vantage, at=at, ok=ok, **kw)


def step(
    failure: Failure,
    *,
    rules: RetryOn | None,
    reused: bool = False,
    body: Body = Body.BUFFERED,
    idempotent: bool = True,
    retries: tuple[Retry, ...] = (),
    budget: RetryBudget | None = None,
    answered: int = 0,
) -> Step:
    """The attempt policy's step after ``failure`` of a request that reached the endpoint
    (``retry_on`` tests): replayable exactly when idempotent."""
    return next_step(
        failure,
        reused=reused,
        body=body,
        sent=True,
        replayable=idempotent,
        retries=retries,
        failover_codes=FAILOVER_CODES,
        idempotent=idempotent,
        retry_on=rules,
        budget=budget,
        answered=answered,
    )


def health_view(book: HealthBook) -> list[tuple[str, str, str, dict[str, str]]]:
    """Every endpoint's health and per-vantage health, to compare two books (a parent's and
    a worker's) in one assertion."""
    snap = book.snapshot()
    return [
        (p.name, e.name, e.health.value, {v: h.value for v, h in e.vantage_health.items()})
        for p in snap.pools.values()
        for e in p.endpoints
    ]
