"""``by_replica`` counts the attempts a replica answered, as the rehearsal measures it.

The rehearsal's edge stand-in (lb/rehearse/edge.py) counts a request under a replica when a
whole response came through it.  The edge's own answers (no usable replica: 521-523 or 530;
a fault of the whole tunnel at the edge layer) and a replica that resets or cuts its
response count for no replica; the simulator counts the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim_builders import TUNNEL_B, scenario

from lb.sim import run_scenario
from lb.sim.network import Answer, Network

BASE = """\
config: lb.yaml
duration: 60
seed: 2
report_interval: 1
traffic:
  FRA: {rate: 100, clients: 200}
"""


def _windows(data: dict[str, Any], a: float, b: float) -> list[dict[str, Any]]:
    return [w for w in data["windows"] if a <= w["start"] < b]


def test_a_refused_connection_counts_for_no_replica(tmp_path: Path) -> None:
    """ta refuses from 20 s to 40 s: the edge answers 521 without a replica, the proxy
    retries to b, and each request is one answer through one replica, b's."""
    timeline = "timeline:\n  - {at: 20, tunnel: ta, do: refuse, until: 40}\n"
    data = run_scenario(scenario(tmp_path, BASE + timeline)).data
    assert data["retries"] > 0 and data["errors"] == 0
    for w in data["windows"]:
        assert sum(w["by_replica"].values()) == w["requests"], w
    for w in _windows(data, 20, 40):
        assert "ta/r1" not in w["by_replica"] and "ta/r2" not in w["by_replica"], w


def test_the_edges_own_status_counts_for_no_replica_a_replicas_does(tmp_path: Path) -> None:
    """A 503 of the whole tunnel at the edge layer is the edge's answer (the rehearsal's edge
    stand-in answers it itself); a 503 of one replica comes through that replica."""
    timeline = (
        "timeline:\n"
        "  - {at: 20, tunnel: ta, do: status, status: 503, until: 30}\n"
        "  - {at: 40, replica: ta/r1, do: status, status: 503, until: 50}\n"
    )
    data = run_scenario(scenario(tmp_path, BASE + timeline)).data
    edge = [w for w in _windows(data, 20, 30) if w["by_endpoint"].get("main/a")]
    assert edge, "a keeps some traffic before its monitor sees the 503"
    for w in edge:
        assert w["errors_by_endpoint"]["main/a"] == w["by_endpoint"]["main/a"]
        assert "ta/r1" not in w["by_replica"], w
    own = [w for w in _windows(data, 40, 50) if w["by_endpoint"].get("main/a")]
    assert own
    for w in own:  # FRA's users reach ta through its FRA replica, r1 (local preference)
        assert w["by_replica"]["ta/r1"] == w["by_endpoint"]["main/a"], w


def test_a_reset_before_the_answer_counts_for_no_replica(tmp_path: Path) -> None:
    timeline = "timeline:\n  - {at: 20, replica: ta/r1, do: reset, until: 30}\n"
    data = run_scenario(scenario(tmp_path, BASE + timeline)).data
    reset = [w for w in _windows(data, 20, 30) if w["by_endpoint"].get("main/a")]
    assert reset
    for w in reset:
        assert w["errors_by_endpoint"]["main/a"] == w["by_endpoint"]["main/a"]
        assert "ta/r1" not in w["by_replica"], w


def test_a_replicas_status_on_a_one_replica_tunnel_is_still_the_replicas(
    tmp_path: Path,
) -> None:
    """tb has one replica: ``replica: tb/r1`` names every replica of it, and is still that
    replica's answer (through it, counted for it), while ``tunnel: tb`` is the edge's own,
    counted for no replica.  The target says which, not the number of replicas."""
    timeline = (
        "timeline:\n"
        "  - {at: 20, tunnel: tb, do: status, status: 503, until: 30}\n"
        "  - {at: 40, replica: tb/r1, do: status, status: 503, until: 50}\n"
    )
    sc = scenario(tmp_path, BASE + timeline)
    network = Network(sc)
    address = f"{TUNNEL_B}.cfargotunnel.com"

    def at(t: float) -> tuple[Answer, ...]:
        return network.answers(address, ("FRA",), "FRA", "app.example.com", "/", t, user=True)

    assert [(a.replica, a.status, a.through) for a in at(25)] == [("tb/r1", 503, False)]
    assert [(a.replica, a.status, a.through) for a in at(45)] == [("tb/r1", 503, True)]
    data = run_scenario(sc).data
    own = [w for w in _windows(data, 40, 50) if w["by_endpoint"].get("main/b")]
    assert own, "b keeps some traffic before its monitor sees the 503"
    for w in own:
        assert w["by_replica"]["tb/r1"] == w["by_endpoint"]["main/b"], w
    for w in _windows(data, 20, 30):
        assert "tb/r1" not in w["by_replica"], w
