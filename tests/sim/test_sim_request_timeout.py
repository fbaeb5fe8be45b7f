"""The proxy's request timeout in the simulator: a user's answer too slow to come is a 524.

The real proxy (lb/proxy/replies.py, ``timed_out``) answers 524 when no response head came
``engine.limits.request_timeout`` after the request was sent, reports the attempt to passive
health as ``RESPONSE_TIMEOUT`` and never retries it.  The simulator does the same for a
``latency`` above the request timeout and for an origin that holds the request
(``blackhole``); probes keep their monitor's own ``timeout``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sim_builders import CONFIG, TUNNEL_B, scenario

import lb.engine
import lb.sim.traffic
from lb.config.model import RetryOn
from lb.core.attempts import Failure
from lb.sim import Scenario, run_scenario
from lb.sim.network import HANG, Network

BASE = """\
config: lb.yaml
duration: 60
seed: 11
report_interval: 10
traffic:
  FRA: {rate: 100, clients: 200}
network:
  ingress:
    tb:
      - {hostname: health.example.com, service: "http_status:200"}
      - {hostname: app.example.com, service: origin}
      - {service: "http_status:404"}
"""
# The monitors probe a health route that cloudflared answers itself (no Host override on
# the endpoints, which would send the probes to the application), so they stay green while
# the application behind tb is slow: b keeps its share, and users meet every timeout.
HEALTH_ROUTE = (
    CONFIG.replace("Host: [app.example.com]", "Host: [health.example.com]", 1).replace(
        ", header: {Host: [app.example.com]}}", "}"
    )
    + "engine: {limits: {request_timeout: 5}}\n"
)
SLOW = "timeline:\n  - {at: 20, origin: tb, do: latency, latency: 8, until: 40}\n"
PASSIVE = HEALTH_ROUTE.replace(
    "engine: {limits: {request_timeout: 5}}",
    "engine: {limits: {request_timeout: 5}, passive_health: {consecutive_5xx: 5}}",
)
HOLD = "timeline:\n  - {at: 20, origin: tb, do: blackhole, until: 40}\n"


def test_the_network_times_out_user_answers_only(tmp_path: Path) -> None:
    body = BASE + (
        "timeline:\n"
        "  - {at: 10, origin: tb, do: latency, latency: 5}\n"
        "  - {at: 20, origin: tb, do: latency, latency: 8}\n"
        "  - {at: 30, tunnel: tb, do: latency, latency: 3}\n"
        "  - {at: 30, origin: tb, do: latency, latency: 3}\n"
        "  - {at: 40, origin: tb, do: recover}\n"
        "  - {at: 40, tunnel: tb, do: blackhole}\n"
    )
    sc = scenario(tmp_path, body, config=HEALTH_ROUTE)
    network = Network(sc)
    address = f"{TUNNEL_B}.cfargotunnel.com"

    def at(t: float, *, user: bool) -> tuple[int, float, str]:
        (a,) = network.answers(address, ("FRA",), "FRA", "app.example.com", "/", t, user=user)
        return a.status, round(a.latency, 6), a.failure

    rtt = sc.rtt
    # at the limit exactly the answer comes: the proxy's watchdog never fires early
    assert at(15, user=True) == (200, round(rtt + 5, 6), "")
    # above it, the proxy gives up request_timeout after sending (one rtt in): its 524
    assert at(25, user=True) == (524, round(rtt + 5, 6), HANG)
    assert at(25, user=False) == (200, round(rtt + 8, 6), "")  # a probe's own timeout rules
    # edge and origin latency add up
    assert at(35, user=True) == (524, round(rtt + 5, 6), HANG)
    # a blackholed connection is connect_timeout's 522, whatever the path's latency: the
    # proxy's connect timeout (5 s by default) runs from the dial
    assert at(45, user=True) == (522, 5.0, "blackhole")


def test_a_latency_above_the_request_timeout_gives_524_while_it_lasts(tmp_path: Path) -> None:
    data = run_scenario(scenario(tmp_path, BASE + SLOW, config=HEALTH_ROUTE)).data
    # the health route keeps b's monitor green: only the users see the timeouts
    assert [t["to"] for t in data["transitions"] if t["endpoint"] == "b"] == ["healthy"] * 2
    assert data["retries"] == data["retry_on_retries"] == 0
    assert data["statuses"] == {"524": data["errors"]}
    for w in data["windows"]:
        if 20 <= w["start"] < 40:  # every request b takes times out, and only those
            assert w["errors"] == w["errors_by_endpoint"]["main/b"] == w["by_endpoint"]["main/b"]
            assert w["errors"] > 100
        else:  # before and after: b answers 200 again
            assert w["errors"] == 0 and w["by_endpoint"]["main/b"] > 100


def test_a_latency_within_the_request_timeout_is_answered(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, origin: tb, do: latency, latency: 5, until: 40}\n"
    data = run_scenario(scenario(tmp_path, body, config=HEALTH_ROUTE)).data
    assert data["errors"] == 0 and data["statuses"] == {}


@pytest.mark.parametrize("timeline", [SLOW, HOLD], ids=["latency", "blackhole"])
def test_passive_health_ejects_on_timeouts(tmp_path: Path, timeline: str) -> None:
    sc = scenario(tmp_path, BASE + timeline, config=PASSIVE)
    data = run_scenario(sc).data
    ejections = _ejections(data)
    assert ejections, data["transitions"]
    assert all(t["endpoint"] == "b" for t in ejections)
    # The proxy learns of a timeout when it gives up (rtt + request_timeout after the
    # attempt began), not when the request starts: the first five requests b takes from
    # 20 s eject it a little after 25 s, and every request it took until then is a 524.
    first = ejections[0]
    assert 20 + 5 + sc.rtt <= first["at"] < 25.5, first
    assert first["reason"].startswith("passive: 5 consecutive 524,")
    early = sum(w["errors"] for w in data["windows"] if w["start"] == 20)
    assert early > 100, data["windows"]
    assert data["statuses"] == {"524": data["errors"]}


def _retrying_524(sc: Scenario) -> Scenario:
    """``sc`` with ``retry_on.statuses`` naming 524 on its load balancer.

    The configuration check allows only 502-504 there, so this is built in code: it shows
    that the attempt policy itself keeps a timeout from being retried (a timeout is
    ``RESPONSE_TIMEOUT``, never the *status* of a whole response), not that check alone."""
    (balancer,) = sc.config.load_balancers
    rule = RetryOn(statuses=(502, 524))
    config = dataclasses.replace(
        sc.config, load_balancers=(dataclasses.replace(balancer, retry_on=rule),)
    )
    return dataclasses.replace(sc, config=config)


@pytest.mark.parametrize("timeline", [SLOW, HOLD], ids=["latency", "blackhole"])
def test_retry_on_never_retries_a_timeout_even_when_it_names_524(
    tmp_path: Path, timeline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []
    real = lb.sim.traffic.next_step

    def recording(failure: Any, **kw: Any) -> Any:
        failures.append(str(failure))
        return real(failure, **kw)

    monkeypatch.setattr(lb.sim.traffic, "next_step", recording)
    sc = _retrying_524(scenario(tmp_path, BASE + timeline, config=HEALTH_ROUTE))
    data = run_scenario(sc).data
    assert data["retry_on_retries"] == data["retry_budget_refusals"] == 0
    assert data["statuses"] == {"524": data["errors"]} and data["errors"] > 300
    # each timed-out attempt went to the policy as the proxy's failure, and was answered
    assert failures and set(failures) == {"response_timeout"}
    assert len(failures) == data["errors"]


def test_a_timed_out_attempt_is_in_flight_until_the_proxy_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """least_outstanding_requests reads the in-flight counts: an attempt at slow b counts
    ``rtt + request_timeout`` (the dial, then the deadline), not the 8 s it would have
    waited."""
    config = HEALTH_ROUTE.replace(
        "    monitor: app\n",
        "    monitor: app\n    origin_steering: {policy: least_outstanding_requests}\n",
    )
    held: list[float] = []
    start = lb.sim.traffic.InFlight.start

    def recording(self: Any, live: Any, ep: Any, now: float, latency: float) -> None:
        if ep.name == "b":
            held.append(latency)
        start(self, live, ep, now, latency)

    monkeypatch.setattr(lb.sim.traffic.InFlight, "start", recording)
    sc = scenario(tmp_path, BASE + SLOW, config=config)
    data = run_scenario(sc).data
    assert data["statuses"]["524"] > 0
    assert max(held) == pytest.approx(sc.rtt + 5)


def test_a_timed_out_connection_is_not_pooled_again(tmp_path: Path) -> None:
    """The proxy discards the connection of a timed-out attempt (lb/proxy/replies.py), so
    it is never reused and never meets an idle close.  Sparse traffic (a request every
    2.5 s, a random endpoint) to b, whose application holds every request: were each
    timed-out connection released when the proxy gave up (2.52 s in), the next request 7.5 s
    after one would find it idle 4.98 s, just as b closes it (``idle: 4.98``)."""
    body = (
        BASE.replace("duration: 60", "duration: 120")
        .replace("{rate: 100, clients: 200}", "{rate: 0.4, clients: 50}")
        .replace("seed: 11\n", "seed: 4\ntick: 0.01\n")
        .replace("network:\n", "network:\n  keep_alive:\n    tb: {idle: 4.98}\n")
        + "timeline:\n  - {at: 0, origin: tb, do: blackhole}\n"
    )
    config = HEALTH_ROUTE.replace("request_timeout: 5", "request_timeout: 2.5")
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    assert data["statuses"] == {"524": data["errors"]} and data["errors"] > 5
    assert data["stale_retries"] == 0


def test_a_session_upgrade_slower_than_the_request_timeout_is_refused(tmp_path: Path) -> None:
    """A long-lived session opens with a request (its upgrade), which times out like any
    other; a session already open is spliced and no request timeout applies to it."""
    body = BASE.replace(
        "{rate: 100, clients: 200}", "{rate: 0, sessions: {rate: 1, duration: 1000}}"
    )
    data = run_scenario(scenario(tmp_path, body + SLOW, config=HEALTH_ROUTE)).data
    s = data["long_sessions"]
    assert s["opened"] + s["refused"] == 60
    assert 5 <= s["refused"] <= 15  # about half of the 20 opened on b while it is slow
    assert s["dropped"] == 0 and s["open_at_end"] == s["opened"]


def _ejections(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in data["transitions"] if t["vantage"] == "passive" and t["to"] == "unhealthy"]


# FRA sends until 22 s: b, slow from 20 s, takes about 100 requests, which time out from
# 25.02 s on, when FRA sends nothing any more.
STOPS = BASE.replace(
    "FRA: {rate: 100, clients: 200}",
    "FRA: {rate: [{at: 0, rate: 100}, {at: 22, rate: 0}], clients: 200}",
)


def test_timeouts_fire_when_the_traffic_has_stopped(tmp_path: Path) -> None:
    """The proxy gives up on a request whether or not more requests come: the timeouts of
    the requests b took before the rate stepped to 0 still eject it, at the fifth."""
    sc = scenario(tmp_path, STOPS + SLOW, config=PASSIVE)
    data = run_scenario(sc).data
    ejections = _ejections(data)
    assert [t["endpoint"] for t in ejections] == ["b"], data["transitions"]
    assert 20 + 5 + sc.rtt <= ejections[0]["at"] < 25.5, ejections
    assert data["errors"] == data["statuses"]["524"] > 50


def test_timeouts_fire_while_another_data_center_sends(tmp_path: Path) -> None:
    """FRA's timeouts are due from 25.02 s while IAD alone sends (from 24 s): they eject b
    before IAD's own requests time out (29 s), and IAD's next request sees it ejected."""
    body = STOPS.replace(
        "clients: 200}\n",
        "clients: 200}\n  IAD: {rate: [{at: 0, rate: 0}, {at: 24, rate: 100}], clients: 200}\n",
    )
    sc = scenario(tmp_path, body + SLOW, config=PASSIVE)
    data = run_scenario(sc).data
    ejections = _ejections(data)
    assert [t["endpoint"] for t in ejections] == ["b"], data["transitions"]
    assert 20 + 5 + sc.rtt <= ejections[0]["at"] < 25.5, ejections
    # FRA's 524s (about 100), then IAD's of [24, 25.2) only, about 60 (b takes half);
    # b ejected by IAD's own timeouts would have taken some 250 of IAD's requests
    assert 100 < data["errors"] == data["statuses"]["524"] < 200, data["errors"]


def test_timeouts_due_before_the_end_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 524 is one ``Engine.outcome`` call by the end of the run, those due in its last
    tick included: FRA stops at 22.08 s, the run ends at 27.1 s, and the requests b took in
    the last 0.1 s before the stop time out in (27, 27.1], after the last tick began."""
    calls: list[float] = []
    outcome = lb.engine.Engine.outcome

    def recording(self: Any, pool: str, endpoint: str, **kw: Any) -> Any:
        if kw.get("failure") is Failure.RESPONSE_TIMEOUT:
            calls.append(kw["now"])
        return outcome(self, pool, endpoint, **kw)

    monkeypatch.setattr(lb.engine.Engine, "outcome", recording)
    body = (
        STOPS.replace("{at: 22, rate: 0}", "{at: 22.08, rate: 0}").replace(
            "duration: 60", "duration: 27.1"
        )
        + "timeline:\n  - {at: 20, origin: tb, do: latency, latency: 8}\n"
    )
    sc = scenario(tmp_path, body, config=PASSIVE)
    data = run_scenario(sc).data
    assert len(calls) == data["statuses"]["524"] == data["errors"] > 50
    assert calls == sorted(calls)  # each at the time the proxy gave up, in that order


