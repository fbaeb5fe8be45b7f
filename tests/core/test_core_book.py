"""The health book and pool health (R10, R13, R15, R17; open question 16)."""

from __future__ import annotations

import dataclasses

import pytest
from core_builders import make_config, make_pool, result

from lb.config.model import Origin
from lb.core.book import HealthBook
from lb.core.health import Health
from lb.core.snapshot import PoolState

H, U, K = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN


def drive(hb: HealthBook, **health: bool) -> None:
    """``drive(hb, **{"a/a-0": True})``: one result per named endpoint."""
    for key, ok in health.items():
        pool, endpoint = key.split("/")
        hb.apply(result(pool, endpoint, ok))


# --------------------------------------------------------------------------- R10


def test_r10_disabled_endpoints_and_pools_are_never_probed() -> None:
    a = make_pool("a", 3)
    a = dataclasses.replace(
        a, origins=(a.origins[0], dataclasses.replace(a.origins[1], enabled=False), a.origins[2])
    )
    cfg = make_config(a, make_pool("b", 2, enabled=False))
    hb = HealthBook(cfg)
    assert [(t.pool, t.endpoint) for t in hb.targets()] == [("a", "a-0"), ("a", "a-2")]
    # a stray result for a disabled endpoint changes nothing
    assert hb.apply(result("a", "a-1", True)) == []
    assert hb.apply(result("b", "b-0", True)) == []
    snap = hb.snapshot()
    assert not snap.pools["a"].endpoints[1].enabled
    assert snap.pools["b"].state == PoolState.DISABLED
    assert not snap.pools["b"].eligible


def test_r10_disabled_endpoint_of_unmonitored_pool_is_not_selectable() -> None:
    a = make_pool("a", 2, monitor=None)
    a = dataclasses.replace(
        a, origins=(a.origins[0], dataclasses.replace(a.origins[1], enabled=False))
    )
    view = HealthBook(make_config(a)).snapshot().pools["a"]
    assert [e.name for e in view.selectable] == ["a-0"]


# --------------------------------------------------------------------------- R13


def test_r13_unmonitored_pool_all_enabled_eligible_never_critical_health_unknown() -> None:
    hb = HealthBook(make_config(make_pool("a", 3, monitor=None, minimum_origins=3)))
    assert hb.targets() == []
    view = hb.snapshot().pools["a"]
    assert not view.monitored
    assert view.eligible
    assert view.state == PoolState.UNKNOWN
    assert len(view.selectable) == 3
    assert all(e.health is H for e in view.endpoints)


# --------------------------------------------------------------------------- R15


def test_r15_one_event_per_transition_with_its_facts() -> None:
    hb = HealthBook(make_config(make_pool("a", 1)))
    events = hb.apply(result("a", "a-0", True, at=1.0, rtt=0.02))
    aggregate = [e for e in events if e.vantage == "*"]
    assert len(aggregate) == 1
    e = aggregate[0]
    assert (e.pool, e.endpoint, e.before, e.after, e.at) == ("a", "a-0", K, H, 1.0)
    assert (e.reason, e.status, e.rtt) == ("", 200, 0.02)
    # a repeated identical result emits nothing
    assert hb.apply(result("a", "a-0", True, at=2.0)) == []
    events = hb.apply(result("a", "a-0", False, at=3.0, reason="http_timeout"))
    aggregate = [e for e in events if e.vantage == "*"]
    assert [(e.before, e.after, e.reason, e.status, e.rtt) for e in aggregate] == [
        (H, U, "http_timeout", None, None)
    ]
    assert hb.apply(result("a", "a-0", False, at=4.0)) == []


def test_r15_pending_hysteresis_result_emits_nothing() -> None:
    hb = HealthBook(make_config(make_pool("a", 1), up=3))
    assert hb.apply(result("a", "a-0", True)) == []
    assert hb.apply(result("a", "a-0", True)) == []
    assert len(hb.apply(result("a", "a-0", True))) == 2  # vantage + aggregate


# --------------------------------------------------------------------------- R17


def test_r17_pool_healthy_degraded_critical() -> None:
    hb = HealthBook(make_config(make_pool("a", 3, minimum_origins=2)))
    assert hb.snapshot().pools["a"].state == PoolState.UNKNOWN
    drive(hb, **{"a/a-0": True, "a/a-1": True, "a/a-2": True})
    view = hb.snapshot().pools["a"]
    assert (view.state, view.eligible, view.healthy_count) == (PoolState.HEALTHY, True, 3)
    drive(hb, **{"a/a-2": False})
    view = hb.snapshot().pools["a"]
    assert (view.state, view.eligible, view.healthy_count) == (PoolState.DEGRADED, True, 2)
    drive(hb, **{"a/a-1": False})
    view = hb.snapshot().pools["a"]
    assert (view.state, view.eligible, view.healthy_count) == (PoolState.CRITICAL, False, 1)


def test_r17_disabled_pool_is_not_eligible_even_when_healthy() -> None:
    hb = HealthBook(make_config(make_pool("a", 1, monitor=None, enabled=False)))
    view = hb.snapshot().pools["a"]
    assert not view.eligible
    assert view.state == PoolState.DISABLED


def test_r17_minimum_origins_zero_pool_is_eligible_with_nothing_healthy() -> None:
    hb = HealthBook(make_config(make_pool("a", 1, minimum_origins=0)))
    drive(hb, **{"a/a-0": False})
    view = hb.snapshot().pools["a"]
    assert view.eligible and view.selectable == ()


