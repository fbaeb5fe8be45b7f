"""Builders of monitor test inputs: targets from the config dataclasses, probes via ``plan``."""

from __future__ import annotations

from typing import Any

from lb.config.model import Monitor, Origin
from lb.core.book import ProbeTarget
from monitors import Probe, plan

ADDRESS = "origin.test"
"""An endpoint address that only ``connect_to`` makes reachable."""


def target(
    monitor: Monitor,
    *,
    pool: str = "p",
    endpoint: str = "e1",
    address: str = ADDRESS,
    origin_host: str | None = None,
    origin_port: int = 0,
) -> ProbeTarget:
    """One (pool, endpoint) target."""
    origin = Origin(
        name=endpoint,
        address=address,
        header={"Host": (origin_host,)} if origin_host else {},
        port=origin_port,
    )
    return ProbeTarget(pool=pool, endpoint=endpoint, origin=origin, monitor=monitor, pool_id=pool)


def monitor(port: int, *, host: str | None = "app.test", **kw: Any) -> Monitor:
    """An https monitor on ``port`` with a Host header, 1 s timeout and no retries by default."""
    fields: dict[str, Any] = {
        "id": "m",
        "type": "https",
        "port": port,
        "timeout": 1.0,
        "retries": 0,
        "header": {"Host": (host,)} if host else {},
    }
    fields.update(kw)
    return Monitor(**fields)


def probe(
    port: int,
    *,
    host: str | None = "app.test",
    origin_host: str | None = None,
    address: str = ADDRESS,
    **kw: Any,
) -> Probe:
    """The probe of one endpoint at ``address`` dialled at 127.0.0.1:``port`` via connect_to."""
    t = target(monitor(port, host=host, **kw), address=address, origin_host=origin_host)
    jobs = plan([t], connect_to={f"{address}:{port}": f"127.0.0.1:{port}"})
    return jobs[0].probe
