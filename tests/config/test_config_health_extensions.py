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
