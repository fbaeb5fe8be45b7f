"""A private TCP service behind two connector stand-ins and the LB, for the access tests.

Everything runs in process on 127.0.0.1 with port 0: an echo TCP server (the private
service), two connectors (tunnels ``eu`` and ``us``) whose ingress maps ``APP`` to it, the
load balancer (one pool of both tunnels, cookie affinity, a monitor on the tunnels'
``http_status`` health route) and ``serve_access`` as the client.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trustme
from stack_support import APP, EU, LB, US
from waiting import wait_until

from lb.access import AccessConfig, AccessStats, serve_access
from lb.connector import ConnectorConfig, ConnectorStats, IngressRule, serve_connector
from lb.service import Running, serve_lb

__all__ = [
    "APP",
    "BASTION",
    "EU",
    "LB",
    "US",
    "Echo",
    "Tunnel",
    "lb_config",
    "roundtrip",
    "serve_echo",
    "start_access",
    "start_lb",
    "start_tunnel",
]

BASTION = "bastion.example.com"


@dataclass
class Echo:
    """The private TCP service: echoes every byte until the client half-closes."""

    port: int
    connections: int = 0
    open: int = 0
    received: int = 0


async def serve_echo(*, task_status: trio.TaskStatus[Echo] = trio.TASK_STATUS_IGNORED) -> None:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    echo = Echo(port=listener.socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        echo.connections += 1
        echo.open += 1
        try:
            while data := await stream.receive_some(65536):
                echo.received += len(data)
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            echo.open -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handle, [listener]))
        task_status.started(echo)


@dataclass
class Tunnel:
    """One running connector: its port, stats, and the scope that kills it."""

    uuid: str
    port: int
    stats: ConnectorStats
    scope: trio.CancelScope = field(repr=False)

    def kill(self) -> None:
        """Stop listening and drop every connection, like a killed cloudflared."""
        self.scope.cancel()


async def _tunnel(
    config: ConnectorConfig, *, task_status: trio.TaskStatus[Tunnel] = trio.TASK_STATUS_IGNORED
) -> None:
    stats = ConnectorStats()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_connector, config, stats=stats))
            task_status.started(Tunnel(config.tunnel, bound[0][1], stats, scope))


async def start_tunnel(
    nursery: trio.Nursery,
    uuid: str,
    server_ctx: ssl.SSLContext,
    rules: list[IngressRule],
    **fields: Any,
) -> Tunnel:
    config = ConnectorConfig(
        tunnel=uuid, replica=uuid[:4], ingress=tuple(rules), ssl_context=server_ctx, **fields
    )
    tunnel: Tunnel = await nursery.start(_tunnel, config)
    return tunnel


def lb_config(tunnels: list[Tunnel], ca: Path) -> str:
    """One pool of both tunnels, cookie affinity, a monitor on the ``/healthz`` route."""
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "tunnel",
                    "type": "https",
                    "path": "/healthz",
                    "interval": 1,
                    "timeout": 2,  # slow is not dead on a loaded machine; refused still is
                    "retries": 1,
                    "header": {"Host": [APP]},
                }
            ],
            "pools": [
                {
                    "name": "ssh",
                    "monitor": "tunnel",
                    "origins": [
                        {
                            "name": f"tunnel-{t.uuid[:2]}",
                            "address": f"{t.uuid}.cfargotunnel.com",
                            "header": {"Host": [APP]},
                        }
                        for t in tunnels
                    ],
                }
            ],
            "load_balancers": [
                {
                    "name": LB,
                    "proxied": True,
                    "default_pools": ["ssh"],
                    "fallback_pool": "ssh",
                    "session_affinity": "cookie",
                    # Without it a pinned session is not retried on a dead tunnel (R45).
                    "session_affinity_attributes": {"zero_downtime_failover": "temporary"},
                }
            ],
            "connect_to": {
                f"{t.uuid}.cfargotunnel.com:443": f"127.0.0.1:{t.port}" for t in tunnels
            },
            "engine": {
                "minimum_interval": 1,
                "listen": [{"address": "127.0.0.1", "port": 0}],
                "admin": "127.0.0.1:0",
                "upstream_ca": str(ca),
                "drain_timeout": 1,
            },
        }
    )


async def start_lb(nursery: trio.Nursery, path: Path) -> Running:
    running: Running = await nursery.start(
        lambda task_status: serve_lb(
            [str(path)], seed=7, handle_signals=False, task_status=task_status
        )
    )
    await wait_until(lambda: running.engine.ready)
    return running


async def start_access(
    nursery: trio.Nursery, hostname: str, via: str, **fields: Any
) -> tuple[int, AccessStats]:
    stats = AccessStats()
    config = AccessConfig(hostname=hostname, listen="127.0.0.1:0", via=via, **fields)
    _, port = await nursery.start(partial(serve_access, config, stats=stats))
    return port, stats


async def roundtrip(port: int, payload: bytes) -> bytes:
    """Connect to the access port, send ``payload``, half-close, read until EOF."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()

    async def reader() -> None:
        while data := await stream.receive_some(65536):
            received.extend(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await stream.send_all(payload)
            await stream.send_eof()
    finally:
        await trio.aclose_forcefully(stream)
    return bytes(received)


def certificates(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, Path]:
    """(connector server context, client context trusting it, CA file)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(APP, BASTION, "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    path = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return server, client, path


__all__ += ["certificates"]
