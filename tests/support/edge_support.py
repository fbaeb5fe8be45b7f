"""The rehearsal's edge stand-in in front of real connectors, one per replica, on loopback."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio
import trustme
from tls_support import contexts

from lb.connector import ConnectorConfig, IngressRule, serve_connector
from lb.connector.faults import Faults
from lb.rehearse.edge import Edge, Upstream
from lb.rehearse.stack import Stack
from lb.sim.scenario import Scenario


def control_stack(address: str, replicas: list[str]) -> Stack:
    """A stack with no processes, only the control names a driver posts faults to: the
    edge stand-in ``"edge"`` for ``address``, and each replica's connector by its name."""
    return Stack(
        proxy="",
        admin="",
        control={address: "edge"},
        anchor=0.0,
        config_path=Path(),
        raw_config={},
        log=Path(),
        replica_control={(address, name): name for name in replicas},
    )


async def edge_with_connectors(
    nursery: trio.Nursery,
    sc: Scenario,
    address: str,
    ca: trustme.CA,
    *,
    tunnel: str,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Edge, str, dict[str, Faults]]:
    """A connector for each replica of ``address`` (tunnel id ``tunnel``, ``hello_world``
    behind it) and the edge stand-in in front, all with faults read on ``clock``: (the
    edge, its ``host:port``, the faults by replica name and ``"edge"``)."""
    server, client = contexts(ca)
    faults: dict[str, Faults] = {}
    upstreams = []
    for replica in sc.replicas[address]:
        config = ConnectorConfig(
            tunnel=tunnel,
            ingress=(IngressRule(service="hello_world"),),
            replica=replica.name,
            ssl_context=server,
        )
        faults[replica.name] = Faults(clock)
        bound = await nursery.start(partial(serve_connector, config, faults=faults[replica.name]))
        upstreams.append(Upstream(replica, f"127.0.0.1:{bound[0][1]}"))
    edge = Edge(
        upstreams,
        sc.config.datacenters,
        server_context=server,
        client_context=client,
        rng=random.Random(1),
    )
    edge.faults = faults["edge"] = Faults(clock)
    at, _ = await nursery.start(edge.serve)
    return edge, at, faults
