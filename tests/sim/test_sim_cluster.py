"""Simulated cluster members: the cluster's vote, expiry and sharding code in virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import scenario

from lb.config import ConfigError
from lb.sim import run_scenario

BASE = """\
config: lb.yaml
duration: 90
seed: 5
report_interval: 10
traffic:
  FRA: {rate: 50, clients: 100}
cluster:
  heartbeat: 1
  members:
    - {name: fra, datacenter: FRA}
    - {name: ams}
    - {name: sin}
"""


def aggregate(data: dict[str, object], to: str) -> list[dict[str, object]]:
    transitions = data["transitions"]
    assert isinstance(transitions, list)
    return [t for t in transitions if t["vantage"] == "*" and t["to"] == to]


def test_one_vantage_cut_off_is_outvoted_and_its_votes_reach_the_others(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: ta, do: partition, seen_from: [sin]}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    sin = [t for t in data["transitions"] if t["vantage"] == "sin" and t["to"] == "unhealthy"]
    assert sin  # sin's vote, seen on the observed member fra
    assert not aggregate(data, "unhealthy")
    assert data["errors"] == 0


def test_two_vantages_cut_off_turn_the_endpoint_unhealthy(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: ta, do: partition, seen_from: [sin, ams]}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    (down,) = aggregate(data, "unhealthy")
    assert 20 < down["at"] < 20 + 10 + 2 + 0.5  # one interval + timeout + a tick


def test_a_partitioned_member_does_not_pin_its_last_vote(tmp_path: Path) -> None:
    """sin votes unhealthy, then loses the store: its vote expires at fra (3 x 10 + 2 s)
    and the majority of the remaining two decides."""
    body = BASE + (
        "timeline:\n"
        "  - {at: 20, tunnel: ta, do: partition, seen_from: [sin, ams]}\n"
        "  - {at: 35, member: sin, do: partition}\n"
    )
    data = run_scenario(scenario(tmp_path, body)).data
    (down,) = aggregate(data, "unhealthy")
    # fra healthy, ams unhealthy, sin's unhealthy vote gone: a tie, still unhealthy, but
    # sin left fra's view of the endpoint
    gone = [
        t
        for t in data["transitions"]
        if t["vantage"] == "sin" and t["to"] == "unknown" and t["endpoint"] == "a"
    ]
    # its last vote came before 35 s; it counts 32 s (+ the once-a-second sweep, a tick)
    assert gone and 35 < gone[0]["at"] <= 35 + 32 + 1.2
    assert down["at"] < gone[0]["at"]


def test_a_killed_member_of_a_shared_vantage_hands_its_probes_over(tmp_path: Path) -> None:
    body = """\
    config: lb.yaml
    duration: 120
    seed: 3
    report_interval: 10
    traffic:
      FRA: {rate: 20, clients: 50}
    cluster:
      heartbeat: 1
      members:
        - {name: a, vantage: fra, datacenter: FRA}
        - {name: b, vantage: fra}
    timeline:
      - {at: 30, member: b, do: kill}
      - {at: 60, tunnel: ta, do: refuse}
    """
    data = run_scenario(scenario(tmp_path, body)).data
    # b owns main/a (rendezvous over "fra/a#0", "fra/b#0"); after b died, a probes it too
    (down,) = aggregate(data, "unhealthy")
    assert 60 < down["at"] < 60 + 10 + 0.5
    # two endpoints, one vantage point: probes per interval stay two, shared or not
    assert data["probes"] <= 2 * 120 / 10 + 4


def test_same_seed_same_report(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, member: ams, do: kill, until: 50}\n"
    one = run_scenario(scenario(tmp_path, body)).to_json()
    two = run_scenario(scenario(tmp_path, body)).to_json()
    assert one == two


def test_member_events_are_checked(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, member: paris, do: kill}\n"
    with pytest.raises(ConfigError, match="unknown member 'paris'"):
        scenario(tmp_path, body)
    body = BASE + "timeline:\n  - {at: 20, member: ams, do: blackhole}\n"
    with pytest.raises(ConfigError, match="killed, partitioned"):
        scenario(tmp_path, body)