def test_r17_q16_weight_zero_healthy_endpoint_counts_toward_minimum_origins() -> None:
    a = make_pool(
        "a",
        origins=(
            Origin(name="a-0", address="10.0.0.1"),
            Origin(name="a-1", address="10.0.0.2", weight=0.0),
        ),
        minimum_origins=2,
    )
    hb = HealthBook(make_config(a))
    drive(hb, **{"a/a-0": True, "a/a-1": True})
    view = hb.snapshot().pools["a"]
    assert view.eligible and view.healthy_count == 2
    assert [e.name for e in view.selectable] == ["a-0"]  # R18: probed, never selected


def test_reconfigure_keeps_health_of_unchanged_endpoints_and_stamps_disable_time() -> None:
    cfg = make_config(make_pool("a", 2))
    hb = HealthBook(cfg)
    drive(hb, **{"a/a-0": True, "a/a-1": True})
    a = cfg.pools[0]
    new = dataclasses.replace(
        cfg,
        pools=(
            dataclasses.replace(
                a, origins=(a.origins[0], dataclasses.replace(a.origins[1], enabled=False))
            ),
        ),
    )
    hb.reconfigure(new, now=42.0)
    view = hb.snapshot().pools["a"]
    assert view.endpoints[0].health is H
    assert view.endpoints[1].disabled_at == 42.0


# --------------------------------------------------------------------------- restore


def test_restore_copies_vantage_states_and_rtt_into_a_fresh_book() -> None:
    cfg = make_config(make_pool("a", 2), up=3, down=3, vantage_points=("x", "y", "z"))
    hb = HealthBook(cfg)
    hb.restore(
        {
            ("a", "a-0", "x"): H,
            ("a", "a-0", "y"): H,
            ("a", "a-0", "z"): U,
            ("a", "a-1", "x"): U,
            ("a", "gone", "x"): H,  # unknown keys are ignored
        },
        rtt={("a", "x"): 0.25},
    )
    snap = hb.snapshot()
    ep0, ep1 = snap.pools["a"].endpoints
    assert ep0.health is H  # majority of the restored vantage states (R14)
    assert ep0.vantage_health == {"x": H, "y": H, "z": U}
    assert ep1.health is K  # one of three unhealthy is no majority
    assert snap.pools["a"].rtt == {"x": 0.25}
    # counters start at zero: three failures in a row are needed to leave healthy
    assert hb.apply(result("a", "a-0", False, vantage="x")) == []
    assert hb.apply(result("a", "a-0", False, vantage="x")) == []
    assert [e.after for e in hb.apply(result("a", "a-0", False, vantage="x"))] == [U, U]


# --------------------------------------------------------------------------- reloads


def test_reload_changing_interval_or_thresholds_keeps_health() -> None:
    config = make_config(make_pool("a", 1))
    hb = HealthBook(config)
    hb.apply(result("a", "a-0", True))
    slower = dataclasses.replace(
        config,
        monitors=(dataclasses.replace(config.monitors[0], interval=30, consecutive_down=3),),
    )
    assert hb.reconfigure(slower, now=5.0) == []
    assert hb.snapshot().pools["a"].eligible
    # The new threshold applies to the kept check: two failures are not enough any more.
    hb.apply(result("a", "a-0", False))
    hb.apply(result("a", "a-0", False))
    assert hb.snapshot().pools["a"].endpoints[0].health is Health.HEALTHY


def test_r15_reload_that_changes_what_is_probed_reports_the_reset() -> None:
    config = make_config(make_pool("a", 1))
    hb = HealthBook(config)
    hb.apply(result("a", "a-0", True))
    moved = dataclasses.replace(
        config, monitors=(dataclasses.replace(config.monitors[0], path="/other"),)
    )
    (event,) = hb.reconfigure(moved, now=7.0)
    assert (event.pool, event.endpoint, event.vantage) == ("a", "a-0", "*")
    assert (event.before, event.after, event.reason, event.at) == (
        Health.HEALTHY,
        Health.UNKNOWN,
        "reconfigured",
        7.0,
    )


def test_r14_reload_adding_a_vantage_point_keeps_the_others() -> None:
    config = make_config(make_pool("a", 1), vantage_points=("v1", "v2", "v3"))
    hb = HealthBook(config)
    for v in ("v1", "v2", "v3"):
        hb.apply(result("a", "a-0", True, vantage=v))
    more = dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, vantage_points=("v1", "v2", "v3", "v4"))
    )
    assert hb.reconfigure(more, now=1.0) == []  # 3 of 4 healthy is still a majority
    vantage = hb.snapshot().pools["a"].endpoints[0].vantage_health
    assert vantage == {"v1": Health.HEALTHY, "v2": Health.HEALTHY, "v3": Health.HEALTHY,
                       "v4": Health.UNKNOWN}  # fmt: skip


def test_r13_unmonitored_pool_ignores_minimum_origins() -> None:
    pool = make_pool("a", 2, monitor=None, minimum_origins=2)
    pool = dataclasses.replace(
        pool, origins=(pool.origins[0], dataclasses.replace(pool.origins[1], enabled=False))
    )
    view = HealthBook(make_config(pool)).snapshot().pools["a"]
    assert view.state == "unknown"
    assert view.eligible


def test_r28_slow_rtt_drift_is_published() -> None:
    hb = HealthBook(make_config(make_pool("a", 1)))
    hb.apply(result("a", "a-0", True, rtt=0.100))
    assert hb.snapshot().pools["a"].rtt == {"local": 0.100}
    for _ in range(50):  # each step moves the average < 10 %, together far more
        hb.apply(result("a", "a-0", True, rtt=0.130))
    assert hb.snapshot().pools["a"].rtt["local"] == pytest.approx(0.130, abs=0.002)