def test_a_latency_above_the_request_timeout_is_a_failover(tmp_path: Path) -> None:
    """Every answer is a 524 while it lasts, so the report measures it like a blackhole:
    failed at 20 s, detected by passive health, drained, recovered at 40 s; a latency the
    proxy waits for (at the limit exactly) fails nothing."""
    sc = scenario(tmp_path, BASE + SLOW, config=PASSIVE)
    (f,) = run_scenario(sc).data["failovers"]
    assert (f["pool"], f["endpoint"], f["failed_at"], f["recovered_at"]) == ("main", "b", 20, 40)
    assert f["cause"].startswith("latency")
    assert 20 + 5 + sc.rtt <= f["detected_at"] < 25.5
    assert f["detected_at"] <= f["drained_at"] < 26
    within = BASE + "timeline:\n  - {at: 20, origin: tb, do: latency, latency: 5, until: 40}\n"
    assert run_scenario(scenario(tmp_path, within, config=PASSIVE)).data["failovers"] == []


def test_an_edge_and_an_origin_latency_that_add_up_above_the_timeout_are_a_failover(
    tmp_path: Path,
) -> None:
    """The proxy measures the whole attempt: 1 s on the path to cloudflared (from 20 s) plus
    4.5 s in the application (from 25 s) is 5.5 s, above the 5 s request timeout, though
    neither is alone.  From 25 s every answer of b is a 524, passive health ejects it, and
    the report has the failover, from the event that made the sum too long to the one that
    ended it (the origin's recover at 35 s, the tunnel's latency lasting until 40 s)."""
    timeline = (
        "timeline:\n"
        "  - {at: 20, tunnel: tb, do: latency, latency: 1, until: 40}\n"
        "  - {at: 25, origin: tb, do: latency, latency: 4.5, until: 35}\n"
    )
    sc = scenario(tmp_path, BASE + timeline, config=PASSIVE)
    data = run_scenario(sc).data
    (f,) = data["failovers"]
    assert (f["endpoint"], f["failed_at"], f["recovered_at"]) == ("b", 25, 35)
    assert f["cause"] == "latency tunnel tb + latency origin tb"
    assert 25 + 5 + sc.rtt <= f["detected_at"] <= f["drained_at"] < 35
    assert data["statuses"] == {"524": data["errors"]} and data["errors"] > 5
    for w in data["windows"]:
        if not 20 <= w["start"] < 40:
            assert w["errors"] == 0
    # within the limit at every instant (1 s + 4 s): answered, and no failover
    within = BASE + timeline.replace("latency: 4.5", "latency: 4")
    data = run_scenario(scenario(tmp_path, within, config=PASSIVE)).data
    assert data["failovers"] == [] and data["errors"] == 0


