"""The pure planning of a rehearsal's hand-overs (``lb.rehearse.drive``): which conditions
move between the edge stand-in and the replicas' connectors around each timeline event, in
what order the POSTs go, and which combinations are refused, for every order of a replica's
latency, the tunnel's latency and a recover of one replica or of the whole tunnel.  The
simulator's per-replica conditions (``lb.sim.network``) are the reference each case names.
Random timelines of every event the rehearsal takes then follow requests through the
stand-ins' own fault state (:class:`_Rehearsed`) and compare them with the simulator's
answers, and the replica each is counted for (``by_replica``), both ways: what is accepted
matches, what is refused differs.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from pathlib import Path

import pytest
from edge_support import control_stack

from lb.connector.faults import ORIGIN, ORIGIN_FAILED, FaultError, Faults
from lb.rehearse.drive import Handover, _posts, handovers, unrehearsable
from lb.rehearse.edge import NO_CONNECTOR
from lb.rehearse.stack import Stack
from lb.sim.network import Network, prefer_local
from lb.sim.scenario import NetEvent, Replica, Scenario, load_scenario
from lb.sim.spec import TimelineAction

REPLICAS = Path(__file__).resolve().parents[2] / "configs/scenarios/replicas-one-tunnel.yaml"
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"
FRA, IAD = "host-fra", "host-iad"


def _scenario(tmp_path: Path, *events: str, shape: str = "two replicas") -> Scenario:
    """replicas-one-tunnel with ``events``, in one of the :data:`_SHAPES`."""
    timeline = "".join(f"  - {e}\n" for e in events)
    text = REPLICAS.read_text().replace("timeline: []", f"timeline:\n{timeline}")
    for old, new in _SHAPES[shape]:
        assert text.count(old) == 1, old
        text = text.replace(old, old + new)
    path = tmp_path / "replicas.yaml"
    path.write_text(text)
    return load_scenario(path)


_IAD_REPLICA = "        - {name: host-iad, datacenters: [IAD]}\n"
_SHAPES: dict[str, tuple[tuple[str, str], ...]] = {
    "two replicas": (),
    "three replicas": ((_IAD_REPLICA, "        - {name: host-ams, datacenters: [AMS]}\n"),),
    "two tunnels": (
        (
            "          header: {Host: [app.example.com]}\n",
            "        - name: other\n"
            "          address: 44444444-4444-4444-8444-444444444444.cfargotunnel.com\n"
            "          header: {Host: [app.example.com]}\n",
        ),
        (
            _IAD_REPLICA,
            "    44444444-4444-4444-8444-444444444444:\n"
            "      name: other\n"
            "      replicas:\n"
            "        - {name: host-fra, datacenters: [FRA]}\n"
            "        - {name: host-ams, datacenters: [AMS]}\n",
        ),
    ),
}
"""What is added to replicas-one-tunnel (after the text it follows): with an AMS replica, a
user entering at FRA whose replica fails goes to the nearest other (AMS), and a fault
handed over stays on two connectors; with a second tunnel in the pool, each tunnel keeps
its own stand-ins and steps."""


def _latency(sc: Scenario, replica: str, t: float) -> float:
    """The latency the simulator adds to ``replica``'s answers at ``t``."""
    network = Network(sc)
    answer = network.replica_answer(ADDRESS, f"shared/{replica}", "FRA", "app.example.com", "/", t)
    assert answer is not None
    return round(answer.latency - network.rtt, 6)


def _plan(sc: Scenario) -> list[tuple[str, Handover]]:
    named = {e.index: e.label for e in sc.events}
    return [(named[i], plan) for i, plan in sorted(handovers(sc).items())]


def _sent(sc: Scenario) -> list[list[tuple[str, dict[str, object]]]]:
    """The POSTs of every event, in order."""
    plans, stack = handovers(sc), control_stack(ADDRESS, [FRA, IAD])
    return [_posts(stack, e, plans.get(e.index, Handover())) for e in sc.events]


def test_a_tunnel_latency_clears_a_replicas_own_before_setting_the_edges(tmp_path: Path) -> None:
    """A request between the two POSTs pays less than either latency, never their sum."""
    sc = _scenario(
        tmp_path,
        "{at: 20, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 30, tunnel: shared, do: latency, latency: 0.5}",
    )
    assert (_latency(sc, FRA, 25), _latency(sc, FRA, 35), _latency(sc, IAD, 35)) == (0.3, 0.5, 0.5)
    first, tunnel = sc.events
    assert _plan(sc) == [(tunnel.label, Handover(slow=((FRA, first),)))]
    assert _sent(sc)[1] == [
        (FRA, {"do": "latency", "latency": 0.0}),  # the old one cleared first: never both
        ("edge", {"do": "latency", "latency": 0.5}),
    ]
    assert unrehearsable(sc) == []


