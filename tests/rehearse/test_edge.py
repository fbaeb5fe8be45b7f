"""The edge stand-in's replica choice is the simulator's (lb.sim.network), asked the same way."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import pytest

from lb.rehearse.edge import Edge, Upstream
from lb.sim.network import Network
from lb.sim.scenario import Scenario, load_scenario

SCENARIO = (
    Path(__file__).resolve().parents[2] / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
)
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario(SCENARIO)


def _edge(sc: Scenario) -> Edge:
    upstreams = [Upstream(r, f"127.0.0.1:{4000 + i}") for i, r in enumerate(sc.replicas[ADDRESS])]
    context = ssl.create_default_context()
    return Edge(
        upstreams,
        sc.config.datacenters,
        server_context=context,
        client_context=context,
        rng=random.Random(1),
    )


def _picks(edge: Edge, dc: str, failed: set[str]) -> set[str]:
    out = set()
    for _ in range(50):
        up = edge.choose(dc, failed)
        out.add("" if up is None else str(up.replica.label))
    return out


@pytest.mark.parametrize("dc", ["FRA", "IAD", "CDG", "SJC", "SYD", ""])
def test_the_edge_picks_the_replicas_the_simulator_picks(scenario: Scenario, dc: str) -> None:
    """Local first, else the nearest (CDG is near FRA, SJC near IAD), else any."""
    expected = {a.replica for a in Network(scenario).answers(ADDRESS, (dc,), dc, "h", "/", 0.0)}
    assert _picks(_edge(scenario), dc, set()) == expected


def test_a_failed_replica_is_passed_over_then_none_is_left(scenario: Scenario) -> None:
    edge = _edge(scenario)
    assert _picks(edge, "FRA", {"host-fra"}) == {"shared/host-iad"}
    assert _picks(edge, "FRA", {"host-fra", "host-iad"}) == {""}


def test_requests_without_a_data_center_go_round_robin(scenario: Scenario) -> None:
    edge = _edge(scenario)
    names = [edge.choose("", set()) for _ in range(4)]
    assert [u.replica.name for u in names if u is not None] == [
        "host-iad",
        "host-fra",
        "host-iad",
        "host-fra",
    ]
