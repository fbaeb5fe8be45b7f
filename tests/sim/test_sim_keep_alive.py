"""Pooled connections an endpoint closes (``network.keep_alive``) in the simulator.

The simulator follows the proxy's attempt policy (``lb/core/attempts.py``): a request that
meets the race of an endpoint closing its pooled connection is retried on a fresh connection,
so users see no error, and the report counts ``stale_retries``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import CONFIG, scenario

from lb.config import ConfigError
from lb.sim import run_scenario
from lb.sim.network import Network

BASE = """\
config: lb.yaml
duration: 120
seed: 4
report_interval: 30
tick: 0.01
traffic:
  FRA: {rate: 0.4, clients: 50}
"""


def run(tmp_path: Path, keep_alive: str, config: str = CONFIG) -> dict[str, object]:
    body = BASE + f"network:\n  keep_alive:\n    {keep_alive}\n"
    return run_scenario(scenario(tmp_path, body, config=config)).data


def test_random_closes_are_retried_fresh_and_cost_no_error(tmp_path: Path) -> None:
    body = BASE.replace("rate: 0.4", "rate: 100") + (
        "network:\n  keep_alive:\n    tb: {idle: 5, random: 1}\n"
    )
    data = run_scenario(scenario(tmp_path, body)).data
    assert data["errors"] == 0 and data["retries"] == 0
    # about random * rtt of the reused requests to b race (1 x 0.02 of ~6,000)
    assert 60 <= data["stale_retries"] <= 180


def test_the_idle_close_races_only_near_its_timeout(tmp_path: Path) -> None:
    """Sparse traffic (a request every 2.5 s, a random endpoint): gaps near 5 s race."""
    near = run(tmp_path, "tb: {idle: 4.98}")  # 5 s gaps less the 20 ms answer: in the window
    far = run(tmp_path, "tb: {idle: 3.5}")  # every gap is far from 3.5 s
    assert near["errors"] == far["errors"] == 0
    assert near["stale_retries"] > 0
    assert far["stale_retries"] == 0


def test_an_announced_timeout_or_a_short_idle_bound_prevents_the_race(tmp_path: Path) -> None:
    assert run(tmp_path, "tb: {idle: 4.98, announce: true}")["stale_retries"] == 0
    short = CONFIG + "engine: {upstream_idle_timeout: 2}\n"
    assert run(tmp_path, "tb: {idle: 4.98, random: 5}", config=short)["stale_retries"] == 0


def test_runs_repeat_exactly(tmp_path: Path) -> None:
    body = BASE + "network:\n  keep_alive:\n    main/b: {idle: 4.98, random: 0.5}\n"
    first = run_scenario(scenario(tmp_path, body)).data
    assert first["stale_retries"] > 0
    assert run_scenario(scenario(tmp_path, body)).data == first


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nope: {idle: 5}", "network.keep_alive.nope: unknown tunnel 'nope'"),
        ("main/zz: {idle: 5}", "network.keep_alive[\"main/zz\"]: unknown endpoint 'main/zz'"),
        ("tb: {announce: true}", "network.keep_alive.tb.announce: needs idle"),
        ("tb: {idle: 0}", "network.keep_alive.tb.idle"),
    ],
)
def test_bad_entries_are_reported(tmp_path: Path, entry: str, message: str) -> None:
    body = BASE + f"network:\n  keep_alive:\n    {entry}\n"
    with pytest.raises(ConfigError) as caught:
        scenario(tmp_path, body)
    assert message in str(caught.value)


def test_the_network_keeps_the_resolved_entries(tmp_path: Path) -> None:
    body = BASE + "network:\n  keep_alive:\n    tb: {idle: 5, random: 0.5}\n"
    network = Network(scenario(tmp_path, body))
    [(address, keep)] = network.keep_alive.items()
    assert address.startswith("bbbbbbbb") and (keep.idle, keep.random) == (5.0, 0.5)
