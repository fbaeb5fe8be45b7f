"""The pure planning of a rehearsal's hand-overs (``lb.rehearse.drive``): which conditions
move between the edge stand-in and the replicas' connectors around each timeline event, in
what order the POSTs go, and which combinations are refused, for every order of a replica's
latency, the tunnel's latency and a recover of one replica or of the whole tunnel.  The
simulator's per-replica conditions (``lb.sim.network``) are the reference each case names.
"""

from __future__ import annotations

from pathlib import Path

from lb.rehearse.drive import Handover, _posts, handovers, unrehearsable
from lb.rehearse.stack import Stack
from lb.sim.network import Network
from lb.sim.scenario import Scenario, load_scenario

REPLICAS = Path(__file__).resolve().parents[2] / "configs/scenarios/replicas-one-tunnel.yaml"
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"
FRA, IAD = "host-fra", "host-iad"


def _scenario(tmp_path: Path, *events: str) -> Scenario:
    timeline = "".join(f"  - {e}\n" for e in events)
    path = tmp_path / "replicas.yaml"
    path.write_text(REPLICAS.read_text().replace("timeline: []", f"timeline:\n{timeline}"))
    return load_scenario(path)


def _latency(sc: Scenario, replica: str, t: float) -> float:
    """The latency the simulator adds to ``replica``'s answers at ``t``."""
    network = Network(sc)
    answer = network.replica_answer(ADDRESS, f"shared/{replica}", "FRA", "app.example.com", "/", t)
    assert answer is not None
    return round(answer.latency - network.rtt, 6)


def _stack() -> Stack:
    return Stack(
        proxy="",
        admin="",
        control={ADDRESS: "edge"},
        anchor=0.0,
        config_path=Path(),
        raw_config={},
        log=Path(),
        replica_control={(ADDRESS, FRA): FRA, (ADDRESS, IAD): IAD},
    )


def _plan(sc: Scenario) -> list[tuple[str, Handover]]:
    named = {e.index: e.label for e in sc.events}
    return [(named[i], plan) for i, plan in sorted(handovers(sc).items())]


def _sent(sc: Scenario) -> list[list[tuple[str, dict[str, object]]]]:
    """The POSTs of every event, in order."""
    plans = handovers(sc)
    return [_posts(_stack(), e, plans.get(e.index, Handover())) for e in sc.events]


def test_a_tunnel_latency_clears_a_replicas_own_after_setting_the_edges(tmp_path: Path) -> None:
    sc = _scenario(
        tmp_path,
        "{at: 20, replica: shared/host-fra, do: latency, latency: 0.3}",
        "{at: 30, tunnel: shared, do: latency, latency: 0.5}",
    )
    assert (_latency(sc, FRA, 25), _latency(sc, FRA, 35), _latency(sc, IAD, 35)) == (0.3, 0.5, 0.5)
    first, tunnel = sc.events
    assert _plan(sc) == [(tunnel.label, Handover(slow=((FRA, first),)))]
    assert _sent(sc)[1] == [
        ("edge", {"do": "latency", "latency": 0.5}),  # the new one first: never none
        (FRA, {"do": "latency", "latency": 0.0}),
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
        (FRA, {"do": "latency", "latency": 0.5}),
        (IAD, {"do": "latency", "latency": 0.5}),
        ("edge", {"do": "recover"}),
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
        (IAD, {"do": "latency", "latency": 0.5}),
        ("edge", {"do": "recover"}),
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
        ("edge", {"do": "recover"}),
        (FRA, {"do": "recover"}),
        (IAD, {"do": "recover"}),
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
        ("edge", {"do": "latency", "latency": 0.1}),
        (FRA, {"do": "latency", "latency": 0.0}),
        (IAD, {"do": "latency", "latency": 0.0}),
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