def test_a_latency_failover_ends_when_a_smaller_latency_replaces_it(tmp_path: Path) -> None:
    """No ``recover`` ends it: a latency of 1 s replacing the 8 s one at 30 s brings the
    answers back within the timeout, and the failover ends there."""
    timeline = (
        "timeline:\n"
        "  - {at: 20, origin: tb, do: latency, latency: 8}\n"
        "  - {at: 30, origin: tb, do: latency, latency: 1}\n"
    )
    data = run_scenario(scenario(tmp_path, BASE + timeline, config=PASSIVE)).data
    (f,) = data["failovers"]
    assert (f["endpoint"], f["failed_at"], f["recovered_at"]) == ("b", 20, 30)
    assert f["cause"] == "latency origin tb"
    assert sum(w["errors"] for w in data["windows"] if w["start"] >= 30) == 0


def test_an_ejection_reaches_the_next_request_of_every_data_center(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FRA's requests are decided before IAD's in each tick: when a timeout that fires
    during FRA's share of a tick ejects b, IAD's requests of that tick are decided by the
    new router too, so no request that starts after the ejection goes to b."""
    calls: list[tuple[float, bool]] = []
    outcome = lb.engine.Engine.outcome

    def recording(self: Any, pool: str, endpoint: str, **kw: Any) -> Any:
        events = outcome(self, pool, endpoint, **kw)
        if kw.get("failure") is Failure.RESPONSE_TIMEOUT:
            calls.append((kw["now"], bool(events)))
        return events

    monkeypatch.setattr(lb.engine.Engine, "outcome", recording)
    body = BASE.replace("clients: 200}\n", "clients: 200}\n  IAD: {rate: 100, clients: 200}\n")
    sc = scenario(tmp_path, body + SLOW, config=PASSIVE)
    data = run_scenario(sc).data
    assert len(_ejections(data)) == 1 and len(calls) == data["errors"] > 400
    ejected = next(now for now, ejects in calls if ejects)
    started = [now - sc.rtt - 5 for now, _ in calls]  # when each timed-out request began
    assert max(started) <= ejected, (max(started), ejected)


def test_a_killed_members_timeouts_die_with_it(tmp_path: Path) -> None:
    """FRA's member takes b's slow requests until 22 s, then is killed at 23 s, before
    they time out: a dead process ejects nothing (the other member serves from then on,
    and its own timeouts are all that count)."""
    body = STOPS + (
        "cluster:\n"
        "  heartbeat: 1\n"
        "  members:\n"
        "    - {name: fra, datacenter: FRA}\n"
        "    - {name: ams}\n"
    )
    timeline = SLOW + "  - {at: 23, member: fra, do: kill}\n"
    data = run_scenario(scenario(tmp_path, body + timeline, config=PASSIVE)).data
    assert _ejections(data) == [], data["transitions"]
    assert data["errors"] == data["statuses"]["524"] > 50


def test_a_killed_member_hears_what_came_before_its_kill(tmp_path: Path) -> None:
    """One-second ticks: FRA's member takes b's slow requests until 22 s; they time out
    from 25.02 s on, and the member is killed at 25.9 s, a tick before 26 s applies the
    kill.  The timeouts due before 25.9 s reached it while it lived (more than five): it
    ejects b before it dies, as the proxy would have."""
    body = STOPS.replace("report_interval: 10\n", "report_interval: 10\ntick: 1\n") + (
        "cluster:\n"
        "  heartbeat: 1\n"
        "  members:\n"
        "    - {name: fra, datacenter: FRA}\n"
        "    - {name: ams}\n"
    )
    timeline = SLOW + "  - {at: 25.9, member: fra, do: kill}\n"
    data = run_scenario(scenario(tmp_path, body + timeline, config=PASSIVE)).data
    ejections = _ejections(data)
    assert ejections, data["transitions"]
    assert 25.02 <= ejections[0]["at"] <= 25.9, ejections


def test_an_application_latency_slows_no_answer_cloudflared_gives_itself(
    tmp_path: Path,
) -> None:
    """The application behind tb is slow, but users never reach it: cloudflared answers
    their host from an ``http_status:200`` ingress rule, and from 30 s the edge answers
    for the whole tunnel (a ``status`` of the tunnel).  Every answer comes in time: no
    errors, and no failover in the report."""
    body = BASE.replace(
        "      - {hostname: app.example.com, service: origin}\n",
        '      - {hostname: app.example.com, service: "http_status:200"}\n',
    )
    timeline = "timeline:\n  - {at: 20, origin: tb, do: latency, latency: 8, until: 40}\n"
    data = run_scenario(scenario(tmp_path, body + timeline, config=PASSIVE)).data
    assert data["errors"] == 0 and data["failovers"] == []
    timeline += "  - {at: 30, tunnel: tb, do: status, status: 200, until: 40}\n"
    data = run_scenario(scenario(tmp_path, BASE + timeline, config=PASSIVE)).data
    (f,) = data["failovers"]  # the application's answers until the edge answers itself
    assert (f["endpoint"], f["failed_at"], f["recovered_at"]) == ("b", 20, 30)


def test_a_slow_replica_is_a_failover_when_the_edge_skips_the_other(tmp_path: Path) -> None:
    """ta's r1 refuses from 20 s and the application behind r2 is slow: the edge sends
    every request to r2 and every user gets a 524, so the report has the failover (the
    refused replica's quick answer is not one users can get)."""
    body = BASE.replace(
        "network:\n  ingress:\n",
        "network:\n  ingress:\n    ta:\n"
        '      - {hostname: health.example.com, service: "http_status:200"}\n'
        "      - {hostname: app.example.com, service: origin}\n"
        '      - {service: "http_status:404"}\n',
        1,
    )
    timeline = (
        "timeline:\n"
        "  - {at: 20, replica: ta/r1, do: refuse, until: 40}\n"
        "  - {at: 20, origin: ta/r2, do: latency, latency: 8, until: 40}\n"
    )
    data = run_scenario(scenario(tmp_path, body + timeline, config=PASSIVE)).data
    (f,) = data["failovers"]
    assert (f["endpoint"], f["failed_at"], f["recovered_at"]) == ("a", 20, 40)
    assert f["cause"] == "latency origin ta/r2"
    assert f["detected_at"] is not None
