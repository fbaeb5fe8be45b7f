"""Votes of other vantage points go through the health book's own majority (R14)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lb.cluster.tally import Tally
from lb.cluster.votes import Vote
from lb.config.model import Config, EngineSettings, LoadBalancer, Monitor, Origin, Pool
from lb.core.health import Health, ProbeResult, majority
from lb.engine import Engine as LbEngine

H, U, K = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN


def config(up: int = 0, down: int = 0) -> Config:
    pool = Pool(
        name="p",
        monitor="m",
        origins=(Origin(name="e", address="10.0.0.1"), Origin(name="f", address="10.0.0.2")),
    )
    return Config(
        monitors=(Monitor(id="m", consecutive_up=up, consecutive_down=down, interval=10),),
        pools=(pool,),
        load_balancers=(LoadBalancer(name="x.example", default_pools=("p",), fallback_pool="p"),),
        engine=EngineSettings(vantage_points=("fra",)),
    )


def vote(vantage: str, state: Health, at: float, *, member: str = "", ttl: float = 30) -> Vote:
    return Vote(
        pool="p",
        endpoint="e",
        vantage=vantage,
        member=member or f"{vantage}/1",
        state=state,
        at=at,
        ttl=ttl,
    )


def health(engine: LbEngine, endpoint: str = "e") -> Health:
    return engine.book.snapshot().pools["p"].endpoints[0 if endpoint == "e" else 1].health


def local(engine: LbEngine, ok: bool, at: float = 0) -> None:
    engine.apply(ProbeResult(pool="p", endpoint="e", vantage="fra", at=at, ok=ok))


def test_one_vantage_down_of_three_stays_healthy_two_down_is_unhealthy() -> None:
    engine = LbEngine(config())
    tally = Tally(engine, me="fra/1")
    local(engine, False)
    assert health(engine) is U  # alone, its own vantage decides
    tally.offer(vote("ams", H, 100), now=100, at=1)
    tally.offer(vote("sin", H, 100), now=100, at=1)
    assert health(engine) is H  # 2 of 3
    tally.offer(vote("ams", U, 101), now=101, at=2)
    assert health(engine) is U  # 1 of 3
    views = engine.book.snapshot().pools["p"].endpoints[0].vantage_health
    assert views == {"fra": U, "ams": U, "sin": H}


def test_stale_votes_drop_out_of_the_majority() -> None:
    engine = LbEngine(config())
    events: list[tuple[str, Health]] = []
    engine.observers.health.append(lambda e: events.append((e.vantage, e.after)))
    tally = Tally(engine, me="fra/1")
    local(engine, True)
    tally.offer(vote("ams", U, 100, ttl=30), now=100, at=1)
    tally.offer(vote("sin", U, 110, ttl=30), now=110, at=1)
    assert health(engine) is U
    assert tally.expire(now=131, at=2) == [vote("ams", U, 100, ttl=30)]
    assert health(engine) is U  # fra H, sin U: a tie is not a majority
    tally.expire(now=141, at=3)
    assert health(engine) is H  # only its own vantage left
    assert ("ams", K) in events and ("*", H) in events
    assert engine.book.remote_vantages() == set()


def test_old_own_and_stale_votes_are_ignored() -> None:
    engine = LbEngine(config())
    tally = Tally(engine, me="fra/1")
    assert not tally.offer(vote("ams", H, 50, ttl=30), now=100, at=0)  # stale
    assert not tally.offer(vote("fra", H, 100, member="fra/1"), now=100, at=0)  # own echo
    assert tally.offer(vote("ams", U, 100), now=100, at=0)
    assert not tally.offer(vote("ams", H, 99), now=100, at=0)  # older than held
    assert tally.ignored == 3 and tally.accepted == 1


def test_a_peer_of_the_same_vantage_sets_the_state_of_probes_it_owns() -> None:
    engine = LbEngine(config())
    tally = Tally(engine, me="fra/1")
    assert not engine.ready
    tally.offer(vote("fra", U, 100, member="fra/2"), now=100, at=0)
    assert health(engine) is U
    # the configured vantage point never leaves, it only stops being refreshed
    tally.expire(now=1000, at=1)
    assert health(engine) is U
    assert engine.book.snapshot().pools["p"].endpoints[0].vantage_health == {"fra": U}


def test_remote_vantages_survive_a_reload_of_unchanged_endpoints() -> None:
    engine = LbEngine(config())
    tally = Tally(engine, me="fra/1")
    local(engine, False)
    tally.offer(vote("ams", H, 100), now=100, at=0)
    tally.offer(vote("sin", H, 100), now=100, at=0)
    events = engine.reconfigure(config(up=2), now=1)
    assert events == [] and health(engine) is H


@given(st.lists(st.sampled_from([H, U]), min_size=0, max_size=6), st.sampled_from([H, U]))
def test_the_aggregate_is_the_cores_majority(remote: list[Health], own: Health) -> None:
    engine = LbEngine(config())
    tally = Tally(engine, me="fra/1")
    local(engine, own is H)
    for i, state in enumerate(remote):
        tally.offer(vote(f"v{i}", state, 100), now=100, at=0)
    assert health(engine) is majority([own, *remote])