def test_a_replica_latency_after_the_tunnels_takes_the_tunnels_over(tmp_path: Path) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 20, tunnel: shared, do: latency, latency: 0.5}",
        "{at: 30, replica: shared/host-fra, do: latency, latency: 0.3}",
    )
    assert (_latency(sc, FRA, 35), _latency(sc, IAD, 35)) == (0.3, 0.5)
    tunnel, replica = sc.events
    assert _plan(sc) == [(replica.label, Handover(held=(tunnel,)))]
    assert _sent(sc)[1] == [
        ("edge", {"do": "recover"}),  # only latencies move: taken away first, never both
        (FRA, {"do": "latency", "latency": 0.5}),
        (IAD, {"do": "latency", "latency": 0.5}),
        (FRA, {"do": "latency", "latency": 0.3}),
    ]
    assert unrehearsable(sc) == []


def test_recovering_one_replica_under_both_latencies_keeps_the_tunnels_on_the_other(
    tmp_path: Path,
) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 20, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 30, tunnel: shared, do: latency, latency: 0.5}",
        "{at: 40, replica: shared/host-fra, do: recover}",
    )
    assert (_latency(sc, FRA, 45), _latency(sc, IAD, 45)) == (0.0, 0.5)
    first, tunnel, recover = sc.events
    assert _plan(sc) == [
        (tunnel.label, Handover(slow=((FRA, first),))),
        (recover.label, Handover(held=(tunnel,))),
    ]
    assert _sent(sc)[2] == [
        ("edge", {"do": "recover"}),
        (IAD, {"do": "latency", "latency": 0.5}),
        (FRA, {"do": "recover"}),
    ]
    assert unrehearsable(sc) == []


def test_a_tunnel_recover_clears_every_latency_wherever_held(tmp_path: Path) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 20, tunnel: shared, do: latency, latency: 0.5}",
        "{at: 30, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 40, tunnel: shared, do: recover}",
        "{at: 50, replica: shared/host-iad, do: latency, latency: 0.2}",
        "{at: 55, tunnel: shared, do: latency, latency: 0.4}",
    )
    assert (_latency(sc, FRA, 45), _latency(sc, IAD, 45)) == (0.0, 0.0)
    assert (_latency(sc, FRA, 57), _latency(sc, IAD, 57)) == (0.4, 0.4)
    tunnel, replica, _, iad, last = sc.events
    assert _plan(sc) == [
        (replica.label, Handover(held=(tunnel,))),
        (last.label, Handover(slow=((IAD, iad),))),  # what came before the recover is gone
    ]
    assert _sent(sc)[2] == [
        (FRA, {"do": "recover"}),
        (IAD, {"do": "recover"}),
        ("edge", {"do": "recover"}),
    ]
    assert unrehearsable(sc) == []


def test_a_tunnel_recover_clears_the_connectors_before_the_edge(tmp_path: Path) -> None:
    """The edge's 500 hides the FRA connector's 503 until it goes; cleared first, it would
    leave that 503 showing for a few milliseconds where the simulator has no fault."""
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: status, status: 503}",
        "{at: 20, tunnel: shared, do: status, status: 500}",
        "{at: 30, tunnel: shared, do: recover}",
    )
    assert (_answer(sc, FRA, 25), _answer(sc, FRA, 35)) == (500, 200)
    assert _sent(sc)[2] == [
        (FRA, {"do": "recover"}),
        (IAD, {"do": "recover"}),
        ("edge", {"do": "recover"}),
    ]
    assert unrehearsable(sc) == []


def test_a_tunnel_latency_after_a_hand_over_replaces_every_connectors(tmp_path: Path) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 20, tunnel: shared, do: latency, latency: 0.5}",
        "{at: 30, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 40, tunnel: shared, do: latency, latency: 0.1}",
    )
    assert (_latency(sc, FRA, 45), _latency(sc, IAD, 45)) == (0.1, 0.1)
    tunnel, replica, last = sc.events
    assert _plan(sc)[1] == (last.label, Handover(slow=((FRA, replica), (IAD, tunnel))))
    assert _sent(sc)[2] == [
        (FRA, {"do": "latency", "latency": 0.0}),
        (IAD, {"do": "latency", "latency": 0.0}),
        ("edge", {"do": "latency", "latency": 0.1}),
    ]
    assert unrehearsable(sc) == []


def test_a_tunnel_answer_that_would_skip_a_replicas_latency_is_refused(tmp_path: Path) -> None:
    """The edge stand-in answers a status of the whole tunnel itself: the FRA replica's
    latency, which the simulator adds to that answer, would not be paid.  A refusal or a
    hang of the whole tunnel reaches no replica on either side, so it is rehearsed."""
    sc = _scenario(
        tmp_path,
        "{at: 20, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 30, tunnel: shared, do: status, status: 503}",
        "{at: 35, tunnel: shared, do: refuse}",
        "{at: 40, tunnel: shared, do: flap, period: 10, how: down}",
    )
    assert _plan(sc) == []  # a tunnel-wide fault moves nothing
    assert unrehearsable(sc) == [
        "status tunnel shared: the edge stand-in answers it itself, without reaching a "
        "replica, so the latency held by the connector of shared/host-fra (latency replica "
        "shared/host-fra) would not be paid, where the simulator adds it to that replica's "
        "answer",
        "flap tunnel shared: the edge stand-in answers it itself, without reaching a "
        "replica, so the latency held by the connector of shared/host-fra (latency replica "
        "shared/host-fra) would not be paid, where the simulator adds it to that replica's "
        "answer",
    ]


