"""Every scenario shipped in configs/scenarios/ loads, runs and meets its expectations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lb.sim import load_scenario, run_scenario

SCENARIOS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs" / "scenarios").glob("*.yaml")
    if not p.name.endswith(".lb.yaml")
)


def test_the_six_stories_are_there() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "reference-two-datacenters",
        "replicas-one-tunnel",
        "tunnel-per-host",
        "health-route",
        "health-route-fixed",
        "monitor-group",
        "affinity-none",
        "affinity-temporary",
        "affinity-sticky",
        "flapping",
        "flapping-hysteresis",
        "flapping-damped",
        "passive-health",
        "slow-start",
        "geo-fallback",
    } <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_meets_its_expectations(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.expectations, "every shipped scenario carries expectations"
    report = run_scenario(scenario)
    failed = [f"{v.name}: {v.detail}" for v in report.verdicts if not v.ok]
    assert not failed, failed


def test_health_route_contrast() -> None:
    """Scenario 3: the same outage; only the monitor of the application path fails over."""
    root = SCENARIOS[0].parent
    green = run_scenario(load_scenario(root / "health-route.yaml")).data
    fixed = run_scenario(load_scenario(root / "health-route-fixed.yaml")).data
    assert green["failovers"][0]["detected_at"] is None
    assert fixed["failovers"][0]["detected_at"] is not None
    assert green["statuses"].get("502", 0) > 5 * fixed["statuses"].get("502", 0)


def test_passive_health_contrast() -> None:
    """Scenario 3d: the same outage as health-route.yaml; passive health ejects the endpoint
    its green monitor keeps in, after a handful of 502s instead of the whole outage."""
    root = SCENARIOS[0].parent
    green = run_scenario(load_scenario(root / "health-route.yaml")).data
    passive = run_scenario(load_scenario(root / "passive-health.yaml")).data
    assert green["statuses"].get("502", 0) > 100 * passive["statuses"].get("502", 0) > 0
    ejections = [t for t in passive["transitions"] if t["vantage"] == "passive"]
    assert [(t["to"], t["reason"].split(",")[0]) for t in ejections] == [
        ("unhealthy", "passive: 5 consecutive 502"),
        ("healthy", "passive: ejection of 37.5s over"),
        ("unhealthy", "passive: 5 consecutive 502"),
    ]


def test_monitor_group_contrast() -> None:
    """Scenario 3c: the health route alone stays green; grouped with a critical application
    member (R16) the same outage fails over."""
    root = SCENARIOS[0].parent
    green = run_scenario(load_scenario(root / "health-route.yaml")).data
    grouped = run_scenario(load_scenario(root / "monitor-group.yaml")).data
    assert green["failovers"][0]["detected_at"] is None
    assert grouped["failovers"][0]["detected_at"] is not None
    assert green["statuses"].get("502", 0) > 5 * grouped["statuses"].get("502", 0)


def test_affinity_modes_contrast() -> None:
    """Scenario 4: none shows errors, temporary hides them, sticky moves the sessions."""
    root = SCENARIOS[0].parent
    data = {
        mode: run_scenario(load_scenario(root / f"affinity-{mode}.yaml")).data["affinity"]
        for mode in ("none", "temporary", "sticky")
    }
    assert data["none"]["pinned_errors"] > 0 and data["none"]["broken"] == 0
    assert data["temporary"]["served_elsewhere"] > 0 and data["temporary"]["broken"] == 0
    assert data["sticky"]["rewritten"] > 0 and data["sticky"]["broken"] > 0


def test_flap_damping_contrast() -> None:
    """Scenario 5c: the flapping endpoint of 5a with damping on: fewer transitions, fewer
    requests meeting a refusal (retried), and the suppression is a transition with its reason."""
    root = SCENARIOS[0].parent
    plain = run_scenario(load_scenario(root / "flapping.yaml")).data
    damped = run_scenario(load_scenario(root / "flapping-damped.yaml")).data

    def flips(data: dict[str, Any]) -> int:
        return sum(1 for t in data["transitions"] if t["vantage"] == "*")

    assert flips(damped) < flips(plain) / 2
    assert damped["errors"] <= plain["errors"]
    assert damped["retries"] < plain["retries"] / 2
    suppressed = [t for t in damped["transitions"] if t["vantage"] == "damping"]
    assert suppressed and suppressed[0]["to"] == "unhealthy"
    assert "above suppress 2.5" in suppressed[0]["reason"]
    assert not any(t["vantage"] == "damping" for t in plain["transitions"])
