"""A flap's change points (where the simulator drops cached answers) and its state agree.

The network keeps what an address answers until its next change point; if the change points of
a flap were computed differently from the flap's state, a tick could fall between them and
keep a stale answer.  Example from review: at 0, period 0.3, down 0.1, ticks of 0.1.
"""

from __future__ import annotations

from bisect import bisect_right

from lb.sim.network import _fault, _toggles
from lb.sim.scenario import NetEvent, TimelineAction


def _flap(at: float, period: float, down_for: float) -> NetEvent:
    return NetEvent(
        at=at,
        index=0,
        address="a.example.com",
        replicas=("a",),
        layer="origin",
        action=TimelineAction.FLAP,
        status=0,
        period=period,
        down_for=down_for,
        how="refuse",
    )


def _down_by_toggles(toggles: list[float], t: float) -> bool:
    """Down between a toggle at an even index and the next one: what the change points say."""
    return bisect_right(toggles, t) % 2 == 1


def test_flap_state_follows_its_change_points_at_every_tick() -> None:
    duration = 10.0
    for at, period, down_for, tick in [
        (0.0, 0.3, 0.1, 0.1),
        (0.7, 0.3, 0.1, 0.1),
        (1.0, 0.7, 0.35, 0.05),
    ]:
        e = _flap(at, period, down_for)
        toggles = _toggles(e, duration)
        assert toggles == sorted(toggles)
        accumulated = at
        for k in range(int((duration - at) / tick)):
            for t in (at + k * tick, accumulated):
                down = _fault(e, t)[0] == "refuse"
                assert down == _down_by_toggles(toggles, t), (at, period, down_for, t)
            accumulated += tick


def test_every_toggle_switches_the_state() -> None:
    e = _flap(0.0, 0.3, 0.1)
    toggles = _toggles(e, 10.0)
    assert len(toggles) == 2 * 34
    for i, b in enumerate(toggles):
        assert (_fault(e, b)[0] == "refuse") == (i % 2 == 0), b