def test_a_hand_over_of_a_fault_sets_it_on_the_connectors_before_clearing_the_edge(
    tmp_path: Path,
) -> None:
    """No replica is ever without its fault: the connectors take it before the edge lets go."""
    sc = _scenario(
        tmp_path,
        "{at: 20, tunnel: shared, do: status, status: 503}",
        "{at: 30, replica: shared/host-fra, do: recover}",
    )
    assert _sent(sc)[1] == [
        (IAD, {"do": "status", "status": 503, "handed": True}),
        ("edge", {"do": "recover"}),
        (FRA, {"do": "recover"}),
    ]
    assert unrehearsable(sc) == []


def _through(sc: Scenario, replica: str, t: float) -> bool:
    """Whether the simulator counts a user's answer through ``replica`` at ``t`` for it."""
    answers = Network(sc).answers(ADDRESS, ("FRA",), "FRA", "app.example.com", "/", t)
    (answer,) = [a for a in answers if a.replica == f"shared/{replica}"]
    return answer.through


def test_a_status_is_the_edges_own_by_its_target_kind_tunnel_or_replica(
    tmp_path: Path,
) -> None:
    """``tunnel:`` is the whole tunnel: its status is the edge stand-in's own, as the
    simulator's is the edge's (counted for no replica); the same status of ``replica:`` is
    that replica's on both sides.  (``tunnel: TUNNEL/REPLICA``, which would mean either, is
    refused by the scenario loader: ``tests/sim/test_sim_scenario_errors.py``.)"""
    sc = _scenario(tmp_path, "{at: 20, tunnel: shared, do: status, status: 503}")
    assert not _through(sc, FRA, 25)
    assert _sent(sc) == [[("edge", {"do": "status", "status": 503})]]
    assert unrehearsable(sc) == []
    sc = _scenario(tmp_path, "{at: 20, replica: shared/host-fra, do: status, status: 503}")
    assert _through(sc, FRA, 25)
    assert _sent(sc) == [[(FRA, {"do": "status", "status": 503})]]
    assert unrehearsable(sc) == []


def _answer(sc: Scenario, replica: str, t: float) -> int:
    """The status the simulator gives a request through ``replica`` at ``t``."""
    answer = Network(sc).replica_answer(
        ADDRESS, f"shared/{replica}", "FRA", "app.example.com", "/", t
    )
    assert answer is not None
    return answer.status


def test_a_tunnel_flap_over_a_replicas_own_fault_is_refused(tmp_path: Path) -> None:
    """The simulator's flap of the whole tunnel replaces the FRA replica's 503 (it answers
    200 in the flap's up part); the FRA connector would keep its 503 behind the edge."""
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: status, status: 503}",
        "{at: 20, tunnel: shared, do: flap, period: 10, down_for: 2, how: status, status: 500}",
    )
    assert (_answer(sc, FRA, 15), _answer(sc, FRA, 21), _answer(sc, FRA, 25)) == (503, 500, 200)
    assert unrehearsable(sc) == [
        "flap tunnel shared: the connector of shared/host-fra (status replica shared/host-fra) "
        "would keep that fault, where the simulator's flap of every replica replaces it (the "
        "replica answers in the flap's up part, when the edge stand-in forwards to that "
        "connector)"
    ]


def test_a_refusal_names_the_replica_of_its_own_tunnel(tmp_path: Path) -> None:
    """Two tunnels whose replicas share names: the refusal names the flapping tunnel's."""
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: status, status: 503}",
        "{at: 20, tunnel: shared, do: flap, period: 10, down_for: 2, how: status, status: 500}",
        shape="two tunnels",
    )
    assert [r.split(" would")[0] for r in unrehearsable(sc)] == [
        "flap tunnel shared: the connector of shared/host-fra (status replica shared/host-fra)"
    ]


def test_a_replicas_fault_gone_before_a_tunnel_flap_is_rehearsed(tmp_path: Path) -> None:
    """A recover of that replica, or of the whole tunnel, leaves its connector without a
    fault of its own."""
    for gone in (
        "{at: 15, replica: shared/host-fra, do: recover}",
        "{at: 15, tunnel: shared, do: recover}",
    ):
        sc = _scenario(
            tmp_path,
            "{at: 10, replica: shared/host-fra, do: reset}",
            gone,
            "{at: 20, tunnel: shared, do: flap, period: 10, down_for: 2, how: refuse}",
        )
        assert unrehearsable(sc) == [], gone


