"""The real run's report (``lb.rehearse.real``) credits replicas as the simulator does.

A ``status`` of the whole tunnel is the edge's own answer in the simulator, counted for no
replica, also once a later event of one replica has made the rehearsal hand it over from the
edge stand-in to the replicas' connectors.  Here the real edge stand-in and two real
connectors take the timeline's POSTs as :func:`lb.rehearse.drive._posts` sends them, on a
clock of scenario time, so each request's moment is exact; the report is then built from an
access log written for the answers the client got.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
import trustme
from edge_support import control_stack, edge_with_connectors
from tls_support import contexts

from lb.connector.faults import HANDED_HEADER
from lb.rehearse.drive import Handover, Sent, _posts, handovers
from lb.rehearse.real import real_report
from lb.sim.run import run_scenario
from lb.sim.scenario import NetEvent, Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = ROOT / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"
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


async def test_a_handed_over_tunnel_status_is_the_edges_own_in_both_reports(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sc = _scenario(tmp_path)
    _, latency, _, _, flap_handover = sc.events
    assert set(handovers(sc)) == {latency.index, flap_handover.index}
    now = [0.0]
    ca = trustme.CA()
    edge, at, faults = await edge_with_connectors(
        nursery, sc, ADDRESS, ca, tunnel=ADDRESS.split(".")[0], clock=lambda: now[0]
    )
    _, client_ctx = contexts(ca)
    stack = control_stack(ADDRESS, [r.name for r in sc.replicas[ADDRESS]])
    plans = handovers(sc)
    events = [e for e in sorted(sc.events, key=lambda e: e.at) if isinstance(e, NetEvent)]

    # (moment, status the client gets): FRA's users, whom the edge sends to host-fra
    requests = [
        (25.0, 503),  # the edge stand-in's own answer
        (30.0, 503),  # handed over at 30: the connector answers it, tagged
        (35.0, 503),
        (41.0, 200),
        (51.0, 200),  # the flap's up part (handed over at 50)
        (53.5, 502),  # its down part, on the connector, tagged
        (54.0, 200),
    ]
    sent: dict[str, Sent] = {}
    lines = []
    async with httpx.AsyncClient(verify=client_ctx, timeout=10) as client:
        for i, (moment, status) in enumerate(requests):
            now[0] = moment
            while events and events[0].at <= moment:
                e = events.pop(0)
                for url, body in _posts(stack, e, plans.get(e.index, Handover())):
                    faults[url].apply(body)
            rid = f"r{i}"
            headers = {"host": "app.example.com", "cf-ray": "1-FRA", "x-request-id": rid}
            r = await client.get(f"https://{at}/", headers=headers)
            assert (moment, r.status_code) == (moment, status)
            assert HANDED_HEADER.decode() not in r.headers  # stripped by the edge stand-in
            sent[rid] = Sent(moment, "FRA", r.status_code)
            line = {
                "event": "request",
                "request_id": rid,
                "mono": ANCHOR + moment + 0.05,
                "duration": 0.05,
                "attempts": ["app/shared"],
                "endpoint": "app/shared",
                "status": r.status_code,
            }
            lines.append(json.dumps(line))
    assert edge.answered == {
        "r3": "shared/host-fra",
        "r4": "shared/host-fra",
        "r6": "shared/host-fra",
    }
    log = tmp_path / "lb.log"
    log.write_text("\n".join(lines) + "\n")
    report = real_report(sc, sent, log, ANCHOR, replicas=edge.answered).data
    counted = {w["start"]: w["by_replica"] for w in report["windows"] if w["requests"]}
    assert counted == {
        20.0: {},
        30.0: {},
        40.0: {"shared/host-fra": 1},
        50.0: {"shared/host-fra": 2},
    }


def test_the_simulator_counts_the_tunnels_status_for_no_replica(tmp_path: Path) -> None:
    """The simulator's own count of the same timeline: no replica while the status holds."""
    data = run_scenario(_scenario(tmp_path)).data
    for w in data["windows"]:
        if w["start"] in (20.0, 30.0):
            assert w["by_replica"] == {}, w
        if w["start"] == 40.0:
            assert w["by_replica"], w
