"""Rehearsals of shipped scenarios against real processes, and a wrong simulator caught.

Each rehearsal runs at speed 10 (the reference and health-route-fixed at 5: their 0.4 s
probe timeout then survives a TLS exchange on a machine with a load average of 7) with a
fraction of the scenario's rates (so that the driver, the LB and two stand-ins fit on a busy
two-core machine) and 10 simulated seeds, or fewer; each takes well under a minute.  The
real run is shared by the tests that only re-compare it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lb.commands import rehearse as rehearse_command
from lb.rehearse import Rehearsal, RehearsalError, rehearse
from lb.rehearse.compare import OUTSIDE_LIMIT, compare, outside_share
from lb.rehearse.scale import scaled_files
from lb.sim.report import Report
from lb.sim.run import run_scenario
from lb.sim.scenario import Scenario, load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "configs" / "scenarios"
REFERENCE = SCENARIOS / "reference-two-datacenters.yaml"
REFERENCE_SPEED = 5


TIMED_KINDS = ("detected", "drained", "transitions", "probes")
"""Expectations that depend on when probes and faults land, besides any with a window
(``between``) or a deadline (``within``): a loaded machine shifts them."""


def _timing_free(result: Rehearsal) -> list[tuple[str, bool]]:
    """``(name, ok)`` of the real run's expectations that no machine load can move: counts
    and shares over the whole run.  A test asserts them before :func:`_conclusive`."""
    free = {
        e.name
        for e in result.scenario.expectations
        if e.kind not in TIMED_KINDS and e.between is None and e.within is None
    }
    return [(v["name"], v["ok"]) for v in result.real.data["expectations"] if v["name"] in free]


def _kept_up(result: Rehearsal) -> Rehearsal:
    """``result``, or a skip naming why: when the LB or a stand-in timed out where the
    scenario always answers, held back by the machine (``Rehearsal.held_back``,
    lb/rehearse/stalls.py), the health the LB saw was the machine's, and so are the
    timings that follow from it.  Called after a test's timing-free assertions (errors,
    retries, expectations without a window): a run that breaks those fails, loaded or
    not."""
    if result.held_back:
        pytest.skip(f"{result.inconclusive}\n{result.table()}")
    return result


def _conclusive(result: Rehearsal) -> Rehearsal:
    """``result``, or a skip naming why: a run the machine's load made inconclusive
    (``Rehearsal.inconclusive``) neither passes nor fails the comparisons that depend on
    timing.  Called after the test's timing-free assertions, which hold however late."""
    if result.inconclusive is not None:
        pytest.skip(f"{result.inconclusive}\n{result.table()}")
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    work = tmp_path_factory.mktemp("reference")
    return rehearse(REFERENCE, seeds=10, speed=REFERENCE_SPEED, rate=0.2, workdir=work)


def test_reference_scenario_falls_inside_the_simulated_spread(reference: Rehearsal) -> None:
    data = reference.real.data
    assert data["requests"] == 1800  # 300 rps x 0.2 over 150 s / 5
    assert _timing_free(reference) == [
        ("errors bounded by the detection time (300 rps x 23.1 s)", True)
    ]
    _kept_up(reference)
    (failover,) = data["failovers"]
    assert failover["endpoint"] == "tunnel-dc1"
    assert failover["detected_at"] is not None  # the LB's probes, whenever users came
    _conclusive(reference)
    # A driver stalled for seconds can send dc1's last requests after the recovery.
    assert failover["drained_at"] is not None, reference.table()
    assert [v["ok"] for v in data["expectations"]] == [True] * 5, reference.table()
    assert reference.ok, reference.table()


def test_flapping_scenario_falls_inside_the_simulated_spread(tmp_path: Path) -> None:
    flapping = SCENARIOS / "flapping.yaml"
    result = rehearse(flapping, seeds=10, speed=10, rate=0.3, workdir=tmp_path)
    data = result.real.data
    assert data["retries"] > 0  # refusals for real, hidden by zero-downtime failover
    assert data["errors"] == 0
    assert _timing_free(result) == [("zero-downtime failover hides the refusals", True)]
    _conclusive(result)
    assert result.ok, result.table()