def test_every_replica_refusing_one_at_a_time_is_refused(tmp_path: Path) -> None:
    """The simulator gives a refused connection (521) once no replica takes one; the edge
    stand-in, refused by every connector, would answer 530."""
    sc = _scenario(
        tmp_path,
        "{at: 10, tunnel: shared, do: refuse}",
        "{at: 20, replica: shared/host-fra, do: recover}",
        "{at: 30, replica: shared/host-fra, do: refuse}",
    )
    assert Network(sc).answers(ADDRESS, ("FRA",), "FRA", "app.example.com", "/", 35)[0].status == (
        521
    )
    assert unrehearsable(sc) == [
        "refuse replica shared/host-fra: every replica's connector would then refuse "
        "(shared/host-fra (refuse replica shared/host-fra), shared/host-iad (refuse tunnel "
        "shared)), and the edge stand-in answers 530 when no replica takes a connection, "
        "where the simulator shows a refused one"
    ]
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: refuse}",
        "{at: 20, replica: shared/host-iad, do: refuse}",
        "{at: 30, tunnel: shared, do: status, status: 503}",
    )
    assert unrehearsable(sc) == [
        "refuse replica shared/host-iad: every replica's connector would then refuse "
        "(shared/host-fra (refuse replica shared/host-fra), shared/host-iad (refuse replica "
        "shared/host-iad)), and the edge stand-in answers 530 when no replica takes a "
        "connection, where the simulator shows a refused one"
    ]  # from 30 s the edge stand-in answers 503 itself, as the simulator's replicas do


def test_a_hand_over_of_latencies_only_does_not_hold_back_a_tunnel_fault(tmp_path: Path) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 10, tunnel: shared, do: latency, latency: 0.5}",
        "{at: 20, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 30, tunnel: shared, do: latency, latency: 0.2}",
        "{at: 40, tunnel: shared, do: status, status: 503}",
    )
    assert unrehearsable(sc) == []


def test_a_tunnel_fault_after_a_hand_over_of_a_fault_is_rehearsed(tmp_path: Path) -> None:
    """From 20 s the IAD connector holds the 503 handed over; the edge stand-in answers the
    500 of 30 s itself, so that 503 is not reached, as the simulator's 500 replaces it."""
    sc = _scenario(
        tmp_path,
        "{at: 10, tunnel: shared, do: status, status: 503}",
        "{at: 20, replica: shared/host-fra, do: recover}",
        "{at: 30, tunnel: shared, do: status, status: 500}",
    )
    assert (_answer(sc, FRA, 25), _answer(sc, IAD, 25)) == (200, 503)
    assert (_answer(sc, FRA, 35), _answer(sc, IAD, 35)) == (500, 500)
    assert unrehearsable(sc) == []


def test_every_replica_refusing_is_refused_once_where_it_starts(tmp_path: Path) -> None:
    """The later latency of the FRA replica changes nothing about the refusals."""
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: refuse}",
        "{at: 20, replica: shared/host-iad, do: refuse}",
        "{at: 30, replica: shared/host-fra, do: latency, latency: 0.1}",
    )
    assert unrehearsable(sc) == [
        "refuse replica shared/host-iad: every replica's connector would then refuse "
        "(shared/host-fra (refuse replica shared/host-fra), shared/host-iad (refuse replica "
        "shared/host-iad)), and the edge stand-in answers 530 when no replica takes a "
        "connection, where the simulator shows a refused one"
    ]


def test_flaps_refusing_on_every_replica_are_refused_only_if_down_together(
    tmp_path: Path,
) -> None:
    """A flap refuses in its down parts only: flaps never down together leave the edge
    stand-in a replica to pass to, as the simulator's edge has."""
    apart = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: flap, period: 10, down_for: 2, how: refuse}",
        "{at: 15, replica: shared/host-iad, do: flap, period: 10, down_for: 2, how: refuse}",
    )
    assert [
        a.status
        for a in Network(apart).answers(ADDRESS, ("FRA",), "FRA", "app.example.com", "/", 16)
    ] == [200]
    assert unrehearsable(apart) == []
    together = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: flap, period: 10, down_for: 2, how: refuse}",
        "{at: 31, replica: shared/host-iad, do: flap, period: 10, down_for: 2, how: refuse}",
    )
    assert (
        Network(together).answers(ADDRESS, ("FRA",), "FRA", "app.example.com", "/", 31.5)[0].status
        == 521
    )
    assert unrehearsable(together) == [
        "flap replica shared/host-iad: every replica's connector can then refuse at once "
        "(shared/host-fra (flap replica shared/host-fra), shared/host-iad (flap replica "
        "shared/host-iad)), and the edge stand-in answers 530 when no replica takes a "
        "connection, where the simulator shows a refused one"
    ]


