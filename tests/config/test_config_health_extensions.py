"""The health extensions of issue 14 (flap damping, ...): off by default, checked on load."""

from __future__ import annotations

from config_helpers import BASE, errors, load


def test_flap_damping_is_off_by_default_and_loads_with_defaults() -> None:
    assert load(BASE).config.engine.flap_damping is None
    damping = load(BASE + "engine: {flap_damping: {}}\n").config.engine.flap_damping
    assert damping is not None and damping.reuse < damping.suppress


def test_flap_damping_thresholds_that_cannot_work_are_errors() -> None:
    assert errors(BASE + "engine: {flap_damping: {suppress: 1, reuse: 2}}\n") == [
        "lb.yaml:8: engine.flap_damping.reuse: must be below flap_damping.suppress"
    ]
    assert errors(BASE + "engine: {flap_damping: {half_life: 1, max_suppress: 100}}\n") == [
        "lb.yaml:8: engine.flap_damping.max_suppress: must be at most 64 x flap_damping.half_life"
    ]
    (only,) = errors(BASE + "engine: {flap_damping: {suppress: 50, reuse: 1}}\n")
    assert "engine.flap_damping.suppress: can never be reached" in only


def test_passive_health_is_off_by_default_and_loads_with_envoy_like_defaults() -> None:
    config = load(BASE).config
    assert config.engine.passive_health is None
    assert all(config.passive(p) is None for p in config.pools)
    config = load(BASE + "engine: {passive_health: {}}\n").config
    passive = config.engine.passive_health
    assert passive is not None and passive.consecutive_5xx == 5
    assert passive.max_ejection_percent == 10
    assert all(config.passive(p) is passive for p in config.pools)


def test_passive_health_per_pool_overrides_the_engine() -> None:
    text = BASE.replace(
        "{name: a, monitor: m,", "{name: a, monitor: m, passive_health: {enabled: false},"
    ).replace(
        "{name: b, monitor: m,", "{name: b, monitor: m, passive_health: {consecutive_5xx: 2},"
    )
    config = load(text + "engine: {passive_health: {}}\n").config
    a, b = config.pools
    assert config.passive(a) is None
    on = config.passive(b)
    assert on is not None and on.consecutive_5xx == 2


def test_passive_health_settings_that_cannot_work_are_errors() -> None:
    assert errors(
        BASE
        + "engine: {passive_health: {consecutive_5xx: 0, consecutive_connect_failure: 0,"
        + " base_ejection_time: 60, max_ejection_time: 30}}\n"
    ) == [
        "lb.yaml:8: engine.passive_health.consecutive_5xx: nothing could eject an endpoint: "
        "set consecutive_5xx or consecutive_connect_failure above 0 (or enabled: false)",
        "lb.yaml:8: engine.passive_health.max_ejection_time: must be at least base_ejection_time",
    ]
    (only,) = errors(BASE + "engine: {passive_health: {max_ejection_percent: 101}}\n")
    assert "engine.passive_health.max_ejection_percent" in only
    # Worker processes are no obstacle: the parent decides for all (lb/workers.py).
    assert errors(BASE + "engine: {workers: 2, passive_health: {}}\n") == []


def test_passive_health_on_a_pool_without_a_monitor_is_an_error() -> None:
    text = BASE.replace("{name: a, monitor: m,", "{name: a, passive_health: {},")
    (only,) = errors(text)
    assert only.startswith("lb.yaml:4: pools[0].passive_health: needs a monitor")