def _slow_monitors(sc: Scenario) -> Report:
    """A wrong simulator: it probes half as often as the configuration says, so it detects
    failures about twice as late as the real LB does."""
    monitors = tuple(dataclasses.replace(m, interval=m.interval * 2) for m in sc.config.monitors)
    config = dataclasses.replace(sc.config, monitors=monitors)
    return run_scenario(dataclasses.replace(sc, config=config))


def test_a_simulator_that_detects_twice_as_late_is_caught(
    reference: Rehearsal, tmp_path: Path
) -> None:
    scenario, _ = scaled_files(REFERENCE, REFERENCE_SPEED, tmp_path, 0.2)
    wrong = [_slow_monitors(load_scenario(scenario, seed=s)).data for s in range(1, 11)]
    pools = [p.name for p in reference.scenario.config.pools]
    points = compare(reference.real.data, wrong, pools)
    outside = {p.name for p in points if not p.inside}
    assert any(name.endswith("detected") for name in outside), outside
    assert outside_share(points) > 0.05
    caught = dataclasses.replace(reference, sims=tuple(wrong), points=tuple(points))
    assert caught.outside > OUTSIDE_LIMIT, caught.table()


def test_a_run_the_machine_held_back_is_inconclusive_not_a_mismatch(
    reference: Rehearsal,
) -> None:
    """Requests sent half a report window behind schedule (or events applied that late, or
    timeouts where the scenario always answers): the rehearsal says the machine was too
    loaded, and neither passes nor fails."""
    window = reference.scenario.report_interval
    held = dataclasses.replace(reference, behind=window / 2)
    assert (held.inconclusive or "").startswith("machine too loaded: "), held.inconclusive
    assert not held.ok
    assert held.table().rstrip().splitlines()[-1] == f"INCONCLUSIVE: {held.inconclusive}"
    assert held.as_json()["inconclusive"] == held.inconclusive
    late = dataclasses.replace(reference, lag=window / 2, behind=0.0)
    assert late.inconclusive is not None
    on_time = dataclasses.replace(late, lag=window / 2 - 0.01, timeouts="")
    assert on_time.inconclusive is None
    # The LB's probes of dc2, which the scenario never makes hang, timed out, each while
    # the LB or dc2's stand-in waited for a CPU half the timeout or more: held back,
    # however punctual the driver was (lb/rehearse/stalls.py).
    stalled = dataclasses.replace(on_time, timeouts="2 probes of dc2/tunnel-dc2", unexcused="")
    assert (stalled.inconclusive or "").startswith("machine too loaded: the real LB timed out ")
    assert "(2 probes of dc2/tunnel-dc2), each time while the LB" in (stalled.inconclusive or "")
    assert stalled.as_json()["timeouts"] == "2 probes of dc2/tunnel-dc2"
    assert not stalled.ok
    # One of them that the machine does not explain is the stack's own: judged, however
    # much the stack waited over the whole run.
    own = dataclasses.replace(stalled, unexcused="1 probe of dc2/tunnel-dc2", starved=14.7)
    assert own.inconclusive is None
    assert own.as_json()["unexcused"] == "1 probe of dc2/tunnel-dc2"