def test_an_edge_flap_that_makes_a_host_unreachable_is_refused(tmp_path: Path) -> None:
    """As a plain ``unreachable``: the stand-ins cannot fail a route (the connector refuses
    the POST, which stopped the rehearsal half-way)."""
    sc = _scenario(
        tmp_path,
        "{at: 10, tunnel: shared, do: flap, period: 10, down_for: 2, how: unreachable}",
        "{at: 20, replica: shared/host-fra, do: flap, period: 10, how: unreachable}",
    )
    assert unrehearsable(sc) == [
        "flap tunnel shared: unreachable needs a route that fails, not one loopback",
        "flap replica shared/host-fra: unreachable needs a route that fails, not one loopback",
    ]
    assert _differences(sc) == [
        "a stand-in refuses a POST: how: one of refuse, blackhole, down, status"
    ]


def test_an_unreachable_application_is_rehearsed_as_down_also_in_a_flap(tmp_path: Path) -> None:
    """The simulator answers 502 for an application that is unreachable or down; the
    connector shows an unreachable application as ``down``, also in a flap (the rehearsal
    sends the event as it is)."""
    sc = _scenario(
        tmp_path,
        "{at: 10, origin: shared, do: flap, period: 10, down_for: 2, how: unreachable}",
        "{at: 20, origin: shared/host-fra, do: unreachable}",
    )
    assert (_answer(sc, FRA, 10.5), _answer(sc, FRA, 15), _answer(sc, FRA, 25)) == (502, 200, 502)
    assert unrehearsable(sc) == []
    flap = {
        "do": "flap",
        "layer": "origin",
        "period": 10.0,
        "down_for": 2.0,
        "how": "unreachable",
        "since": 10.0,  # time 0 (the test stack's anchor, 0) plus the flap's time
    }
    unreachable = {"do": "unreachable", "layer": "origin"}
    assert _sent(sc) == [[(FRA, flap), (IAD, flap)], [(FRA, unreachable)]]
    assert _differences(sc) == []


def test_a_tunnel_flap_handed_over_at_any_time_keeps_its_phase(tmp_path: Path) -> None:
    """Every flap POST carries the flap's own start (``since``: time 0 plus its time in the
    timeline), so handed over half a period into its run (35 s), the connectors flap in
    the simulator's phase, not from the hand-over; and so does one handed over a whole
    number of periods later."""
    flap = "{at: 10, tunnel: shared, do: flap, period: 10, down_for: 2, how: status, status: 502}"
    body = {
        "do": "flap",
        "period": 10.0,
        "down_for": 2.0,
        "how": "status",
        "status": 502,
        "since": 10.0,
        "handed": True,
    }
    for at in (30, 35):
        sc = _scenario(
            tmp_path, flap, f"{{at: {at}, replica: shared/host-fra, do: latency, latency: 0.3}}"
        )
        assert unrehearsable(sc) == []
        assert _sent(sc)[1][:2] == [(FRA, body), (IAD, body)]
        assert _differences(sc) == []
    # Started when set instead, the handed flap would be down at 35-37 s, where the
    # simulator's replicas answer (its 40-42 s down part is the flap's own).
    assert (_answer(sc, FRA, 36), _answer(sc, FRA, 41)) == (200, 502)


def test_a_tunnel_flap_over_a_replica_fault_it_always_hides_is_rehearsed(tmp_path: Path) -> None:
    """The FRA connector's own flap refuses only within the tunnel flap's down parts, where
    the edge stand-in answers itself: it never shows, as in the simulator, whose tunnel flap
    replaced it.  One second longer, it would show in the up parts: refused."""
    tunnel = "{at: 20, tunnel: shared, do: flap, period: 10, down_for: 2, how: status, status: 502}"
    hidden = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: flap, period: 10, down_for: 2, how: refuse}",
        tunnel,
    )
    assert unrehearsable(hidden) == []
    assert _differences(hidden) == []
    longer = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: flap, period: 10, down_for: 3, how: refuse}",
        tunnel,
    )
    assert unrehearsable(longer) == [
        "flap tunnel shared: the connector of shared/host-fra (flap replica shared/host-fra) "
        "would keep that fault, where the simulator's flap of every replica replaces it (the "
        "replica answers in the flap's up part, when the edge stand-in forwards to that "
        "connector)"
    ]
    assert _differences(longer) != []


def test_a_tunnel_flap_showing_a_replica_fault_after_a_tunnel_latency_is_refused(
    tmp_path: Path,
) -> None:
    """The tunnel's flap outlives the tunnel-wide latency of 30 s: the IAD connector's own
    flap, hidden in the tunnel flap's down part at 20 s, shows in its up part at 30 s
    (504 where the simulator's IAD replica answers)."""
    sc = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-iad, do: flap, period: 10, down_for: 2, how: status, "
        "status: 504}",
        "{at: 20, tunnel: shared, do: flap, period: 6, down_for: 2, how: refuse}",
        "{at: 30, tunnel: shared, do: latency, latency: 0.5}",
    )
    assert (_answer(sc, IAD, 30.5), _answer(sc, IAD, 40.5)) == (200, 200)
    assert unrehearsable(sc) == [
        "flap tunnel shared: the connector of shared/host-iad (flap replica shared/host-iad) "
        "would keep that fault, where the simulator's flap of every replica replaces it (the "
        "replica answers in the flap's up part, when the edge stand-in forwards to that "
        "connector)"
    ]
    assert _differences(sc)[0].startswith(
        "31.0s 33333333 IAD: [('shared/host-iad', 504, '', 0.5, 'shared/host-iad')]"
    )


