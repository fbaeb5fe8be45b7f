"""Passive health learns how an attempt ended when it ends, in the simulator as in the proxy.

The proxy calls ``Engine.outcome`` when the answer's head arrives, the connection fails or
the deadline fires: the attempt's start plus the latency the network gives it.  A retry
starts when the failed attempt ended.  The simulator dates every outcome the same way
(``lb.sim.traffic.PendingOutcomes``), not at the request's start.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sim_builders import CONFIG, scenario

import lb.engine
import lb.sim.traffic
from lb.core.attempts import Failure
from lb.sim import run_scenario
from lb.sim.scenario import load_scenario

# The monitors probe a health route cloudflared answers itself, so they stay green: only
# passive health reacts to what users get.
PASSIVE = (
    CONFIG.replace("Host: [app.example.com]", "Host: [health.example.com]", 1).replace(
        ", header: {Host: [app.example.com]}}", "}"
    )
    + "engine: {passive_health: {consecutive_5xx: 5}}\n"
)
BASE = """\
config: lb.yaml
duration: 40
seed: 5
report_interval: 10
traffic:
  FRA: {rate: 10, clients: 1}
network:
  rtt: 0.02
  ingress:
    ta:
      - {hostname: health.example.com, service: "http_status:200"}
      - {hostname: app.example.com, service: origin}
      - {service: "http_status:404"}
    tb:
      - {hostname: health.example.com, service: "http_status:200"}
      - {hostname: app.example.com, service: origin}
      - {service: "http_status:404"}
"""


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``Engine.outcome`` call, with its endpoint and whether it ejected."""
    calls: list[dict[str, Any]] = []
    outcome = lb.engine.Engine.outcome

    def recording(self: Any, pool: str, endpoint: str, **kw: Any) -> Any:
        events = outcome(self, pool, endpoint, **kw)
        calls.append({"endpoint": endpoint, "ejected": bool(events), **kw})
        return events

    monkeypatch.setattr(lb.engine.Engine, "outcome", recording)
    return calls


def test_a_slow_502_reaches_passive_health_when_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application behind tb refuses from 20 s and its answers take 2 s more: cloudflared's
    502 reaches the proxy 2.02 s after each request began, so no 502 is counted before
    22.02 s, and the ejection (5 in a row) comes after that, having cost every request b
    took meanwhile."""
    calls = _recording(monkeypatch)
    timeline = (
        "timeline:\n"
        "  - {at: 20, origin: tb, do: latency, latency: 2}\n"
        "  - {at: 20, origin: tb, do: refuse}\n"
    )
    data = run_scenario(scenario(tmp_path, BASE + timeline, config=PASSIVE)).data
    bad = [c for c in calls if c["status"] == 502]
    assert bad and all(c["endpoint"] == "b" for c in bad)
    assert min(c["now"] for c in bad) >= 20 + 2.02 - 1e-9, bad[0]
    ejected = [c for c in calls if c["ejected"]]
    assert ejected and ejected[0]["now"] >= 22.02 - 1e-9
    # every request b took between 20 s and the ejection's news is a 502 users got
    assert data["errors"] == data["statuses"]["502"] >= len(bad) >= 5
    # outcomes come in time order, as the proxy's do
    times = [c["now"] for c in calls]
    assert times == sorted(times)


def test_a_retry_starts_when_the_failed_attempt_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request per tick, at the tick's start (10/s, 0.1 s ticks).  From 20 s ta refuses
    connections after 3 s (an edge latency); the retry to b starts then.  So a's refusals
    are told 3.02 s after their request began, and b's answers to the retries 3.04 s after:
    the refusal's time plus b's round trip, never the request's start."""
    calls = _recording(monkeypatch)
    timeline = (
        "timeline:\n"
        "  - {at: 20, tunnel: ta, do: latency, latency: 3}\n"
        "  - {at: 20, tunnel: ta, do: refuse}\n"
    )
    data = run_scenario(scenario(tmp_path, BASE + timeline, config=PASSIVE)).data
    assert data["retries"] > 0

    def offset(now: float) -> float:
        """How long after the start of its tick (its request's start) an outcome came."""
        return round((now + 1e-9) % 0.1, 6)

    refused = [c for c in calls if c["failure"] is Failure.CONNECT_REFUSED]
    assert len(refused) == data["retries"]
    assert {offset(c["now"]) for c in refused} == {0.02}  # 3.02 s: a multiple of 0.1 + 0.02
    assert all(c["now"] >= 23.02 - 1e-9 for c in refused)
    at_b = [offset(c["now"]) for c in calls if c["endpoint"] == "b" and c["now"] >= 23.02]
    assert at_b.count(0.04) == data["retries"]  # each retry: 3.02 s, then b's 0.02 s
    assert set(at_b) == {0.02, 0.04}  # the rest: first attempts at b, one round trip