def test_a_failed_expectation_fails_the_command_even_when_inconclusive(
    reference: Rehearsal, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3 (inconclusive) only when the real run did what the scenario expects; a failed
    expectation is a real failure, exit 1, however loaded the machine."""
    held = dataclasses.replace(reference, behind=reference.scenario.report_interval / 2)
    verdicts = tuple(dataclasses.replace(v, ok=False) for v in held.real.verdicts[:1])
    failed = dataclasses.replace(
        held, real=dataclasses.replace(held.real, verdicts=verdicts + held.real.verdicts[1:])
    )
    parser = argparse.ArgumentParser()
    rehearse_command.add_arguments(parser)
    for result, status in ((held, 3 if reference.real.ok else 1), (failed, 1)):
        monkeypatch.setattr(rehearse_command, "rehearse", lambda *a, r=result, **k: r)
        assert rehearse_command.run(parser.parse_args([str(REFERENCE)])) == status
        assert "inconclusive: machine too loaded" in capsys.readouterr().err


def test_one_seed_is_one_probe_schedule(reference: Rehearsal, tmp_path: Path) -> None:
    """The real LB (``run --seed S``) probes when ``simulate --seed S`` does: its health
    transitions at the failure's detection land where the replay puts them, not merely
    somewhere in the spread of seeds (first probes fall anywhere in the 2 s interval)."""
    # Every check here is of when things happened: a stalled machine adds transitions.
    _conclusive(reference)
    scenario, _ = scaled_files(REFERENCE, REFERENCE_SPEED, tmp_path, 0.2)
    replay = run_scenario(load_scenario(scenario)).data  # the scenario's own seed
    real = reference.real.data
    assert reference.scenario.seed == replay["seed"]

    def detection(report: dict[str, Any]) -> list[tuple[float, str, str]]:
        # Every transition to unhealthy, the first checks' included: a probe through an
        # edge stand-in that timed out at start (its process held up by the traffic, when
        # they shared one) is such a transition the replay does not have. Not the recovery
        # (a late-applied recover can let one probe still fail).
        transitions = report["transitions"]
        return [(t["at"], t["vantage"], t["to"]) for t in transitions if t["to"] == "unhealthy"]

    pairs = list(zip(detection(real), detection(replay), strict=True))
    assert [(v, to) for _, v, to in detection(real)] == [
        ("local", "unhealthy"),  # the LB's vantage point, and the combined view
        ("*", "unhealthy"),
    ]
    for (mine, _, _), (theirs, _, _) in pairs:
        # The real probe's round trip and the loaded machine, not a phase shift: a schedule
        # counted from another moment than the traffic's time 0 moves them all alike.
        assert abs(mine - theirs) < 0.1, pairs


def test_origin_faults_are_made_real(tmp_path: Path) -> None:
    """health-route-fixed: the application behind the primary stand-in refuses (the stand-in
    answers 502 as cloudflared does) until the monitor sees it and users move."""
    result = rehearse(
        SCENARIOS / "health-route-fixed.yaml", seeds=10, speed=5, rate=0.5, workdir=tmp_path
    )
    data = result.real.data
    assert data["statuses"].get("502", 0) > 0, data["statuses"]
    (failover,) = data["failovers"]
    assert failover["cause"] == "refuse origin primary"
    assert failover["detected_at"] is not None
    assert _timing_free(result) == [
        ("errors limited to the detection window (100 rps x 10.6 s)", True)
    ]
    _conclusive(result)
    assert result.ok, result.table()


def test_cut_responses_are_made_real_and_retried(tmp_path: Path) -> None:
    """retry-on-truncated: the application behind stand-in c cuts every body in half; with
    ``retry_on.buffer_response`` and passive health no user gets a cut response, as the
    simulator predicts."""
    result = rehearse(
        SCENARIOS / "retry-on-truncated.yaml", seeds=5, speed=5, rate=0.5, workdir=tmp_path
    )
    data = result.real.data
    assert data["errors"] == 0, result.table()
    assert data["retry_on_retries"] > 0, data
    assert _timing_free(result) == [("no user gets a cut response", True)]
    _conclusive(result)
    assert result.ok, result.table()


def test_keep_alive_closes_and_probe_counts_are_real(tmp_path: Path) -> None:
    """keep-alive-closes with a ``probes`` expectation: the node stand-in closes idle
    connections for real (0.5 s at speed 10, and at random), no user sees it, and the
    stand-ins count the probes the simulator counts (2 endpoints, 30 rounds)."""
    source = SCENARIOS / "keep-alive-closes.yaml"
    scenario = tmp_path / source.name
    scenario.write_text(
        source.read_text()
        + "  - name: two endpoints probed every interval\n"
        + "    probes: {at_least: 56, at_most: 62}\n"
    )
    result = rehearse(scenario, seeds=4, speed=10, rate=0.5, workdir=tmp_path / "work")
    data = result.real.data
    assert data["errors"] == 0
    assert [ok for _, ok in _timing_free(result)] == [True] * 2, result.table()
    files = [json.loads(f.read_text()) for f in sorted((tmp_path / "work").glob("connector-*"))]
    closes = {f["replica"]: (f.get("keep_alive_idle"), f.get("random_closes")) for f in files}
    assert closes == {"s1": (None, None), "n1": (0.5, 5.0)}
    _conclusive(result)  # probes land as the machine lets them
    assert [v["ok"] for v in data["expectations"]] == [True] * 3, result.table()
    replay = run_scenario(result.scenario).data
    assert abs(data["probes"] - replay["probes"]) <= 2  # one per job at the very end
    assert result.ok, result.table()


def test_faults_that_need_more_than_one_machine_are_refused_by_name(tmp_path: Path) -> None:
    scenario = tmp_path / "partition.yaml"
    scenario.write_text(
        REFERENCE.read_text().replace(
            "- {at: 40, tunnel: dc1, do: blackhole, until: 100}",
            "- {at: 40, tunnel: dc1, do: partition, seen_from: [FRA], until: 100}",
        )
    )
    (tmp_path / "reference-two-datacenters.lb.yaml").write_text(
        (SCENARIOS / "reference-two-datacenters.lb.yaml").read_text()
    )
    with pytest.raises(RehearsalError, match=r"seen_from .* cannot be made real on one machine"):
        rehearse(scenario, seeds=1, speed=10, workdir=tmp_path / "work")


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "lb", "rehearse", str(REFERENCE), "--speed", "100"]
    done = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --speed 100 makes a monitor interval 0.1 s, below the 1 s minimum; "
        "use a lower speed"
    ]
    done = subprocess.run([*run[:-1], "0"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "--speed: must be above 0, got 0" in done.stderr


def test_a_broken_scenario_is_reported_as_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration: [\n")
    run = [sys.executable, "-m", "lb", "rehearse", str(bad)]
    done = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}:3: YAML syntax error")


def test_a_tunnel_target_naming_a_replica_is_one_error_in_both_commands(tmp_path: Path) -> None:
    """``tunnel: TUNNEL/REPLICA`` has no one meaning: the simulator and the rehearsal parse
    the same scenario and refuse it alike, at its line, naming the two keys to use."""
    scenario = tmp_path / "replicas.yaml"
    scenario.write_text(
        REPLICAS.read_text().replace(
            "timeline: []", "timeline:\n  - {at: 20, tunnel: shared/host-fra, do: refuse}"
        )
    )
    line = 1 + scenario.read_text().splitlines().index(
        "  - {at: 20, tunnel: shared/host-fra, do: refuse}"
    )
    for command in ("simulate", "rehearse"):
        run = [sys.executable, "-m", "lb", command, str(scenario)]
        done = subprocess.run(run, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip().splitlines() == [
            f"error: {scenario}:{line}: timeline[0].tunnel: tunnel: names a whole tunnel, not a "
            "replica: use replica: shared/host-fra for one replica, tunnel: shared for the "
            "whole tunnel"
        ], command


def _refusal(path: Path, tmp_path: Path) -> str:
    with pytest.raises(RehearsalError) as caught:
        rehearse(path, seeds=1, speed=10, workdir=tmp_path / "work")
    return str(caught.value)


def test_a_cluster_scenario_is_refused_naming_each_part(tmp_path: Path) -> None:
    message = _refusal(SCENARIOS / "cluster-partition.yaml", tmp_path)
    assert message.startswith("cannot be rehearsed on one machine: ")
    assert "blackhole tunnel dc1: seen_from (a fault seen from some places only)" in message
    assert "cluster (fra, ams, sin): a rehearsal runs one `tunnel-lb run`" in message
    assert "partition member sin: member 'sin' cannot be partitioned from the store" in message
    assert "\n" not in message


def test_long_lived_sessions_are_refused_not_silently_left_out(tmp_path: Path) -> None:
    message = _refusal(SCENARIOS / "ssh-sessions-failover.yaml", tmp_path)
    assert "long-lived sessions (sessions:) are not driven by a rehearsal" in message
    assert "\n" not in message


REPLICAS = SCENARIOS / "replicas-one-tunnel.yaml"


def _with_timeline(tmp_path: Path, timeline: str, expect: str | None = None) -> Path:
    """replicas-one-tunnel with another timeline (and other expectations, when given)."""
    head, _, tail = REPLICAS.read_text().partition("\nexpect:\n")
    text = head.replace("timeline: []", f"timeline:\n{timeline}")
    scenario = tmp_path / "replicas.yaml"
    scenario.write_text(f"{text}\nexpect:\n{tail if expect is None else expect}")
    return scenario


def test_a_killed_replica_falls_inside_the_simulated_spread(tmp_path: Path) -> None:
    """Two replicas of one tunnel, each its own connector behind the edge stand-in; the FRA
    replica refuses from 20 s (its connector only), and FRA's users move to the IAD one
    without an error, as the simulator's edge does."""
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, replica: shared/host-fra, do: refuse}\n",
        "  - name: local connection preference before the kill\n"
        "    share: {replica: shared/host-fra, between: [0, 20], at_least: 0.7, at_most: 0.8}\n"
        "  - name: the killed host serves nobody once it is gone\n"
        "    share: {replica: shared/host-fra, between: [21, 60], at_most: 0}\n"
        "  - name: the other host serves FRA's users too\n"
        "    share: {replica: shared/host-iad, between: [21, 60], at_least: 1}\n",
    )
    result = rehearse(scenario, seeds=5, speed=10, rate=0.25, workdir=tmp_path / "work")
    data = result.real.data
    assert data["errors"] == 0, result.table()
    files = [json.loads(f.read_text()) for f in sorted((tmp_path / "work").glob("connector-*"))]
    assert sorted(f["replica"] for f in files) == ["host-fra", "host-iad"]
    _conclusive(result)  # every expectation has a window
    assert [v["ok"] for v in data["expectations"]] == [True] * 3, result.table()
    assert result.ok, result.table()