def test_a_tunnel_down_skips_only_the_latency_the_simulators_530_pays(tmp_path: Path) -> None:
    """With every replica down, the simulator's 530 is the answer of the tunnel's first
    replica (FRA), with its latency: the IAD connector's latency is paid on neither side."""
    iad = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-iad, do: latency, latency: 0.5}",
        "{at: 20, tunnel: shared, do: down}",
    )
    assert unrehearsable(iad) == []
    assert _differences(iad) == []
    fra = _scenario(
        tmp_path,
        "{at: 10, replica: shared/host-fra, do: latency, latency: 0.5}",
        "{at: 20, tunnel: shared, do: down}",
    )
    assert unrehearsable(fra) == [
        "down tunnel shared: the edge stand-in answers it itself, without reaching a replica, "
        "so the latency held by the connector of shared/host-fra (latency replica "
        "shared/host-fra) would not be paid, where the simulator adds it to that replica's "
        "answer"
    ]
    assert _differences(fra) != []


_EVENTS = (
    "do: status, status: 503",
    "do: status, status: 500",
    "do: refuse",
    "do: blackhole",
    "do: down",
    "do: reset",
    "do: truncate",
    "do: unreachable",
    "do: latency, latency: 0.3",
    "do: latency, latency: 0.5",
    "do: recover",
    "do: flap, period: 10, down_for: 2, how: status, status: 504",
    "do: flap, period: 10, down_for: 2, how: refuse",
    "do: flap, period: 6, down_for: 2, how: refuse",
    "do: flap, period: 10, down_for: 3, how: blackhole",
    "do: flap, period: 6, down_for: 2, how: down",
    "do: flap, period: 10, down_for: 2, how: unreachable",
)


def _tunnels(sc: Scenario) -> dict[str, tuple[Replica, ...]]:
    """The tunnels with several replicas (an edge stand-in each), by address."""
    return {a: rs for a, rs in sc.replicas.items() if len(rs) > 1}


def _who(sc: Scenario) -> list[str]:
    """The targets of random events: each tunnel, each replica, the application of each."""
    out: list[str] = []
    for rs in _tunnels(sc).values():
        labels = [r.label or r.name for r in rs]
        tunnel = labels[0].partition("/")[0]
        out += [f"tunnel: {tunnel}", *(f"replica: {x}" for x in labels)]
        out += [f"origin: {tunnel}", *(f"origin: {x}" for x in labels)]
    return out


HOST = "app.example.com"
_REFUSED = {
    *(
        (kind, f"do: {what}")
        for kind in ("tunnel", "replica")
        for what in ("unreachable", "flap, period: 10, down_for: 2, how: unreachable")
    ),
    *(
        ("replica", f"do: {what}")
        for what in (
            "blackhole",
            "down",
            "flap, period: 10, down_for: 3, how: blackhole",
            "flap, period: 6, down_for: 2, how: down",
        )
    ),
}
"""The (target, event) pairs every timeline is refused with (:func:`unrehearsable`)."""

Shown = tuple[str | None, int, str, float, str | None]
"""What one attempt gets: the replica that gave it (None when no replica could: a refused or
hung tunnel, no replica left), its status (0: none), how it failed ("" for an answer; a
refused connection, a hang, a cut), the latency it paid (0 where none could be seen), and
the replica ``by_replica`` counts it for (None: none, as for the edge's own answers)."""
_UNSEEN = frozenset({"refuse", "blackhole", "unreachable", "hang"})
"""Failures that pay no latency that could be seen (no connection, or no answer)."""
_DEAD = frozenset({"refuse", "blackhole", "unreachable", "down"})
"""The simulator's failures of an attempt that no replica could take."""


