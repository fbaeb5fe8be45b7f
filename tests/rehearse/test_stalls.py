"""Timeouts the scenario does not explain (lb/rehearse/stalls.py): a stack the machine held
back is told from a simulator that is wrong about a fault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lb.rehearse.stalls import (
    Samples,
    Snapshot,
    Timeout,
    cpu_times,
    hang_spans,
    held,
    in_words,
    probe_timeouts,
    unexplained,
    user_timeouts,
    wait_between,
    waited,
)
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


def test_a_span_ends_only_at_a_recover_of_its_layer_and_replicas(tmp_path: Path) -> None:
    """A recover of one replica, or of the other layer, leaves the tunnel's blackhole on
    (as in the simulator): only the tunnel's own recover at 100 s ends it."""
    text = (SCENARIOS / "reference-two-datacenters.yaml").read_text()
    timeline = (
        "timeline:\n"
        "  - {at: 40, tunnel: dc1, do: blackhole}\n"
        "  - {at: 50, replica: dc1/app1, do: recover}\n"
        "  - {at: 60, origin: dc1, do: recover}\n"
        "  - {at: 100, tunnel: dc1, do: recover}\n"
    )
    text = text.replace(
        "timeline:\n  - {at: 40, tunnel: dc1, do: blackhole, until: 100}\n", timeline
    )
    config = SCENARIOS / "reference-two-datacenters.lb.yaml"
    text = text.replace("config: reference-two-datacenters.lb.yaml", f"config: {config}")
    (tmp_path / "s.yaml").write_text(text)
    assert hang_spans(load_scenario(tmp_path / "s.yaml")) == {"dc1/tunnel-dc1": [(40.0, 100.0)]}


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


def _ejected(endpoint: str, at: float) -> dict[str, object]:
    pool, name = endpoint.split("/")
    return {"at": at, "pool": pool, "endpoint": name, "vantage": "passive", "to": "unhealthy",
            "reason": "passive"}  # fmt: skip


def _said(*args: object) -> str:
    return in_words(unexplained(*args))  # type: ignore[arg-type]


def test_timeouts_while_the_scenario_makes_an_endpoint_hang_are_not_excused() -> None:
    """The fault's own timeouts stay compared (a simulator wrong about them is caught); a
    check that timed out and turned an endpoint unhealthy outside them, or a user's request
    that timed out, is one the machine may explain, each with its own window."""
    dc1, dc2 = "dc1/tunnel-dc1", "dc2/tunnel-dc2"
    during = [_timed_out(dc1, 41.0), _timed_out(dc1, 41.0, "*"), _timed_out(dc1, 101.0)]
    assert _said(REFERENCE, [(dc1, 40.0, 41.0, 9)], [(dc1, 50.0, 52.0)], during) == ""
    # dc1 before its blackhole, and long after its recovery (the interval is 10 s).
    before = [_timed_out(dc1, 1.5), _timed_out(dc1, 1.5, "*"), _timed_out(dc1, 111.0)]
    assert _said(REFERENCE, [], [], before) == "2 probes of dc1/tunnel-dc1"
    found = unexplained(REFERENCE, [], [(dc2, 3.0, 4.0), (dc1, 30.0, 38.0)], [_timed_out(dc2, 7)])
    assert in_words(found) == "1 probe of dc2/tunnel-dc2, 1 request to dc1/tunnel-dc1, " + (
        "1 request to dc2/tunnel-dc2"
    )
    # Each with its window: a check, the probe timeout (2 s) before it; a request, its own.
    assert sorted(found, key=lambda t: t.begun) == [
        Timeout(dc2, "request", 3.0, 4.0),
        Timeout(dc2, "probe", 5.0, 7.0),
        Timeout(dc1, "request", 30.0, 38.0),
    ]


def test_a_check_that_timed_out_and_changed_nothing_is_left_alone() -> None:
    """Without passive health, a check that timed out and turned nothing unhealthy (one of
    the reference's two in a row) changed nothing; with it (retry-on-truncated), a check
    that timed out at an endpoint passive health ejected may have kept it out, with no
    transition to show it; at one it never ejected, it changed nothing."""
    assert _said(REFERENCE, [("dc2/tunnel-dc2", 0.0, 0.5, 1)], []) == ""
    counted = [("app/c", 16.0, 16.5, 1)]
    assert _said(TRUNCATED, counted, []) == ""
    ejected = [_ejected("app/c", 6.0)]
    found = unexplained(TRUNCATED, counted, [], ejected)
    timeout = TRUNCATED.config.monitors[0].timeout
    assert found == [Timeout("app/c", "probe", 16.0 - timeout, 16.5)]
    transition = [*ejected, _timed_out("app/c", 17.0)]
    assert _said(TRUNCATED, [("app/c", 16.5, 17.0, 2)], [], transition) == "2 probes of app/c"
    assert _said(TRUNCATED, [], [], ejected) == ""


def _tasks(tmp_path: Path, tasks: dict[tuple[int, int], str]) -> None:
    for (pid, tid), line in tasks.items():
        task = tmp_path / str(pid) / "task" / str(tid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "schedstat").write_text(line + "\n")


