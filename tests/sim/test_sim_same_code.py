"""The simulator runs the LB's own components: no copy of health or steering logic.

Two guards: the decisions and checks of a run are counted at the real components (every
simulated request is one ``Router.decide`` call; every check is one ``run_check`` call of the
real scheduler), and no simulator module defines or imports the core's internals.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import monitors.scheduler
import monitors.transport
import steering.router
from lb.sim import load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_every_request_is_a_router_decision_and_every_check_the_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = {"decide": 0, "retry": 0, "check": 0}
    decide, retry = steering.router.Router.decide, steering.router.Router.retry
    run_check = monitors.transport.run_check

    def counting_decide(self: Any, *a: Any, **kw: Any) -> Any:
        counts["decide"] += 1
        return decide(self, *a, **kw)

    def counting_retry(self: Any, *a: Any, **kw: Any) -> Any:
        counts["retry"] += 1
        return retry(self, *a, **kw)

    async def counting_check(*a: Any, **kw: Any) -> Any:
        counts["check"] += 1
        return await run_check(*a, **kw)

    monkeypatch.setattr(steering.router.Router, "decide", counting_decide)
    monkeypatch.setattr(steering.router.Router, "retry", counting_retry)
    monkeypatch.setattr(monitors.scheduler, "run_check", counting_check)
    path = ROOT / "configs/scenarios/flapping.yaml"
    data = run_scenario(load_scenario(path)).data
    assert counts["decide"] == data["requests"]
    assert counts["retry"] >= data["retries"] > 0
    # one pool per endpoint here, so every applied result is one real check; the last checks
    # may still be pending when the run ends; each check makes one or more attempts
    assert 0 < data["checks"] <= counts["check"] <= data["probes"]


FORBIDDEN_NAMES = {"Check", "majority", "HealthBook", "Router", "Scheduler", "run_check", "judge"}
FORBIDDEN_IMPORTS = {"lb.core.health.Check", "lb.core.health.majority", "steering.pick"}


@pytest.mark.parametrize("path", sorted((ROOT / "lb" / "sim").glob("*.py")), ids=lambda p: p.name)
def test_no_copy_of_core_logic(path: Path) -> None:
    tree = ast.parse(path.read_text())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    assert not defined & FORBIDDEN_NAMES, f"{path.name} defines {defined & FORBIDDEN_NAMES}"
    imported: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            imported.update(f"{n.module}.{a.name}" for a in n.names)
            imported.add(n.module)
    assert not imported & FORBIDDEN_IMPORTS, f"{path.name} imports {imported & FORBIDDEN_IMPORTS}"