class _Rehearsed:
    """The stand-ins of the tunnels as a rehearsal runs them: each edge stand-in's and each
    replica's connector's :class:`lb.connector.faults.Faults` (the state those processes
    hold), fed the POSTs :func:`lb.rehearse.drive._posts` sends, on a clock of scenario
    time; :meth:`shown` follows a request through them as ``lb/rehearse/edge.py``
    (``Edge._serve`` / ``_answer``) and ``lb/connector/server.py`` (``_serve`` /
    ``_handle``) do."""

    def __init__(self, sc: Scenario) -> None:
        self.now = 0.0
        self._tunnels = _tunnels(sc)
        self._stack = Stack(
            proxy="",
            admin="",
            control={a: f"edge {a}" for a in self._tunnels},
            anchor=0.0,
            config_path=Path(),
            raw_config={},
            log=Path(),
            replica_control={
                (a, r.name): f"{a}/{r.name}" for a, rs in self._tunnels.items() for r in rs
            },
        )
        urls = [*self._stack.control.values(), *self._stack.replica_control.values()]
        self._faults = {url: Faults(lambda: self.now) for url in urls}
        self._dcs = sc.config.datacenters
        self._plans = handovers(sc)

    def apply(self, e: NetEvent) -> None:
        self.now = e.at
        for url, body in _posts(self._stack, e, self._plans.get(e.index, Handover())):
            self._faults[url].apply(body)

    def shown(self, address: str, dc: str) -> frozenset[Shown]:
        """What a request to ``address`` entering at ``dc`` may get ("": a probe, spread
        over all).  An answer the edge stand-in gives itself in front of every replica
        stands for the replicas the simulator would pick, whose conditions all give it."""
        edge = self._faults[self._stack.control[address]]
        replicas = self._tunnels[address]
        connectors = {
            r.name: self._faults[self._stack.replica_control[address, r.name]] for r in replicas
        }
        fault = edge.current()[0]
        if fault == TimelineAction.REFUSE:  # the listener is closed
            return frozenset({(None, 521, fault, 0.0, None)})
        if fault == TimelineAction.BLACKHOLE:  # gate(): accepted, never answered
            return frozenset({(None, 522, fault, 0.0, None)})
        delay = edge.latency  # held after the replica's answer, or the edge's own
        if fault == TimelineAction.DOWN:
            return frozenset({(None, NO_CONNECTOR, "", delay, None)})
        every = prefer_local(replicas, dc, self._dcs, _where)
        if (cut := edge.cut()) is not None:
            return frozenset((r.label, 502, cut, delay, None) for r in every)
        if (status := edge.answer()) is not None:
            return frozenset((r.label, status, "", delay, None) for r in every)
        # A refused connection is passed over and the choice made again over the rest
        # (Edge.choose): what is left is the simulator's choice among those that take one.
        usable = [r for r in replicas if connectors[r.name].current()[0] != "refuse"]
        if not usable:
            return frozenset({(None, NO_CONNECTOR, "", delay, None)})
        chosen = prefer_local(usable, dc, self._dcs, _where)
        return frozenset(self._forwarded(r, connectors[r.name], delay) for r in chosen)

    def _forwarded(self, r: Replica, c: Faults, delay: float) -> Shown:
        """A request the edge stand-in forwards to ``r``'s connector: recorded under ``r``
        (``Edge.answered``) when a whole answer came, unless the connector tagged it as a
        status of the whole tunnel handed over to it (``Faults.forced``)."""
        status, failure, slow = _connector(c, delay)
        forced = c.forced()
        own = forced is not None and forced[1]
        return (r.label, status, failure, slow, None if failure or own else r.label or r.name)


def _where(r: Replica) -> tuple[str, ...]:
    return r.datacenters


def _connector(c: Faults, delay: float) -> tuple[int, str, float]:
    """One request the edge stand-in forwards to a connector playing ``hello_world`` (the
    application), ``delay`` being the edge stand-in's latency."""
    if c.current()[0] == TimelineAction.BLACKHOLE:
        # The edge's connect times out, or a kept-alive connection never answers: the LB
        # gets a cut connection or its own timeout, never what the simulator avoids.
        return (0, "hang", 0.0)
    slow = delay + c.latency  # gate() waits it out before any answer
    if (cut := c.cut()) is not None:
        return (502, cut, round(slow, 6))
    if (status := c.answer()) is not None:  # down: 530
        return (status, "", round(slow, 6))
    app = c.state().get("origin")
    slow += float(app["latency"]) if isinstance(app, dict) else 0.0
    fault, status = c.current(ORIGIN)
    if not fault:
        return (200, "", round(slow, 6))
    if fault == TimelineAction.TRUNCATE:
        return (502, fault, round(slow, 6))
    if fault == TimelineAction.STATUS:
        return (status, "", round(slow, 6))
    if fault == TimelineAction.BLACKHOLE:
        return (524, "hang", 0.0)
    return (ORIGIN_FAILED, "", round(slow, 6))


def _simulated(network: Network, address: str, dc: str, t: float) -> frozenset[Shown]:
    """What the simulator gives a request to ``address`` entering at ``dc`` at ``t``, in
    the same terms."""
    out: set[Shown] = set()
    for a in network.answers(address, (dc,), dc, HOST, "/", t):
        dead = a.failure in _DEAD
        failure = a.failure if a.failure != TimelineAction.DOWN else ""
        slow = 0.0 if failure in _UNSEEN else round(a.latency - network.rtt, 6)
        counted = a.replica if a.through else None
        out.add((None if dead else a.replica, a.status, failure, slow, counted))
    return frozenset(out)


