"""Scenario mistakes are reported like configuration mistakes: file, line, dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import write

from lb.config.errors import ConfigError, Problem
from lb.sim import load_scenario

HEAD = """\
config: lb.yaml
duration: 60
traffic:
  FRA: {rate: 10}
"""


def problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return info.value.problems


def only(path: Path) -> Problem:
    found = problems(path)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_unknown_tunnel_names_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "timeline:\n  - {at: 10, tunnel: tx, do: refuse}\n")
    p = only(path)
    assert (p.file, p.line, p.path) == (str(path), 6, "timeline[0].tunnel")
    assert p.message == "unknown tunnel 'tx' (known: ta, tb)"


def test_unknown_replica_and_endpoint(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "timeline:\n"
        + "  - {at: 10, replica: ta/r9, do: refuse}\n"
        + "  - {at: 10, endpoint: main/zz, do: disable}\n",
    )
    found = problems(path)
    assert [(p.line, p.path) for p in found] == [
        (6, "timeline[0].replica"),
        (7, "timeline[1].endpoint"),
    ]
    assert found[0].message == "unknown replica of tunnel 'ta': 'r9' (known: r1, r2)"
    assert "unknown endpoint 'main/zz'" in found[1].message


def test_a_tunnel_target_naming_a_replica_is_refused_at_its_line(tmp_path: Path) -> None:
    """``tunnel: T/R`` would mean the whole tunnel and one replica at once: refused, with the
    two keys that say each; ``replica: T/R`` and ``origin: T/R`` keep their meaning."""
    path = write(
        tmp_path,
        HEAD
        + "timeline:\n"
        + "  - {at: 10, replica: ta/r1, do: status, status: 503}\n"
        + "  - {at: 10, tunnel: ta/r1, do: status, status: 503}\n"
        + "  - {at: 10, origin: ta/r1, do: status, status: 503}\n",
    )
    p = only(path)
    assert (p.file, p.line, p.path) == (str(path), 7, "timeline[1].tunnel")
    assert p.message == (
        "tunnel: names a whole tunnel, not a replica: use replica: ta/r1 for one replica, "
        "tunnel: ta for the whole tunnel"
    )
    assert "\n" not in str(p)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("typo/r1", "unknown tunnel 'typo' (known: ta, tb)"),
        ("ta/", "tunnel: names a whole tunnel, not a replica: use tunnel: ta for the whole tunnel"),
        (
            "ta/r9",
            "tunnel: names a whole tunnel, not a replica: use tunnel: ta for the whole tunnel",
        ),
    ],
)
def test_a_tunnel_target_hints_replica_only_for_a_replica_the_tunnel_has(
    tmp_path: Path, target: str, message: str
) -> None:
    """The tunnel is resolved first (an unknown one is said as such), and ``replica: T/R``
    is advised only for a replica ``T`` has."""
    path = write(tmp_path, HEAD + f"timeline:\n  - {{at: 10, tunnel: {target}, do: refuse}}\n")
    p = only(path)
    assert (p.line, p.path, p.message) == (6, "timeline[0].tunnel", message)


def test_time_after_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "timeline:\n  - {at: 61, tunnel: ta, do: refuse}\n")
    p = only(path)
    assert (p.line, p.path) == (6, "timeline[0].at")
    assert "after the end (60 s)" in p.message


def test_until_before_at(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "timeline:\n  - {at: 30, tunnel: ta, do: refuse, until: 20}\n")
    assert only(path).path == "timeline[0].until"


def test_bad_value_and_typo_are_reported_by_the_shared_parser(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD.replace("{rate: 10}", "{rate: 10, cookeis: 0.5}")
        + "timeline:\n  - {at: 10, tunnel: ta, do: explode}\n",
    )
    found = {p.path: p for p in problems(path)}
    assert 'did you mean "cookies"' in found["traffic.FRA.cookeis"].message
    assert found["traffic.FRA.cookeis"].line == 4
    assert "must be one of" in found["timeline[0].do"].message


def test_unknown_data_center_and_negative_rate(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD.replace("FRA: {rate: 10}", "FRX: {rate: -1}"))
    found = {p.path: p.message for p in problems(path)}
    assert "unknown data center 'FRX'" in found["traffic.FRX"]
    assert "between 0 and" in found["traffic.FRX.rate"]


def test_partition_needs_seen_from_and_known_places(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "timeline:\n"
        + "  - {at: 10, tunnel: ta, do: partition}\n"
        + "  - {at: 10, tunnel: ta, do: refuse, seen_from: [NOWHERE]}\n",
    )
    found = {p.path: p.message for p in problems(path)}
    assert "needs seen_from" in found["timeline[0].seen_from"]
    assert "neither a data center nor a vantage point" in found["timeline[1].seen_from"]


def test_expectation_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "expect:\n"
        + "  - share: {pool: nope, at_least: 0.5}\n"
        + "  - drained: {endpoint: main/a}\n"
        + "  - errors: {between: [10, 5], at_most: 1}\n"
        + "  - {share: {pool: main, at_least: 2}}\n",
    )
    found = {p.path: p for p in problems(path)}
    assert "unknown pool 'nope'" in found["expect[0].share.pool"].message
    assert "needs within" in found["expect[1].drained"].message
    assert found["expect[2].errors.between"].line == 8
    assert "between 0 and 1" in found["expect[3].share.at_least"].message


def test_every_problem_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "timeline:\n"
        + "  - {at: 10, tunnel: tx, do: refuse}\n"
        + "  - {at: 99, tunnel: ta, do: refuse}\n"
        + "expect:\n  - probes: {}\n",
    )
    assert len(problems(path)) == 3


def test_problem_in_the_referenced_config_points_into_it(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD, config="pools:\n  - name: p\n    origins: []\n    monitor: zz\n")
    found = problems(path)
    assert found and all(p.file == str(tmp_path / "lb.yaml") for p in found)


def test_a_referenced_config_that_cannot_be_read_is_named_at_its_line(tmp_path: Path) -> None:
    """It was reported as the missing file alone, without the scenario line that named it."""
    path = write(tmp_path, "# one line first\n" + HEAD.replace("lb.yaml", "gone.yaml"))
    p = only(path)
    assert (p.file, p.line, p.path) == (str(path), 2, "config")
    assert p.message == f"{tmp_path / 'gone.yaml'}: no such file"


def test_problem_in_an_inline_config_is_under_config(tmp_path: Path) -> None:
    body = """\
    duration: 60
    traffic:
      FRA: {rate: 10}
    config:
      monitors:
        - {id: m, interval: 3}
      pools:
        - {name: p, monitor: m, origins: [{name: a, address: 192.0.2.1}]}
      load_balancers:
        - {name: app.example.com, proxied: true, default_pools: [p], fallback_pool: p}
    """
    path = write(tmp_path, body)
    p = only(path)
    assert (p.file, p.line, p.path) == (str(path), 6, "config.monitors[0].interval")


def test_missing_file_and_yaml_syntax(tmp_path: Path) -> None:
    assert "no such file" in only(tmp_path / "missing.yaml").message
    bad = tmp_path / "bad.yaml"
    bad.write_text("duration: [1,\n")
    assert "YAML syntax error" in only(bad).message


def test_a_run_too_large_to_finish_is_refused_at_the_largest_rate(tmp_path: Path) -> None:
    """rate x duration summed over data centers: 6e8 + 5e8 requests > MAX_SIMULATED (1e9)."""
    body = "config: lb.yaml\nduration: 10000\ntraffic:\n  FRA: {rate: 60000}\n"
    body += "  IAD:\n    rate: [{at: 0, rate: 0}, {at: 5000, rate: 100000}]\n"
    p = only(write(tmp_path, body))
    assert (p.line, p.path) == (4, "traffic.FRA.rate")
    assert p.message == (
        "1,100,000,000 requests over 10,000 s (rate x duration, summed over data centers) is "
        "more than a run may simulate (1,000,000,000, about an hour); lower the rate or the "
        "duration"
    )


def test_sessions_count_and_a_run_at_the_bound_loads(tmp_path: Path) -> None:
    at_bound = "config: lb.yaml\nduration: 10000\ntraffic:\n  FRA: {rate: 100000}\n"
    assert load_scenario(write(tmp_path, at_bound)).duration == 10000
    over = at_bound.replace("rate: 100000}", "rate: 100000, sessions: {rate: 1, duration: 5}}")
    assert only(write(tmp_path, over)).path == "traffic.FRA.rate"
