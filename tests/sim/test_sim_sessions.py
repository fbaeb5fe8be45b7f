"""Long-lived sessions (``traffic.<dc>.sessions``): they stay on their endpoint until it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import scenario

from lb.config.errors import ConfigError
from lb.sim import run_scenario

HEAD = """
config: lb.yaml
duration: 100
seed: 1
traffic:
  FRA: {rate: 0, sessions: {rate: 1, duration: 1000}}
"""


def long_sessions(tmp_path: Path, timeline: str) -> dict[str, object]:
    data = run_scenario(scenario(tmp_path, HEAD + timeline)).data
    out = data["long_sessions"]
    assert isinstance(out, dict)
    return out


def test_a_tunnel_failure_drops_exactly_the_sessions_open_on_it(tmp_path: Path) -> None:
    s = long_sessions(tmp_path, "timeline:\n  - {at: 50, tunnel: ta, do: refuse}\n")
    assert s["opened"] == 100
    dropped = s["dropped_by_endpoint"]
    assert isinstance(dropped, dict)
    assert set(dropped) == {"main/a"}
    # Random steering put about half of the 50 sessions open at 50 s on a; all of them go.
    assert 15 <= dropped["main/a"] <= 35
    assert s["open_at_end"] == 100 - dropped["main/a"]
    # Nothing was refused: until the monitor noticed, the zero-downtime retry moved new
    # sessions to b at their connect.
    assert s["refused"] == 0


def test_disabling_an_endpoint_keeps_its_sessions(tmp_path: Path) -> None:
    s = long_sessions(tmp_path, "timeline:\n  - {at: 50, endpoint: main/a, do: disable}\n")
    assert s["dropped"] == 0 and s["open_at_end"] == 100


def test_an_origin_down_behind_the_tunnel_drops_its_sessions_too(tmp_path: Path) -> None:
    s = long_sessions(tmp_path, "timeline:\n  - {at: 50, origin: tb, do: refuse, until: 60}\n")
    dropped = s["dropped_by_endpoint"]
    assert isinstance(dropped, dict) and set(dropped) == {"main/b"}
    # Recovery does not bring a dropped session back; new sessions that met the dead origin
    # (an HTTP answer, 502: never retried) were refused.
    assert s["open_at_end"] == s["opened"] - dropped["main/b"]
    assert s["opened"] + s["refused"] == 100


def test_sessions_end_after_their_duration(tmp_path: Path) -> None:
    body = HEAD.replace("duration: 1000", "duration: 10")
    report = run_scenario(scenario(tmp_path, body))
    s = report.data["long_sessions"]
    assert isinstance(s, dict)
    assert s["opened"] == 100 and s["completed"] == 90 and s["open_at_end"] == 10
    assert "long sessions: 100 opened, 0 dropped" in report.summary()


def test_without_sessions_the_report_has_none(tmp_path: Path) -> None:
    body = "config: lb.yaml\nduration: 5\ntraffic:\n  FRA: {rate: 10}\n"
    report = run_scenario(scenario(tmp_path, body))
    assert report.data["long_sessions"] is None
    assert "long sessions" not in report.summary()


def test_sessions_dropped_expectation(tmp_path: Path) -> None:
    body = HEAD + (
        "timeline:\n  - {at: 50, tunnel: ta, do: refuse}\n"
        "expect:\n"
        "  - {name: a loses some, sessions_dropped: {endpoint: main/a, at_least: 1}}\n"
        "  - {name: b loses none, sessions_dropped: {pool: main, at_most: 0}}\n"
    )
    verdicts = run_scenario(scenario(tmp_path, body)).verdicts
    assert [v.ok for v in verdicts] == [True, False]
    with pytest.raises(ConfigError, match="sessions_dropped does not take replica"):
        scenario(
            tmp_path,
            HEAD + "expect:\n  - sessions_dropped: {replica: ta/r1, at_most: 0}\n",
        )
