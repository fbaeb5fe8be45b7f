"""Keeping what the network answers across snapshots changes no report.

The traffic of a data center keeps each address's answers until the network's next change,
not dropped with the cached outcomes at every new snapshot (lb/sim/traffic.py,
``DatacenterTraffic.invalidate``).  A flapping origin behind passive health gives both kinds
of change many times: the flap's toggles (the network) and the ejections and returns (new
snapshots).  Forcing the answers out at every snapshot must give the same report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.sim import load_scenario, run_scenario
from lb.sim.traffic import DatacenterTraffic

ROOT = Path(__file__).resolve().parents[2] / "configs" / "scenarios"
OUTAGE = "  - {at: 30, origin: primary, do: refuse, until: 90}\n"
FLAP = "  - {at: 30, origin: primary, do: flap, period: 7, down_for: 3, how: refuse}\n"


def test_answers_kept_across_snapshots_match_answers_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "passive-health.yaml").read_text()
    assert OUTAGE in text
    path = tmp_path / "flap-eject.yaml"
    path.write_text(text.replace(OUTAGE, FLAP))
    kept = run_scenario(load_scenario(path))

    forced: list[bool] = []
    original = DatacenterTraffic.invalidate

    def always(self: DatacenterTraffic, *, network: bool = True) -> None:
        forced.append(network)
        original(self, network=True)

    monkeypatch.setattr(DatacenterTraffic, "invalidate", always)
    dropped = run_scenario(load_scenario(path))
    # the kept answers were exercised: some snapshots came without a network change
    assert False in forced
    assert dropped.to_json() == kept.to_json()
    # and the scenario is what it claims: real traffic ejected the flapping origin, twice
    ejections = [
        tr
        for tr in kept.data["transitions"]
        if tr["vantage"] == "passive" and tr["to"] == "unhealthy"
    ]
    assert len(ejections) >= 2, kept.data["transitions"]