def _mismatches(sc: Scenario) -> list[str]:
    """Between every two instants at which an answer may change (:func:`_instants`), per
    tunnel, per entry data center and for probes (""): where what the rehearsal's stand-ins
    answer differs from the simulator's answers."""
    rehearsed, network = _Rehearsed(sc), Network(sc)
    events = sorted(sc.events, key=lambda e: (e.at, e.index))
    out: list[str] = []
    for t in _instants(sc):
        while events and events[0].at <= t:
            rehearsed.apply(events.pop(0))
        rehearsed.now = t
        for address, dc in itertools.product(_tunnels(sc), ("FRA", "IAD", "AMS", "")):
            real, simulated = rehearsed.shown(address, dc), _simulated(network, address, dc, t)
            if real != simulated:
                where = f"{address[:8]} {dc or 'probe'}"
                out.append(f"{t}s {where}: {sorted(real)}, simulated {sorted(simulated)}")
    return out


def _instants(sc: Scenario) -> list[float]:
    """Half-way between the instants at which an answer may change on either side: the
    events, and the toggles of each flap from its own time (the simulator's) and from every
    later event's (a connector's flap starts when a hand-over sets it)."""
    times = {0.0, sc.duration, *(e.at for e in sc.events)}
    for flap in (e for e in sc.events if e.action == TimelineAction.FLAP):
        for start in {e.at for e in sc.events if e.at >= flap.at}:
            at = start
            while at < sc.duration:
                times |= {at, at + flap.down_for}
                at += flap.period
    bounds = sorted(t for t in times if t <= sc.duration)
    return [(a + b) / 2 for a, b in itertools.pairwise(bounds)]


def _entry(at: float, who: str, what: str) -> str:
    """One timeline entry.  The application's statuses are 4xx where the connectors' are
    5xx, none of them the 502 of a failing application: a replica's own fault never shows
    just what the layer behind it shows (a cut aside, :func:`_cut_twice`), so a refused
    timeline that matches is a refusal broader than needed, not a coincidence."""
    if who.startswith("origin"):
        what = what.replace("status: 5", "status: 4")
    return f"{{at: {at:g}, {who}, {what}}}"


def _vocabulary(tmp_path: Path, shape: str) -> tuple[Scenario, dict[tuple[str, str], NetEvent]]:
    """The scenario without a timeline, and every (target, event) pair of its random
    timelines, parsed once by the scenario loader (a timeline re-times them: parsing each
    would take most of the test's time)."""
    base = _scenario(tmp_path, shape=shape)
    pairs = [(who, what) for who in _who(base) for what in _EVENTS]
    sc = _scenario(tmp_path, *(_entry(10, who, what) for who, what in pairs), shape=shape)
    return base, dict(zip(pairs, sc.events, strict=True))


@pytest.mark.parametrize("shape", sorted(_SHAPES))
def test_what_is_rehearsed_matches_the_simulator(tmp_path: Path, shape: str) -> None:
    """Random timelines of tunnel, replica and origin events: whatever
    :func:`unrehearsable` accepts, the stand-ins, fed what the rehearsal sends them, answer
    every request as the simulator does at every moment; whatever it refuses differs
    somewhere (a refusal is never broader than needed).  Every event of every kind of
    target is accepted in enough timelines that a refusal swallowing it fails this."""
    base, vocabulary = _vocabulary(tmp_path, shape)
    who = _who(base)
    rng = random.Random(7)
    accepted: Counter[tuple[str, str]] = Counter()
    for _ in range(1000):
        picked = [(_target(rng, who), rng.choice(_EVENTS)) for _ in range(rng.randint(2, 4))]
        events = tuple(
            dataclasses.replace(vocabulary[p], at=10.0 * (i + 1), index=2 * i)
            for i, p in enumerate(picked)
        )
        sc = dataclasses.replace(base, events=events)
        refused = unrehearsable(sc)
        mismatches = _differences(sc)
        if refused:
            assert mismatches or _cut_twice(picked), ("refused, yet matches", picked, refused)
            continue
        assert mismatches[:3] == [], picked
        accepted.update({("timelines", ""), *((w.split(":")[0], d) for w, d in picked)})
    assert accepted["timelines", ""] > 400
    rare = {
        (kind, what): accepted[kind, what]
        for kind in ("tunnel", "replica", "origin")
        for what in _EVENTS
        if (accepted[kind, what] > 0 if (kind, what) in _REFUSED else accepted[kind, what] < 10)
    }
    assert rare == {}, "accepted too rarely, or refused ones accepted"


def _cut_twice(picked: list[tuple[str, str]]) -> bool:
    """Whether a timeline truncates both a connector and an application: one cut looks like
    the other on both sides, so a refusal that names one can match by coincidence."""
    cuts = {w.partition(":")[0] == "origin" for w, d in picked if d == "do: truncate"}
    return cuts == {True, False}


def _target(rng: random.Random, who: list[str]) -> str:
    """One of ``who``, each kind of target (tunnel, replica, origin) as likely."""
    kind = rng.choice(("tunnel", "replica", "origin"))
    return rng.choice([w for w in who if w.startswith(kind)])


def _differences(sc: Scenario) -> list[str]:
    """:func:`_mismatches`, or why a stand-in refuses a POST the rehearsal would send."""
    try:
        return _mismatches(sc)
    except FaultError as exc:
        return [f"a stand-in refuses a POST: {exc}"]
