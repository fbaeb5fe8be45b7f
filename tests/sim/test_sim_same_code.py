"""The simulator runs the LB's own components: no copy of health, steering or retry logic.

Four guards: the decisions and checks of a run are counted at the real components (every
simulated request is one ``Router.decide`` call; every check is one ``run_check`` call of the
real scheduler; every retry is one the attempt policy ``lb.core.attempts.next_step`` asked
for), no simulator module defines or imports the core's internals, in the proxy and the
simulator alike every function that asks the router for a retry consults the attempt policy,
and with ``passive_health`` every attempt of either is one ``Engine.outcome`` call, counted by
``lb.core.passive`` itself (a request timeout reported as the same failure by both), made when
the attempt ends (the simulator's, when that is within the run).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import lb.core.attempts
import lb.core.passive
import lb.engine
import lb.proxy.exchange
import lb.sim.traffic
import monitors.scheduler
import monitors.transport
import steering.router
from lb.core.attempts import Action, Failure
from lb.sim import load_scenario, run_scenario
from lb.sim.traffic import PendingOutcomes

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


def test_every_retry_is_one_the_attempt_policy_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy and the simulator hold the core's function itself, not a copy.
    assert lb.sim.traffic.next_step is lb.core.attempts.next_step
    assert lb.proxy.exchange.next_step is lb.core.attempts.next_step
    actions: list[Action] = []
    real = lb.core.attempts.next_step

    def counting(*a: Any, **kw: Any) -> Any:
        step = real(*a, **kw)
        actions.append(step.action)
        return step

    monkeypatch.setattr(lb.sim.traffic, "next_step", counting)
    for name in (
        "flapping.yaml",
        "keep-alive-closes.yaml",
        "retry-on.yaml",
        "retry-on-truncated.yaml",
    ):
        actions.clear()
        data = run_scenario(load_scenario(ROOT / "configs/scenarios" / name)).data
        assert actions.count(Action.FRESH) == data["stale_retries"]
        assert actions.count(Action.FAILOVER) >= data["retries"]
        # retry_on: every retry is one the policy asked for, and every RETRY was carried out
        assert actions.count(Action.RETRY) == data["retry_on_retries"]
        assert data["retries"] + data["stale_retries"] + data["retry_on_retries"] > 0


def test_every_attempt_is_one_passive_health_outcome_counted_by_the_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = {"outcome": 0, "observe": 0, "eject": 0}
    outcome, observe, eject = (
        lb.engine.Engine.outcome,
        lb.core.passive.Ejector.observe,
        lb.core.passive.Ejector.eject,
    )

    def counting_outcome(self: Any, *a: Any, **kw: Any) -> Any:
        counts["outcome"] += 1
        return outcome(self, *a, **kw)

    def counting_observe(self: Any, *a: Any, **kw: Any) -> Any:
        counts["observe"] += 1
        return observe(self, *a, **kw)

    def counting_eject(self: Any, *a: Any, **kw: Any) -> Any:
        counts["eject"] += 1
        return eject(self, *a, **kw)

    monkeypatch.setattr(lb.engine.Engine, "outcome", counting_outcome)
    monkeypatch.setattr(lb.core.passive.Ejector, "observe", counting_observe)
    monkeypatch.setattr(lb.core.passive.Ejector, "eject", counting_eject)
    pending = _pending_outcomes(monkeypatch)
    data = run_scenario(load_scenario(ROOT / "configs/scenarios/passive-health.yaml")).data
    attempts = data["requests"] + data["retries"] + data["stale_retries"]
    # the attempts whose answer would come after the run's end are the only ones not told
    assert counts["outcome"] + _after_the_end(pending, data["duration"]) == attempts > 0
    # an ejected endpoint gets no traffic, so nearly every outcome reaches an ejector
    assert 0 < counts["observe"] <= counts["outcome"]
    ejected = [
        t for t in data["transitions"] if t["vantage"] == "passive" and t["to"] == "unhealthy"
    ]
    assert counts["eject"] == len(ejected) == 2
    # the proxy makes the same call after every attempt
    tree = ast.parse((ROOT / "lb/proxy/exchange.py").read_text())
    assert "_attempts" in _functions_calling(tree, "outcome")


def _cut_in_the_stall(text: str) -> str:
    """request-timeout.yaml ending 10.25 s into the stall, its users gone 0.2 s into it: the
    last of their requests (30.19 s) times out at 40.21 s, in the run's last tick (from
    40.2 s), which has no request."""
    text = text[: text.index("expect:")]
    for old, new in (
        ("duration: 120", "duration: 40.25"),
        (", until: 90", ""),
        ("{rate: 100,", "{rate: [{at: 0, rate: 100}, {at: 30.2, rate: 0}],"),
    ):
        assert text.count(old) == 1, old  # the shipped scenario changed: cut it anew
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("cut", [False, True], ids=["shipped", "cut-in-the-stall"])
def test_a_timeout_reaches_passive_health_as_the_proxy_reports_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cut: bool
) -> None:
    """configs/scenarios/request-timeout.yaml: every 524 of a stalled application is one
    ``Engine.outcome`` call with ``Failure.RESPONSE_TIMEOUT``, the call the proxy's watchdog
    makes when it gives up on a response head (lb/proxy/replies.py, ``timed_out``), by the
    end of the run; and every attempt is one call, as in the proxy."""
    calls: list[dict[str, Any]] = []
    outcome = lb.engine.Engine.outcome

    def recording(self: Any, pool: str, endpoint: str, **kw: Any) -> Any:
        calls.append(kw)
        return outcome(self, pool, endpoint, **kw)

    monkeypatch.setattr(lb.engine.Engine, "outcome", recording)
    pending = _pending_outcomes(monkeypatch)
    path = ROOT / "configs/scenarios/request-timeout.yaml"
    if cut:
        path = tmp_path / path.name
        path.write_text(_cut_in_the_stall((ROOT / "configs/scenarios" / path.name).read_text()))
    data = run_scenario(load_scenario(path)).data
    attempts = data["requests"] + data["retries"] + data["stale_retries"]
    assert len(calls) + _after_the_end(pending, data["duration"]) == attempts > 0
    timeouts = [c for c in calls if c["status"] == 524]
    assert len(timeouts) == data["statuses"]["524"] == data["errors"] > 0
    assert all(c["failure"] is Failure.RESPONSE_TIMEOUT for c in timeouts)
    assert all(c["failure"] is None for c in calls if c["status"] != 524)
    # the proxy: the watchdog's handler reports the same failure with the same status
    tree = ast.parse((ROOT / "lb/proxy/replies.py").read_text())
    assert ("timed_out", "RESPONSE_TIMEOUT") in _outcome_failures(tree)


def _pending_outcomes(monkeypatch: pytest.MonkeyPatch) -> list[PendingOutcomes]:
    """The run's :class:`PendingOutcomes`, kept to count what it holds at the end."""
    kept: list[PendingOutcomes] = []
    init = PendingOutcomes.__init__

    def keeping(self: PendingOutcomes) -> None:
        init(self)
        kept.append(self)

    monkeypatch.setattr(PendingOutcomes, "__init__", keeping)
    return kept


