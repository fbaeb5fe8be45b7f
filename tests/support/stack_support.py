"""Configurations for tests that run the whole LB (in process or as `tunnel-lb run`).

Two shapes: two tunnels in two pools (eu, us) reached through ``connect_to``, and one pool of
one tunnel that is never probed successfully (for reload and supervision tests).
:func:`running_stack` starts the first shape as real processes: a ``tunnel-lb connector`` per
tunnel and ``tunnel-lb run`` in front.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme
from prometheus_support import free_port
from waiting import wait_until

__all__ = [
    "APP",
    "EU",
    "LB",
    "US",
    "Stack",
    "connector_config",
    "one_pool_config",
    "processes",
    "running_stack",
    "start_process",
    "two_tunnel_config",
    "until_url",
]

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
                    # A check that is only slow (a loaded CI machine) gets a second chance;
                    # a refused one fails at once, so detecting a dead tunnel stays as quick.
                    "timeout": 2,
                    "retries": 1,
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


def connector_config(uuid: str, dc: str, port: int, cert: Path) -> str:
    """A ``tunnel-lb connector`` file: the tunnel ``uuid`` on ``port``, routing :data:`APP`."""
    return json.dumps(
        {
            "tunnel": uuid,
            "replica": f"{dc.lower()}-1",
            "datacenter": dc,
            "listen": f"127.0.0.1:{port}",
            "certificate": str(cert),
            "key": str(cert),
            "ingress": [
                {"hostname": APP, "path": "^/healthz$", "service": "http_status:200"},
                {"hostname": APP, "service": "hello_world"},
                {"service": "http_status:404"},
            ],
        }
    )


async def until_url(client: httpx.AsyncClient, url: str, ok: Any, *, seconds: float = 20) -> Any:
    """Poll ``url`` until ``ok(response)`` is truthy (bounded); return that value.

    Another process's state: there is no event to wait on, so it goes through
    :func:`waiting.wait_until`."""

    async def check() -> Any:
        return ok(await client.get(url))

    what = f"{url} to reach the expected state"
    return await wait_until(check, seconds, what=what, step=0.1, ignore=(httpx.TransportError,))


@asynccontextmanager
async def processes() -> AsyncIterator[trio.Nursery]:
    """A nursery for processes, cancelled (so every process is stopped) on the way out."""
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()


async def start_process(nursery: trio.Nursery, *args: str, log: Path) -> trio.Process:
    """``python -m lb ARGS...`` in ``nursery``, its output appended to ``log``."""
    with log.open("ab") as out:
        cmd = [sys.executable, "-m", "lb", *args]
        run = partial(trio.run_process, cmd, check=False, stdout=out, stderr=out)
        process: trio.Process = await nursery.start(run)
        return process


@dataclass
class Stack:
    """A running two-tunnel stack: where to send traffic, the admin, and the processes; with
    the ports and the CA file a test needs to write another :func:`two_tunnel_config`."""

    base: str
    admin: int
    admin_base: str
    tunnels: dict[str, trio.Process]
    lb: trio.Process
    config: Path
    log: Path
    ports: dict[str, int]
    """The tunnels' ports, by tunnel UUID."""
    listen: int
    ca_file: Path
    engine: dict[str, Any]
    """The engine fields :func:`running_stack` was given."""

    def reconfigured(self, **changes: Any) -> str:
        """This stack's :func:`two_tunnel_config` with ``changes`` (``order``, ``names`` or
        engine fields), for a reload."""
        options = {**self.engine, **changes}
        return two_tunnel_config(self.ports, self.listen, self.admin, self.ca_file, **options)


@asynccontextmanager
async def running_stack(tmp_path: Path, **engine: Any) -> AsyncIterator[Stack]:
    """Two connector processes (eu in FRA, us in IAD) and ``tunnel-lb run`` over them, ready
    (``/readyz`` answered 200); every process is stopped on exit."""
    ca = trustme.CA()
    cert = tmp_path / "tunnel.pem"
    ca.issue_cert(APP).private_key_and_cert_chain_pem.write_to_path(str(cert))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ports = {EU: free_port(), US: free_port()}
    listen, admin = free_port(), free_port()
    config = tmp_path / "lb.json"
    config.write_text(two_tunnel_config(ports, listen, admin, ca_file, **engine))
    log = tmp_path / "processes.log"
    async with processes() as nursery, httpx.AsyncClient(timeout=5) as client:
        tunnels = {}
        for uuid, dc in ((EU, "FRA"), (US, "IAD")):
            path = tmp_path / f"{dc}.json"
            path.write_text(connector_config(uuid, dc, ports[uuid], cert))
            tunnels[uuid] = await start_process(nursery, "connector", "--quiet", str(path), log=log)
        lb = await start_process(nursery, "run", str(config), log=log)
        admin_base = f"http://127.0.0.1:{admin}"
        await until_url(client, f"{admin_base}/readyz", lambda r: r.status_code == 200)
        yield Stack(
            base=f"http://127.0.0.1:{listen}",
            admin=admin,
            admin_base=admin_base,
            tunnels=tunnels,
            lb=lb,
            config=config,
            log=log,
            ports=ports,
            listen=listen,
            ca_file=ca_file,
            engine=engine,
        )