def test_cpu_times_read_every_thread_and_child_and_skip_what_is_gone(tmp_path: Path) -> None:
    """``/proc/PID/task/TID/schedstat``: run and runqueue wait in nanoseconds, per thread;
    a child process (``children``) is read too; a thread whose file is gone (it ended
    between the listing and the read) or a process gone is left out, not the whole read."""
    _tasks(tmp_path, {(7, 7): "1000000000 500000000 3", (7, 8): "500000000 0 1",
                      (9, 9): "250000000 2000000000 9", (11, 11): "1 2 3"})  # fmt: skip
    (tmp_path / "7" / "task" / "7" / "children").write_text("11\n")
    (tmp_path / "7" / "task" / "12").mkdir()  # a thread that ended: no schedstat
    assert cpu_times([7, 9, 10], tmp_path) == {
        (7, 7): (1.0, 0.5),
        (7, 8): (0.5, 0.0),
        (9, 9): (0.25, 2.0),
        (11, 11): (1e-9, 2e-9),
    }
    if Path("/proc/self/task").is_dir():  # this process has run, on this kernel
        ran = sum(r for r, _ in cpu_times([os.getpid()]).values())
        assert ran > 0


def test_waits_count_threads_present_at_the_end_from_zero_when_new() -> None:
    first = {(7, 7): (1.0, 0.5), (7, 8): (1.0, 3.0)}
    last = {(7, 7): (2.0, 0.75), (7, 9): (0.5, 0.25)}  # 8 ended, 9 is new
    assert waited(first, last) == 0.5


def _samples(waits: list[tuple[float, float]]) -> Samples:
    """The LB (pid 1) waited up to ``w`` seconds by scenario second ``t``."""
    return [(t, {1: {(1, 1): (t, w)}, 2: {(2, 2): (t, 0.0)}}) for t, w in waits]


def test_a_timeout_is_the_machines_only_when_its_path_waited_inside_its_window() -> None:
    """The LB waited 0.4 s for a CPU between 10 and 10.5 s (scenario seconds), and nothing
    else.  A check that timed out from 10 to 10.5 s met that wait: excused.  One
    from 12 to 12.4 s did not: the wait was outside its window, and it is judged, however
    much the LB waited over the run.  A stand-in that never waited excuses nothing."""
    times = [k / 4 for k in range(53)]  # every 0.25 s, 0 to 13 s
    samples = _samples([(t, min(0.4, max(0.0, (t - 10.0) * 0.8))) for t in times])
    assert wait_between(samples, 1, 10.0, 10.5) == pytest.approx(0.4)
    assert wait_between(samples, 1, 10.1, 10.5) == pytest.approx(0.2)  # 10.25 to 10.5
    assert wait_between(samples, 1, 12.0, 12.4) == pytest.approx(0.0)
    inside = Timeout("app/a", "probe", 10.0, 10.5)
    outside = Timeout("app/a", "probe", 12.0, 12.4)
    assert held(inside, samples, [1, 2])
    assert not held(outside, samples, [1, 2])
    assert not held(inside, samples, [2])
    # Not covered by the readings, or no readings (another kernel): judged.
    assert wait_between(samples, 1, 12.0, 14.0) is None
    assert not held(Timeout("app/a", "probe", 13.5, 14.0), samples, [1])
    assert not held(inside, [], [1])


def test_only_whole_intervals_inside_the_window_count() -> None:
    """The LB waited 0.2 s from 9.75 to 10 s and 0.2 s from 10 to 10.25 s.  A check that
    timed out from 9.9 to 10.4 s (need 0.25 s) has one whole interval inside its window
    (10 to 10.25 s): 0.2 s, judged.  Spreading each interval's wait evenly would have
    counted 0.08 s of the wait before 9.9 s and excused it."""
    times = [k / 4 for k in range(53)]
    samples = _samples([(t, min(0.4, max(0.0, (t - 9.75) * 0.8))) for t in times])
    assert wait_between(samples, 1, 9.9, 10.4) == pytest.approx(0.2)
    assert not held(Timeout("app/a", "probe", 9.9, 10.4), samples, [1])
    assert wait_between(samples, 1, 10.1, 10.2) == 0.0  # no whole interval inside


def test_the_most_one_thread_waited_counts_not_the_sum() -> None:
    """Three threads of the LB (one in a child process) each waited 0.15 s from 10 to
    10.5 s: 0.45 s together, but no one of them was held back half of the window."""
    times = [k / 4 for k in range(53)]

    def at(t: float) -> Snapshot:
        w = min(0.15, max(0.0, (t - 10.0) * 0.3))
        return {(1, 1): (t, w), (1, 2): (t, w), (3, 3): (t, w)}

    samples: Samples = [(t, {1: at(t)}) for t in times]
    assert wait_between(samples, 1, 10.0, 10.5) == pytest.approx(0.15)
    assert not held(Timeout("app/a", "probe", 10.0, 10.5), samples, [1])
