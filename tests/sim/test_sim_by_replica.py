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


def test_a_connection_already_open_gets_what_a_new_request_gets(tmp_path: Path) -> None:
    """``Network.replica_answer`` (a long-lived session's replica, :mod:`lb.sim.sessions`)
    and ``Network.answers`` (a new request) follow one rule for every event: a 503 of the
    whole tunnel is the edge's own whichever of the two asks, and a replica's own fault is
    that replica's.  Compared answer for answer, replica by replica, at every instant."""
    timeline = (
        "timeline:\n"
        "  - {at: 10, tunnel: ta, do: status, status: 503, until: 20}\n"
        "  - {at: 15, replica: ta/r1, do: latency, latency: 0.2, until: 25}\n"
        "  - {at: 30, replica: ta/r2, do: status, status: 500, until: 40}\n"
        "  - {at: 35, tunnel: ta, do: flap, period: 2, down_for: 1, how: status, status: 502,"
        " until: 45}\n"
        "  - {at: 50, tunnel: tb, do: status, status: 504, until: 55}\n"
        "  - {at: 52, origin: ta/r1, do: status, status: 429, until: 58}\n"
    )
    sc = scenario(tmp_path, BASE + timeline)
    network = Network(sc)
    seen: set[tuple[int, bool]] = set()
    for address, replicas in sc.replicas.items():
        for tenth in range(600):
            t = tenth / 10
            # no entry data center: every usable replica is a candidate, as for a probe
            answers = network.answers(address, ("FRA",), "", "app.example.com", "/", t)
            for r in replicas:
                new = [a for a in answers if a.replica == r.label]
                old = network.replica_answer(address, r.label, "FRA", "app.example.com", "/", t)
                assert old is not None and [old] == new, (t, r.label)
                seen.add((old.status, old.through))
    assert {(503, False), (502, False), (504, False), (500, True), (429, True)} <= seen