def _after_the_end(kept: list[PendingOutcomes], duration: float) -> int:
    """How many outcomes the run's heap still held at the end: all due after it (few)."""
    (pending,) = kept
    assert all(item[0] > duration for item in pending.items)
    assert len(pending.items) <= 5
    return len(pending.items)


def _outcome_failures(tree: ast.AST) -> set[tuple[str, str]]:
    """(function, failure) for each ``outcome(..., failure=Failure.X)`` call in ``tree``."""
    out: set[tuple[str, str]] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in ast.walk(fn):
                if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "outcome":
                    for kw in n.keywords:
                        if kw.arg == "failure" and isinstance(kw.value, ast.Attribute):
                            out.add((fn.name, kw.value.attr))
    return out


def _functions_calling(tree: ast.AST, attr: str) -> set[str]:
    """Names of the functions in ``tree`` that call something named ``attr``."""
    out: set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in ast.walk(fn):
                if isinstance(n, ast.Call):
                    f = n.func
                    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                    if name == attr:
                        out.add(fn.name)
    return out


@pytest.mark.parametrize("path", ["lb/proxy", "lb/sim/traffic.py"])
def test_the_router_is_asked_for_a_retry_only_where_the_policy_said_so(path: str) -> None:
    # The proxy is a package of modules: every one of them is checked, so that no module
    # beside the exchange can retry on its own.
    files = sorted((ROOT / path).glob("*.py")) if (ROOT / path).is_dir() else [ROOT / path]
    retrying: set[str] = set()
    consulting: set[str] = set()
    for file in files:
        tree = ast.parse(file.read_text())
        name = file.relative_to(ROOT).as_posix()
        # hooks.retry is a notification
        retrying |= {f"{name}:{fn}" for fn in _functions_calling(tree, "retry") - {"retry"}}
        consulting |= {f"{name}:{fn}" for fn in _functions_calling(tree, "next_step")}
    assert consulting, f"{path} does not consult lb.core.attempts.next_step"
    assert retrying <= consulting, f"{path}: {sorted(retrying - consulting)} retry on their own"


FORBIDDEN_NAMES = {
    "Check",
    "majority",
    "HealthBook",
    "Router",
    "Scheduler",
    "run_check",
    "judge",
    "next_step",
    "Ejector",
    "outcome_of",
    "cap",
}
FORBIDDEN_IMPORTS = {
    "lb.core.health.Check",
    "lb.core.health.majority",
    "steering.pick",
    "lb.core.attempts.CONNECT_FAILURES",
    "lb.core.passive",
    "lb.core.passive.Ejector",
    "lb.core.passive.outcome_of",
}


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