def test_recovering_one_replica_of_a_refused_tunnel_recovers_it_alone(tmp_path: Path) -> None:
    """The whole tunnel refuses from 20 s (the edge stand-in's fault), then the FRA replica
    recovers at 30 s: in the simulator that replica serves every user from then on while the
    IAD one still refuses; the rehearsal hands the refusal to the IAD connector."""
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: refuse}\n"
        "  - {at: 30, replica: shared/host-fra, do: recover}\n",
        "  - name: the recovered host serves everyone\n"
        "    share: {replica: shared/host-fra, between: [32, 60], at_least: 1}\n"
        "  - name: the host still refusing serves nobody\n"
        "    share: {replica: shared/host-iad, between: [32, 60], at_most: 0}\n",
    )
    result = _conclusive(
        rehearse(scenario, seeds=3, speed=10, rate=0.25, workdir=tmp_path / "work")
    )
    data = result.real.data
    assert [v["ok"] for v in data["expectations"]] == [True] * 2, result.table()
    assert result.ok, result.table()


def test_a_tunnel_flap_handed_over_in_phase_falls_inside_the_simulated_spread(
    tmp_path: Path,
) -> None:
    """The whole tunnel flaps 503 from 20 s; the FRA replica recovers at 50 s, two periods
    later, so the IAD connector takes the flap over in phase: its 503s fall in the report
    windows where the simulator's IAD replica gives them."""
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: flap, period: 15, down_for: 5, how: status, "
        "status: 503}\n"
        "  - {at: 50, replica: shared/host-fra, do: recover}\n",
        "  - name: the recovered host serves its users\n"
        "    share: {replica: shared/host-fra, between: [51, 60], at_least: 0.7, at_most: 0.8}\n",
    )
    result = rehearse(scenario, seeds=5, speed=10, rate=0.25, workdir=tmp_path / "work")
    assert result.real.data["statuses"].get("503", 0) > 0, result.real.data["statuses"]
    _conclusive(result)  # the expectation has a window
    assert [v["ok"] for v in result.real.data["expectations"]] == [True], result.table()
    assert result.ok, result.table()


