"""Configurations for tests that run the whole LB (in process or as `tunnel-lb run`).

Two shapes: two tunnels in two pools (eu, us) reached through ``connect_to``, and one pool of
one tunnel that is never probed successfully (for reload and supervision tests).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["APP", "EU", "LB", "US", "one_pool_config", "two_tunnel_config"]

EU = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
US = "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
APP = "app.example.com"
"""The Host the tunnels' ingress routes (and the monitor and endpoints send)."""
LB = "app.localhost"


def two_tunnel_config(
    ports: dict[str, int],
    listen: int,
    admin: int,
    ca: Path,
    *,
    order: Sequence[str] = ("eu", "us"),
    names: Sequence[str] = (LB,),
    **engine: Any,
) -> str:
    """Pools eu and us, one tunnel each, monitored every second; ``order`` is the failover
    order of every load balancer in ``names``.  ``engine`` adds or overrides engine fields."""
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "app",
                    "type": "https",
                    "path": "/healthz",
                    "interval": 1,
                    "timeout": 1,
                    "retries": 0,
                    "header": {"Host": [APP]},
                }
            ],
            "pools": [
                {
                    "name": name,
                    "monitor": "app",
                    "origins": [
                        {
                            "name": f"tunnel-{name}",
                            "address": f"{uuid}.cfargotunnel.com",
                            "header": {"Host": [APP]},
                        }
                    ],
                }
                for name, uuid in (("eu", EU), ("us", US))
            ],
            "load_balancers": [
                {
                    "name": name,
                    "proxied": True,
                    "default_pools": list(order),
                    "fallback_pool": "us",
                    # One tunnel per pool: without this the retry has no alternate (R43).
                    "adaptive_routing": {"failover_across_pools": True},
                }
                for name in names
            ],
            "connect_to": {
                f"{uuid}.cfargotunnel.com:443": f"127.0.0.1:{ports[uuid]}" for uuid in (EU, US)
            },
            "engine": {
                "minimum_interval": 1,
                "listen": [{"address": "127.0.0.1", "port": listen}],
                "admin": f"127.0.0.1:{admin}",
                "upstream_ca": str(ca),
                "drain_timeout": 2,
                **engine,
            },
        },
        indent=1,
    )


def one_pool_config(*, interval: int = 10, listen: Sequence[int] = (0,), **engine: Any) -> str:
    """One pool of one tunnel whose ``connect_to`` goes nowhere (port 9): probes fail."""
    return json.dumps(
        {
            "monitors": [{"id": "m", "type": "https", "path": "/h", "interval": interval}],
            "pools": [
                {
                    "name": "eu",
                    "monitor": "m",
                    "origins": [{"name": "t", "address": f"{EU}.cfargotunnel.com"}],
                }
            ],
            "load_balancers": [
                {"name": LB, "proxied": True, "default_pools": ["eu"], "fallback_pool": "eu"}
            ],
            "connect_to": {f"{EU}.cfargotunnel.com:443": "127.0.0.1:9"},
            "engine": {
                "listen": [{"address": "127.0.0.1", "port": port} for port in listen],
                "admin": "127.0.0.1:0",
                "drain_timeout": 1,
                **engine,
            },
        }
    )
