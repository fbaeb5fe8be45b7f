"""Rehearsals of shipped scenarios against real processes, and a wrong simulator caught.

Each rehearsal runs at speed 10 with a fraction of the scenario's rates (so that the driver,
the LB and two stand-ins fit on a busy two-core machine) and 10 simulated seeds; each takes
well under a minute.  The real run is shared by the tests that only re-compare it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lb.rehearse import Rehearsal, RehearsalError, rehearse
from lb.rehearse.compare import compare, outside_share
from lb.rehearse.scale import scaled_files
from lb.sim.report import Report
from lb.sim.run import run_scenario
from lb.sim.scenario import Scenario, load_scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "configs" / "scenarios"
REFERENCE = SCENARIOS / "reference-two-datacenters.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    work = tmp_path_factory.mktemp("reference")
    return rehearse(REFERENCE, seeds=10, speed=10, rate=0.2, workdir=work)


def test_reference_scenario_falls_inside_the_simulated_spread(reference: Rehearsal) -> None:
    data = reference.real.data
    assert data["requests"] == 900  # 300 rps x 0.2 over 150 s / 10
    assert [v["ok"] for v in data["expectations"]] == [True] * 5, reference.table()
    (failover,) = data["failovers"]
    assert failover["endpoint"] == "tunnel-dc1"
    assert failover["detected_at"] is not None and failover["drained_at"] is not None
    assert reference.ok, reference.table()


def test_flapping_scenario_falls_inside_the_simulated_spread(tmp_path: Path) -> None:
    result = rehearse(SCENARIOS / "flapping.yaml", seeds=10, speed=10, rate=0.3, workdir=tmp_path)
    data = result.real.data
    assert data["retries"] > 0  # refusals for real, hidden by zero-downtime failover
    assert data["errors"] == 0
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
    scenario, _ = scaled_files(REFERENCE, 10, tmp_path, 0.2)
    wrong = [_slow_monitors(load_scenario(scenario, seed=s)).data for s in range(1, 11)]
    pools = [p.name for p in reference.scenario.config.pools]
    points = compare(reference.real.data, wrong, pools)
    outside = {p.name for p in points if not p.inside}
    assert any(name.endswith("detected") for name in outside), outside
    assert outside_share(points) > 0.05
    caught = dataclasses.replace(reference, sims=tuple(wrong), points=tuple(points))
    assert not caught.ok


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