def test_a_tunnel_status_handed_over_counts_for_no_replica_as_in_the_simulator(
    tmp_path: Path,
) -> None:
    """The whole tunnel answers 503 from 20 s (the edge's own, counted for no replica); the
    IAD replica recovers at 30 s, so the rehearsal hands the 503 to the FRA connector, which
    answers FRA's users with it.  The simulator still counts those 503s for no replica, and
    so does the real report: the FRA host's share stays 0 until the tunnel recovers.  (The
    window stops short of 40 s: at speed 10 a millisecond is 0.01 s of scenario time, so a
    request the LB received just before the recover can reach the connector after it.)"""
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: status, status: 503, until: 40}\n"
        "  - {at: 30, replica: shared/host-iad, do: recover}\n",
        "  - name: the tunnel's 503 is the edge's, handed over or not\n"
        "    share: {replica: shared/host-fra, between: [32, 38], at_most: 0}\n"
        "  - name: the recovered host answers its own users\n"
        "    share: {replica: shared/host-iad, between: [32, 38], at_least: 0.2}\n",
    )
    result = rehearse(scenario, seeds=3, speed=10, rate=0.25, workdir=tmp_path / "work")
    data = result.real.data
    assert data["statuses"].get("503", 0) > 0, data["statuses"]
    _conclusive(result)  # every expectation has a window
    assert [v["ok"] for v in data["expectations"]] == [True] * 2, result.table()


