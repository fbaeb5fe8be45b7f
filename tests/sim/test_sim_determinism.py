"""One seed and one scenario give byte-identical reports; another seed gives another run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lb.sim import load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[2] / "configs" / "scenarios"


def test_same_seed_same_bytes() -> None:
    scenario = load_scenario(ROOT / "reference-two-datacenters.yaml")
    first = run_scenario(scenario).to_json()
    assert run_scenario(scenario).to_json() == first


def test_same_seed_same_bytes_with_affinity_and_retries() -> None:
    scenario = load_scenario(ROOT / "affinity-sticky.yaml")
    assert run_scenario(scenario).to_json() == run_scenario(scenario).to_json()


def test_seed_override_changes_the_run() -> None:
    a = run_scenario(load_scenario(ROOT / "tunnel-per-host.yaml", seed=1)).data
    b = run_scenario(load_scenario(ROOT / "tunnel-per-host.yaml", seed=2)).data
    assert a["seed"] == 1 and b["seed"] == 2
    assert a["by_endpoint"] != b["by_endpoint"]
    assert a["requests"] == b["requests"]


def test_same_bytes_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    """No set or dict order leaks into the report: other processes, other hash seeds."""
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"r{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        scenario = str(ROOT / "geo-fallback.yaml")
        cmd = [sys.executable, "-m", "lb", "simulate", scenario, "--quiet", "--json", str(out)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
