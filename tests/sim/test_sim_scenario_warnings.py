"""Every shipped scenario and configuration loads without a warning, except the few below
that show on purpose what the warning is about: `tunnel-lb simulate` on an example should not
print warnings a reader has to learn to ignore."""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.config import load_config
from lb.sim import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"

HEALTH_ROUTE = (
    "monitors cloudflared's http_status:200 health route (Host health.example.com) while "
    "users ask for app.example.com: the blind spot the scenario shows.  header.Host on the "
    "endpoints would move the probes to the application as well (R5), undoing the scenario"
)
WARNS_ON_PURPOSE = {
    "health-route.yaml": HEALTH_ROUTE,
    "monitor-group.yaml": HEALTH_ROUTE + " (its first member is the health route)",
    "passive-health.yaml": HEALTH_ROUTE,
    "request-timeout.yaml": HEALTH_ROUTE,
    "retry-on.yaml": HEALTH_ROUTE,
    "retry-on-truncated.yaml": HEALTH_ROUTE,
}
"""Scenario -> why it warns ("only the monitor sets a Host"), and must keep warning."""


def _scenarios() -> list[Path]:
    return sorted(p for p in SCENARIOS.glob("*.yaml") if not p.name.endswith(".lb.yaml"))


@pytest.mark.parametrize("path", _scenarios(), ids=lambda p: p.name)
def test_a_shipped_scenario_loads_without_warnings(path: Path) -> None:
    warnings = [str(w) for w in load_scenario(path).warnings]
    if path.name not in WARNS_ON_PURPOSE:
        assert warnings == []
        return
    assert warnings, f"{path.name} no longer warns: take it off WARNS_ON_PURPOSE"
    assert all("only the monitor sets a Host" in w for w in warnings), warnings


def test_the_allow_list_names_shipped_scenarios() -> None:
    assert set(WARNS_ON_PURPOSE) <= {p.name for p in _scenarios()}


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.lb.yaml")), ids=lambda p: p.name)
def test_a_configuration_among_the_scenarios_loads_without_warnings(path: Path) -> None:
    assert [str(w) for w in load_config([path]).warnings] == []