def test_a_hanging_tunnel_fault_left_on_some_replicas_is_refused(tmp_path: Path) -> None:
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: blackhole}\n"
        "  - {at: 30, replica: shared/host-fra, do: recover}\n"
        "  - {at: 40, tunnel: shared, do: flap, period: 10, how: refuse}\n"
        "  - {at: 55, replica: shared/host-iad, do: status, status: 503}\n",
    )  # 55 s: half a period into the flap, handed over in its phase (since): accepted
    message = _refusal(scenario, tmp_path)
    assert message == (
        "cannot be rehearsed on one machine: recover replica shared/host-fra: blackhole of "
        "every replica (blackhole tunnel shared) would then hold only the others, and the edge "
        "stand-in would not avoid them: it learns that a replica is gone only from a refused "
        "connection; flap tunnel shared: the connector of shared/host-iad (blackhole tunnel "
        "shared) would keep that fault, where the simulator's flap of every replica replaces "
        "it (the replica answers in the flap's up part, when the edge stand-in forwards to "
        "that connector)"
    )


def test_replica_faults_the_edge_stand_in_cannot_see_are_refused(tmp_path: Path) -> None:
    scenario = _with_timeline(tmp_path, "  - {at: 20, replica: shared/host-fra, do: blackhole}\n")
    message = _refusal(scenario, tmp_path)
    assert message == (
        "cannot be rehearsed on one machine: blackhole replica shared/host-fra: blackhole on "
        "one replica would not be avoided: the edge stand-in learns that a replica is gone "
        "only from a refused connection (Cloudflare's edge, from the tunnel connection's "
        "heartbeats)"
    )


def test_probe_expectations_are_refused_where_probes_never_reach_a_stand_in(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "probes.yaml"
    scenario.write_text(
        REFERENCE.read_text() + "  - name: some probes\n    probes: {at_least: 1}\n"
    )
    (tmp_path / "reference-two-datacenters.lb.yaml").write_text(
        (SCENARIOS / "reference-two-datacenters.lb.yaml").read_text()
    )
    message = _refusal(scenario, tmp_path)
    assert message == (
        "cannot be rehearsed on one machine: expect 'some probes': probes are counted as the "
        "stand-ins receive them, and blackhole tunnel dc1 keeps probe attempts from reaching "
        "a stand-in"
    )


def test_hand_overs_the_stand_ins_cannot_match_are_refused(tmp_path: Path) -> None:
    """A refusal of the whole tunnel handed to every replica's connector would make the edge
    stand-in answer 530 (no replica takes a connection) where the simulator shows a refused
    connection; a tunnel-wide status after that hand-over is the edge stand-in's own
    answer, which would skip the latency the FRA connector holds."""
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: refuse}\n"
        "  - {at: 30, replica: shared/host-fra, do: latency, latency: 0.2}\n"
        "  - {at: 40, tunnel: shared, do: status, status: 500}\n",
    )
    message = _refusal(scenario, tmp_path)
    assert message == (
        "cannot be rehearsed on one machine: latency replica shared/host-fra: every "
        "replica's connector would then refuse (shared/host-fra (refuse tunnel shared), "
        "shared/host-iad (refuse tunnel shared)), and the edge stand-in answers 530 when no "
        "replica takes a connection, where the simulator shows a refused one; status tunnel "
        "shared: the edge stand-in answers it itself, without reaching a replica, so the "
        "latency held by the connector of shared/host-fra (latency replica shared/host-fra) "
        "would not be paid, where the simulator adds it to that replica's answer"
    )


