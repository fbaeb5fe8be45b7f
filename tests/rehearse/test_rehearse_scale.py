"""``--speed`` / ``--rate``: both sides load one scaled scenario; what moves and what not."""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.rehearse.compare import compare, percentile
from lb.rehearse.scale import SpeedError, scaled_files
from lb.rehearse.stack import slowest_bucket
from lb.sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "scenarios"


def test_speed_divides_every_time_and_rate_multiplies_rates(tmp_path: Path) -> None:
    path, _ = scaled_files(SCENARIOS / "reference-two-datacenters.yaml", 5, tmp_path, 0.5)
    sc = load_scenario(path)
    assert (sc.duration, sc.report_interval, sc.tick) == (30, 2, 0.02)
    (monitor,) = sc.config.monitors
    assert (monitor.interval, monitor.timeout) == (2, 0.4)
    assert sc.config.engine.minimum_interval == 2
    assert sc.config.engine.limits.connect_timeout == 1
    assert [(e.at, e.action) for e in sc.events] == [(8, "blackhole"), (20, "recover")]
    assert [t.rate(0) for t in sc.traffic] == [100, 50]  # FRA 200, IAD 100, x0.5
    by_name = {x.kind: x for x in sc.expectations}
    assert by_name["detected"].within == pytest.approx(23.1 / 5)
    assert by_name["errors"].at_most == pytest.approx(6930 * 0.5 / 5)
    shares = [x.between for x in sc.expectations if x.kind == "share"]
    assert shares == [(13, 20), (26, 30)]


def test_a_speed_that_makes_an_interval_below_one_second_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpeedError, match=r"makes a monitor interval 0\.5 s, below the 1 s"):
        scaled_files(SCENARIOS / "reference-two-datacenters.yaml", 20, tmp_path)


def test_points_inside_and_outside_the_band() -> None:
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([float("inf")] * 3, 0.95) == float("inf")
    window = {"start": 0, "end": 1, "requests": 100, "errors": 0, "by_pool": {"a": 100}}
    real = {"tick": 0.1, "windows": [window], "failovers": []}
    sims = [{"windows": [dict(window, errors=e)], "failovers": []} for e in (0, 0, 1, 0)]
    (errors, share) = compare(real, sims, ["a"])
    assert errors.inside and share.inside
    late = {"pool": "a", "endpoint": "x", "failed_at": 10.0, "detected_at": 14.0}
    real = {"tick": 0.1, "windows": [], "failovers": [late]}
    sims = [{"windows": [], "failovers": [dict(late, detected_at=10 + d)]} for d in (1, 2, 2)]
    (detected,) = compare(real, sims, ["a"])
    assert detected.name == "failover a/x at 10s detected"
    assert not detected.inside and detected.rank == 1.0
    (late_enough,) = compare(real, sims, ["a"], lag=2.0)
    assert late_enough.inside  # the real events took effect up to 2 s late


def test_the_replay_holds_a_real_value_the_band_does_not() -> None:
    """The real run is one seed; when its seed sits in a tail, the replay (the simulation
    with that seed) predicted it, and the point is inside."""
    late = {"pool": "a", "endpoint": "x", "failed_at": 10.0, "detected_at": 14.0}
    real = {"tick": 0.1, "windows": [], "failovers": [late]}
    sims = [{"windows": [], "failovers": [dict(late, detected_at=10 + d)]} for d in (1, 2, 2)]
    (alone,) = compare(real, sims, ["a"])
    assert not alone.inside
    replay = {"windows": [], "failovers": [dict(late, detected_at=13.95)]}
    (replayed,) = compare(real, sims, ["a"], replay=replay)
    assert replayed.inside and replayed.replay == pytest.approx(3.95)
    wrong = {"windows": [], "failovers": [dict(late, detected_at=12.0)]}
    (still_out,) = compare(real, sims, ["a"], replay=wrong)
    assert not still_out.inside
    (costly,) = compare(real, sims, ["a"], replay=wrong, cost=2.0)
    assert costly.inside  # a real probe that takes 2 s explains 2 s


def test_the_slowest_probe_is_read_from_its_histogram_bucket() -> None:
    text = "\n".join(
        [
            "# TYPE lb_probe_duration_seconds histogram",
            'lb_probe_duration_seconds_bucket{pool="a",le="0.01"} 8.0',
            'lb_probe_duration_seconds_bucket{pool="a",le="0.05"} 9.0',
            'lb_probe_duration_seconds_bucket{pool="a",le="+Inf"} 9.0',
            'lb_probe_duration_seconds_bucket{le="0.01",pool="b"} 3.0',
            'lb_probe_duration_seconds_bucket{le="0.05",pool="b"} 3.0',
            'lb_probe_duration_seconds_bucket{le="+Inf",pool="b"} 3.0',
            'lb_probe_duration_seconds_count{pool="a"} 9.0',
        ]
    )
    assert slowest_bucket(text, "lb_probe_duration_seconds") == 0.05
    assert slowest_bucket("", "lb_probe_duration_seconds") == 0.0
    late = text.replace('le="+Inf"} 9.0', 'le="+Inf"} 10.0')
    assert slowest_bucket(late, "lb_probe_duration_seconds") == 0.05  # the largest bound


def test_requests_sent_behind_schedule_widen_the_windows_counts_only() -> None:
    """A driver 0.1 s behind in a 1 s window of 100 requests: 10 requests may meet a later
    state, so 8 errors where every seed has none is inside; a failover's delay is not
    widened (the LB's probes, not the driver, time it)."""
    window = {"start": 0, "end": 1, "requests": 100, "errors": 8, "by_pool": {"a": 100}}
    late = {"pool": "a", "endpoint": "x", "failed_at": 10.0, "detected_at": 14.0}
    real = {"tick": 0.1, "windows": [window], "failovers": [late]}
    quiet = dict(window, errors=0)
    sims = [{"windows": [quiet], "failovers": [dict(late, detected_at=10 + d)]} for d in (1, 2, 2)]
    (errors, _, detected) = compare(real, sims, ["a"])
    assert not errors.inside and not detected.inside
    (errors, _, detected) = compare(real, sims, ["a"], behind=0.1)
    assert errors.inside and not detected.inside