def test_outcomes_still_in_flight_at_the_end_are_not_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt is one outcome, except those whose answer would come after the run's
    end: they are left untold (the last requests, less than a round trip before it)."""
    calls = _recording(monkeypatch)
    pending: list[lb.sim.traffic.PendingOutcomes] = []
    init = lb.sim.traffic.PendingOutcomes.__init__

    def keeping(self: lb.sim.traffic.PendingOutcomes) -> None:
        init(self)
        pending.append(self)

    monkeypatch.setattr(lb.sim.traffic.PendingOutcomes, "__init__", keeping)
    data = run_scenario(scenario(tmp_path, BASE, config=PASSIVE)).data
    (left,) = pending
    assert all(item[0] > 40 for item in left.items)
    assert len(calls) + len(left.items) == data["requests"]
    assert all(c["now"] <= 40 for c in calls)


def _passive_health_errors(tmp_path: Path, rtt: str) -> float:
    """Errors of configs/scenarios/passive-health.yaml with 3 consecutive 502 ejecting, the
    outage from 32 s and round trip ``rtt``: the third 502 of each run goes at the third
    request of a tick, so its answer is due exactly when the fifth request goes, a sum that
    rounds one way or the other by the tick."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "configs/scenarios/passive-health.yaml").read_text()
    text = text.replace("network:\n", f"network:\n  rtt: {rtt}\n", 1)
    text = text.replace("consecutive_5xx: 5", "consecutive_5xx: 3").replace("{at: 30,", "{at: 32,")
    path = tmp_path / rtt / "passive-health.yaml"
    path.parent.mkdir()
    path.write_text(text)
    measured = run_scenario(load_scenario(path)).data["expectations"][1]["measured"]
    assert isinstance(measured, float)
    return measured


def test_an_outcome_due_as_a_request_goes_is_heard_first(tmp_path: Path) -> None:
    """100 requests a second, 0.01 s apart, 0.02 s round trip: the answer to a request comes
    exactly when the next but one goes.  It is heard first (``lb.sim.network.TIE``), as when
    it comes a hair earlier; a hair later, that request goes first and meets the ejected
    endpoint's 502 once more per ejection (two ejections in the run)."""
    early = _passive_health_errors(tmp_path, "0.0199999")
    assert _passive_health_errors(tmp_path, "0.02") == early
    assert _passive_health_errors(tmp_path, "0.0200001") == early + 2


def test_the_tie_rule_holds_whichever_way_the_sums_round() -> None:
    """0.1 + 0.2 is a hair above 0.3 in floats: an outcome and an attempt's end due then are
    settled at 0.3 all the same."""
    told: list[float] = []
    finished: list[object] = []
    engine = SimpleNamespace(outcome=lambda *a, now, **kw: told.append(now) or False)
    ep = SimpleNamespace(pool="p", name="e")
    pending = lb.sim.traffic.PendingOutcomes()
    pending.add(0.1 + 0.2, cast(Any, engine), cast(Any, ep), 502)
    pending.settle(0.3)
    assert told == [0.1 + 0.2]
    flight = lb.sim.traffic.InFlight(cast(Any, SimpleNamespace(pools=[], load_balancers=[])))
    live = SimpleNamespace(started=lambda ep: None, finished=finished.append)
    flight.start(cast(Any, live), cast(Any, ep), 0.1, 0.2)
    flight.settle(0.3)
    assert finished == [ep]