def test_a_tunnel_wide_recover_after_a_hand_over_is_rehearsable(tmp_path: Path) -> None:
    scenario = _with_timeline(
        tmp_path,
        "  - {at: 20, tunnel: shared, do: refuse}\n"
        "  - {at: 30, replica: shared/host-fra, do: recover}\n"
        "  - {at: 40, tunnel: shared, do: recover}\n"
        "  - {at: 45, tunnel: shared, do: latency, latency: 0.1}\n",
    )
    from lb.rehearse.drive import unrehearsable

    assert unrehearsable(load_scenario(scenario)) == []


def _slow(tmp_path: Path, timeline: str) -> Rehearsal:
    """Rehearse replicas-one-tunnel for 30 s with ``timeline``, a 10 s request timeout and a
    20 s connect timeout (2 and 4 s at speed 5), expecting no error from 21 s on.  Each
    timeline makes the FRA replica alone 12 s slow before 20 s (the real LB answers FRA's
    users 524 after its request timeout, and so does the simulator), and the whole tunnel
    4 s slow from 20 s: replaced, the latency leaves a 2.5x margin under the request
    timeout; added (16 s), every FRA request would time out.
    A stand-in's latency also delays the TLS handshake of a new connection to it: the LB's
    to the edge stand-in is a connect (the request timeout does not count it).  Probes time
    out on both sides (timeout 2 s): the tunnel is its pool's only endpoint and the
    fallback, so it keeps the traffic."""
    scenario = _with_timeline(
        tmp_path,
        timeline,
        "  - name: no request times out once the tunnel's latency replaces the replica's\n"
        "    errors: {between: [21, 30], at_most: 0}\n",
    )
    engine = "  engine: {limits: {request_timeout: 10, connect_timeout: 20}}\n"
    text = scenario.read_text().replace("config:\n", "config:\n" + engine, 1)
    scenario.write_text(text.replace("duration: 60\n", "duration: 30\n", 1))
    return _conclusive(rehearse(scenario, seeds=3, speed=5, rate=0.05, workdir=tmp_path / "work"))


def _after_the_step(result: Rehearsal) -> None:
    """The timeline kept time, the expectation held, and every compared value of the
    window from the step on (20-30 s: at speed 5 the windows are 0-2, 2-4 and 4-6 s real)
    fell inside the simulated band.  The windows before it are not compared: the simulator
    answers a latency above the request timeout without timing it out, where the real LB
    answers 524."""
    # Half a window: a stalled POST would blur the step the windows are compared around.
    assert result.lag < 1.0, f"events applied up to {result.lag:.3f} s late\n{result.table()}"
    assert [v["ok"] for v in result.real.data["expectations"]] == [True], result.table()
    after = [p for p in result.points if p.name.startswith("window 4-6s")]
    assert after, result.table()
    assert all(p.inside for p in after), result.table()


def test_a_tunnel_latency_replaces_a_replicas_own(tmp_path: Path) -> None:
    """The FRA replica is slow from 10 s (its connector's latency), then the whole tunnel
    from 20 s: the simulator replaces that replica's latency; the rehearsal clears the FRA
    connector's, then sets the edge stand-in's (a request between the two pays neither)."""
    result = _slow(
        tmp_path,
        "  - {at: 10, replica: shared/host-fra, do: latency, latency: 12}\n"
        "  - {at: 20, tunnel: shared, do: latency, latency: 4}\n",
    )
    _after_the_step(result)


def test_a_tunnel_latency_after_a_hand_over_replaces_the_connectors(tmp_path: Path) -> None:
    """The whole tunnel is slow from 5 s (the edge stand-in's latency), the FRA replica from
    12 s (the tunnel's 3 s is handed to both connectors, then FRA's own set), the whole
    tunnel again from 20 s: the simulator replaces every replica's latency; the rehearsal
    clears both connectors', then sets the edge stand-in's."""
    result = _slow(
        tmp_path,
        "  - {at: 5, tunnel: shared, do: latency, latency: 3}\n"
        "  - {at: 12, replica: shared/host-fra, do: latency, latency: 12}\n"
        "  - {at: 20, tunnel: shared, do: latency, latency: 4}\n",
    )
    _after_the_step(result)
