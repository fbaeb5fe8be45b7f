"""Timeouts the scenario does not explain (lb/rehearse/stalls.py): a stack the machine held
back is told from a simulator that is wrong about a fault."""

from __future__ import annotations

import os
from pathlib import Path

from lb.rehearse.stalls import cpu_times, hang_spans, probe_timeouts, unexplained, user_timeouts
from lb.sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"
REFERENCE = load_scenario(SCENARIOS / "reference-two-datacenters.yaml")
TRUNCATED = load_scenario(SCENARIOS / "retry-on-truncated.yaml")


def _series(endpoint: str, vantage: str, result: str, reason: str, n: int) -> str:
    labels = f'pool="app",endpoint="{endpoint}",vantage="{vantage}",result="{result}"'
    return f'lb_probes_total{{{labels},reason="{reason}"}} {n}'


METRICS = "\n".join(
    [
        "# HELP lb_probes_total Health checks completed, by result and reason.",
        "# TYPE lb_probes_total counter",
        _series("a", "local", "success", "", 9),
        _series("a", "local", "failure", "HTTP timeout occurred", 2),
        _series("a", "fra", "failure", "TCP timeout", 1),
        _series("b", "local", "failure", "TCP connection failed", 4),
        _series("c", "local", "failure", "HTTP timeout occurred", 0),
        'lb_probe_duration_seconds_bucket{pool="app",endpoint="a",vantage="local",le="0.5"} 9',
    ]
)


def test_only_faults_that_make_an_answer_wait_explain_a_timeout() -> None:
    """The reference blackholes dc1's tunnel from 40 s to 100 s: its timeouts then are the
    fault's; retry-on-truncated cuts c's bodies, which never makes anything wait."""
    assert hang_spans(REFERENCE) == {"dc1/tunnel-dc1": [(40.0, 100.0)]}
    assert hang_spans(TRUNCATED) == {}


def test_probe_timeouts_are_read_from_the_lbs_counter_by_endpoint() -> None:
    """Both timeout reasons, every vantage point summed; a refused check is an answer, and a
    series at zero is none."""
    assert probe_timeouts(METRICS) == {"app/a": 3}
    assert probe_timeouts("") == {}


def test_user_timeouts_are_the_522s_and_524s_received_during_the_scenario() -> None:
    lines = [
        {"event": "request", "status": 522, "endpoint": "app/c", "mono": 101.0, "duration": 1.0},
        {"event": "request", "status": 524, "endpoint": "app/c", "mono": 105.0, "duration": 2.0},
        {"event": "request", "status": 502, "endpoint": "app/c", "mono": 105.0, "duration": 0.1},
        {"event": "request", "status": 522, "endpoint": "app/a", "mono": 99.5, "duration": 0.0},
        {"event": "request", "status": 522, "endpoint": "app/a", "mono": 131.0, "duration": 0.5},
        {"event": "health_transition", "status": 522, "endpoint": "app/a", "mono": 110.0},
    ]
    # Received at 0 and 3 s (in), -0.5 s (before time 0) and 30.5 s (after the end): out.
    assert user_timeouts(lines, 100.0, 30.0) == [("app/c", 0.0, 1.0), ("app/c", 3.0, 5.0)]


def _timed_out(endpoint: str, at: float, vantage: str = "local") -> dict[str, object]:
    pool, name = endpoint.split("/")
    reason = "HTTP timeout occurred"
    return {"at": at, "pool": pool, "endpoint": name, "vantage": vantage, "to": "unhealthy",
            "reason": reason}  # fmt: skip


def test_timeouts_while_the_scenario_makes_an_endpoint_hang_are_not_excused() -> None:
    """The fault's own timeouts stay compared (a simulator wrong about them is caught); a
    check that timed out and turned an endpoint unhealthy outside them, or a user's request
    that timed out, makes the run the machine's."""
    dc1, dc2 = "dc1/tunnel-dc1", "dc2/tunnel-dc2"
    during = [_timed_out(dc1, 41.0), _timed_out(dc1, 41.0, "*"), _timed_out(dc1, 101.0)]
    assert unexplained(REFERENCE, {dc1: 9}, [(dc1, 50.0, 52.0)], during) == ""
    # dc1 before its blackhole, and long after its recovery (the interval is 10 s).
    before = [_timed_out(dc1, 1.5), _timed_out(dc1, 1.5, "*"), _timed_out(dc1, 111.0)]
    assert unexplained(REFERENCE, {dc1: 9}, [], before) == "2 probes of dc1/tunnel-dc1"
    said = unexplained(REFERENCE, {}, [(dc2, 3.0, 4.0), (dc1, 30.0, 38.0)], [_timed_out(dc2, 7)])
    assert said == "1 probe of dc2/tunnel-dc2, 1 request to dc1/tunnel-dc1, " + (
        "1 request to dc2/tunnel-dc2"
    )


def test_a_check_that_timed_out_and_changed_nothing_is_left_alone() -> None:
    """Without passive health, a check that timed out and turned nothing unhealthy (one of
    the reference's two in a row) changed nothing; with it (retry-on-truncated), any check
    that timed out may have kept an ejected endpoint out, and there is no transition to
    show it."""
    assert unexplained(REFERENCE, {"dc2/tunnel-dc2": 1}, []) == ""
    assert unexplained(TRUNCATED, {"app/c": 1}, []) == "1 probe of app/c"
    transition = [_timed_out("app/c", 17.0)]
    assert unexplained(TRUNCATED, {"app/c": 2}, [], transition) == "2 probes of app/c"
    assert unexplained(TRUNCATED, {}, []) == ""


def test_cpu_times_sum_every_thread_of_every_process(tmp_path: Path) -> None:
    """``/proc/PID/task/TID/schedstat``: run and runqueue wait in nanoseconds, summed;
    None when a process is gone or the kernel does not say."""
    for pid, tid, line in ((7, 7, "1000000000 500000000 3"), (7, 8, "500000000 0 1"),
                           (9, 9, "250000000 2000000000 9")):  # fmt: skip
        task = tmp_path / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "schedstat").write_text(line + "\n")
    assert cpu_times([7, 9], tmp_path) == (1.75, 2.5)
    assert cpu_times([7, 10], tmp_path) is None
    if Path("/proc/self/task").is_dir():  # this process has run, on this kernel
        ran, waited = cpu_times([os.getpid()]) or (0.0, -1.0)
        assert ran > 0 and waited >= 0
