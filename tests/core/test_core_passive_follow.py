"""A health book that follows passive health instead of deciding it (a child worker's,
``HealthBook(decides_passive=False)``): it counts nothing, returns nothing on its own, and
takes the deciding book's ejections and returns through ``follow``."""

from __future__ import annotations

import dataclasses

from core_builders import make_config, make_pool, result

from lb.config.model import Config, PassiveHealth
from lb.core.book import HealthBook
from lb.core.health import Health
from lb.core.passive import PASSIVE, Outcome

H, U = Health.HEALTHY, Health.UNHEALTHY
ON = PassiveHealth(consecutive_5xx=3, base_ejection_time=10)
E502 = Outcome(502)


def passive_config() -> Config:
    cfg = make_config(make_pool("a", 2))
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, passive_health=ON))


def healthy(hb: HealthBook) -> HealthBook:
    for name in ("a-0", "a-1"):
        hb.apply(result("a", name, True, at=0.0))
    return hb


def selectable(hb: HealthBook) -> list[str]:
    return [e.name for e in hb.snapshot().pools["a"].selectable]


def test_a_follower_never_ejects_nor_returns_on_its_own() -> None:
    cfg = passive_config()
    leader, follower = healthy(HealthBook(cfg)), healthy(HealthBook(cfg, decides_passive=False))
    for _ in range(10):
        assert follower.outcome("a", "a-0", E502, now=1.0) == []
    ejector = follower.passive("a", "a-0")
    assert ejector is not None and ejector.error_run == 0 and selectable(follower) == ["a-0", "a-1"]

    for _ in range(3):
        leader.outcome("a", "a-0", E502, now=1.0)
    decided = leader.passive("a", "a-0")
    assert decided is not None and decided.ejected
    events = follower.follow("a", "a-0", decided.state())
    assert [(e.vantage, e.before, e.after) for e in events] == [(PASSIVE, H, U), ("*", H, U)]
    assert events[0].reason == "passive: 3 consecutive 502, ejected for 10s"
    assert selectable(follower) == selectable(leader) == ["a-1"]
    assert follower.follow("a", "a-0", decided.state()) == []  # the same state twice: no events

    # The passing check after the ejection time: the leader returns it, the follower waits.
    probe = result("a", "a-0", True, at=12.0)
    leader.apply(probe)
    assert follower.apply(probe) == []
    assert selectable(leader) == ["a-0", "a-1"] and selectable(follower) == ["a-1"]
    events = follower.follow("a", "a-0", decided.state())
    assert [(e.vantage, e.before, e.after) for e in events] == [(PASSIVE, U, H), ("*", U, H)]
    assert events[0].at == 12.0 and events[0].reason.startswith("passive: ejection of 11.0s over")
    assert selectable(follower) == ["a-0", "a-1"]


def test_following_an_endpoint_without_passive_health_changes_nothing() -> None:
    leader = healthy(HealthBook(passive_config()))
    for _ in range(3):
        leader.outcome("a", "a-0", E502, now=1.0)
    decided = leader.passive("a", "a-0")
    assert decided is not None
    off = healthy(HealthBook(make_config(make_pool("a", 2)), decides_passive=False))
    assert off.follow("a", "a-0", decided.state()) == []
    assert off.follow("a", "gone", decided.state()) == []
    assert selectable(off) == ["a-0", "a-1"]


def test_following_an_ejection_of_an_endpoint_already_unhealthy_makes_no_aggregate_event() -> None:
    cfg = passive_config()
    leader, follower = healthy(HealthBook(cfg)), healthy(HealthBook(cfg, decides_passive=False))
    for _ in range(3):
        leader.outcome("a", "a-0", E502, now=1.0)
    decided = leader.passive("a", "a-0")
    assert decided is not None and decided.ejected
    # The follower's monitors have marked it unhealthy since (a child restored later).
    follower.apply(result("a", "a-0", False, at=2.0))
    assert selectable(follower) == ["a-1"]
    events = follower.follow("a", "a-0", decided.state())
    assert [(e.vantage, e.before, e.after) for e in events] == [(PASSIVE, H, U)]
    assert selectable(follower) == ["a-1"]
