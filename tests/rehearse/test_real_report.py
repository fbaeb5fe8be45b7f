"""The real run's report (``lb.rehearse.real``) credits replicas as the simulator does.

A ``status`` of the whole tunnel is the edge's own answer in the simulator, counted for no
replica, also once a later event of one replica has made the rehearsal hand it over from the
edge stand-in to the replicas' connectors (which then answer it, and the edge stand-in
records the request under the replica it forwarded to).  The report is built here from a
hand-written access log and answered map, so each request's moment is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from lb.rehearse.drive import Sent, edge_statuses, handovers
from lb.rehearse.real import real_report
from lb.sim.run import run_scenario
from lb.sim.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = ROOT / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
TIMELINE = """timeline:
  - {at: 20, tunnel: shared, do: status, status: 503}
  - {at: 30, replica: shared/host-fra, do: latency, latency: 0.2}
  - {at: 40, tunnel: shared, do: recover}
  - {at: 45, tunnel: shared, do: flap, period: 4, down_for: 1, how: status, status: 502}
  - {at: 50, replica: shared/host-iad, do: latency, latency: 0.1}"""
ANCHOR = 1000.0


def _scenario(tmp_path: Path) -> Scenario:
    path = tmp_path / "replicas.yaml"
    path.write_text(REPLICAS.read_text().replace("timeline: []", TIMELINE))
    return load_scenario(path)


def test_a_handed_over_tunnel_status_is_the_edges_own_in_both_reports(tmp_path: Path) -> None:
    sc = _scenario(tmp_path)
    _, latency, _, _, flap_handover = sc.events
    assert set(handovers(sc)) == {latency.index, flap_handover.index}
    # the 503 is on both connectors from 30 to 40; the flap's down parts from 50 (its phase
    # from 45: down [49, 50) is still the edge's, [53, 54), [57, 58) the connectors')
    both = [(30.0, 40.0), (53.0, 54.0), (57.0, 58.0)]
    assert edge_statuses(sc) == {"shared/host-fra": both, "shared/host-iad": both}

    # (moment, replica the edge stand-in recorded, status the client got)
    requests = [
        (25.0, None, 503),  # the edge stand-in's own answer: it records no replica
        (30.0, "shared/host-fra", 503),  # handed over at 30: the connector answers it
        (35.0, "shared/host-iad", 503),
        (41.0, "shared/host-fra", 200),
        (51.0, "shared/host-iad", 200),  # the flap's up part
        (53.5, "shared/host-fra", 502),  # its down part, on the connector
        (54.0, "shared/host-fra", 200),
    ]
    sent: dict[str, Sent] = {}
    answered: dict[str, str] = {}
    lines = []
    for i, (at, replica, status) in enumerate(requests):
        rid = f"r{i}"
        sent[rid] = Sent(at, "FRA", status)
        if replica is not None:
            answered[rid] = replica
        line = {
            "event": "request",
            "request_id": rid,
            "mono": ANCHOR + at + 0.05,
            "duration": 0.05,
            "attempts": ["app/shared"],
            "endpoint": "app/shared",
            "status": status,
        }
        lines.append(json.dumps(line))
    log = tmp_path / "lb.log"
    log.write_text("\n".join(lines) + "\n")
    report = real_report(sc, sent, log, ANCHOR, replicas=answered).data
    counted = {w["start"]: w["by_replica"] for w in report["windows"] if w["requests"]}
    assert counted == {
        20.0: {},
        30.0: {},
        40.0: {"shared/host-fra": 1},
        50.0: {"shared/host-iad": 1, "shared/host-fra": 1},
    }

    # The simulator's own count of the same timeline: no replica while the status holds.
    data = run_scenario(sc).data
    for w in data["windows"]:
        if w["start"] in (20.0, 30.0):
            assert w["by_replica"] == {}, w
        if w["start"] == 40.0:
            assert w["by_replica"], w
