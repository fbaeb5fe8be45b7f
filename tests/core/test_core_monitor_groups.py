"""R16: monitor groups combine their members per vantage point, before the R14 majority."""

from __future__ import annotations

import dataclasses

import pytest
from core_builders import result
from hypothesis import given
from hypothesis import strategies as st

from lb.config.model import (
    Config,
    EngineSettings,
    LoadBalancer,
    Monitor,
    MonitorGroup,
    MonitorGroupMember,
    Origin,
    Pool,
)
from lb.core.book import HealthBook
from lb.core.health import Health, MemberVote, combine

H, U, K = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN


def grouped(
    *members: MonitorGroupMember,
    up: int = 0,
    down: int = 0,
    vantage_points: tuple[str, ...] = ("local",),
) -> Config:
    """Pool ``p`` with endpoint ``e`` under group ``g`` of ``members`` (monitors a, b, c...)."""
    monitors = tuple(
        Monitor(id=m.monitor_id, path=f"/{m.monitor_id}", consecutive_up=up, consecutive_down=down)
        for m in members
    )
    pool = Pool(name="p", monitor_group="g", origins=(Origin(name="e", address="10.0.0.1"),))
    return Config(
        monitors=monitors,
        monitor_groups=(MonitorGroup(id="g", members=members),),
        pools=(pool,),
        load_balancers=(
            LoadBalancer(
                proxied=True, name="app.example.com", default_pools=("p",), fallback_pool="p"
            ),
        ),
        engine=EngineSettings(vantage_points=vantage_points),
    )


def member(mid: str, **kw: bool) -> MonitorGroupMember:
    return MonitorGroupMember(monitor_id=mid, **kw)


def feed(book: HealthBook, mid: str, ok: bool, vantage: str = "local") -> None:
    book.apply(result("p", "e", ok, vantage=vantage, member=mid))


def health(book: HealthBook) -> Health:
    return book.snapshot().pools["p"].endpoints[0].health


# --------------------------------------------------------------------------- combine


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        pytest.param([MemberVote(U, must_be_healthy=True), MemberVote(H), MemberVote(H)], U,
                     id="critical-member-fails"),
        pytest.param([MemberVote(U), MemberVote(H)], H, id="half-is-not-more-than-half"),
        pytest.param([MemberVote(U), MemberVote(U), MemberVote(H)], U, id="two-of-three"),
        pytest.param([MemberVote(U, monitoring_only=True), MemberVote(H)], H,
                     id="monitoring-only-never-counts"),
        pytest.param([MemberVote(U, monitoring_only=True, must_be_healthy=True), MemberVote(H)],
                     H, id="monitoring-only-wins-over-must-be-healthy"),
        pytest.param([MemberVote(K), MemberVote(H), MemberVote(H)], H,
                     id="unknown-cannot-tip-it"),
        pytest.param([MemberVote(K), MemberVote(U), MemberVote(H)], K, id="unknown-could-tip-it"),
        pytest.param([MemberVote(K, must_be_healthy=True), MemberVote(H)], K,
                     id="critical-member-not-yet-answered"),
        pytest.param([MemberVote(H)], H, id="one-member"),
    ],
)  # fmt: skip
def test_r16_combine(votes: list[MemberVote], expected: Health) -> None:
    assert combine(votes) is expected


votes = st.lists(
    st.builds(MemberVote, st.sampled_from([H, U, K]), st.booleans(), st.booleans()),
    min_size=1,
    max_size=7,
).filter(lambda vs: any(not v.monitoring_only for v in vs))


@given(votes)
def test_r16_a_member_turning_unhealthy_never_makes_the_endpoint_healthier(
    vs: list[MemberVote],
) -> None:
    rank = {H: 2, K: 1, U: 0}
    for i, v in enumerate(vs):
        worse = [*vs[:i], MemberVote(U, v.must_be_healthy, v.monitoring_only), *vs[i + 1 :]]
        assert rank[combine(worse)] <= rank[combine(vs)]


@given(votes)
def test_r16_monitoring_only_members_never_matter(vs: list[MemberVote]) -> None:
    counted = [v for v in vs if not v.monitoring_only]
    assert combine(vs) is combine(counted)


@given(votes)
def test_r16_unknown_exactly_when_the_missing_answers_could_decide(vs: list[MemberVote]) -> None:
    def resolved(state: Health) -> Health:
        return combine([MemberVote(state if v.state is K else v.state, v.must_be_healthy,
                                   v.monitoring_only) for v in vs])  # fmt: skip

    outcomes = {resolved(H), resolved(U)}
    assert K not in outcomes
    if len(outcomes) == 1:
        assert combine(vs) is outcomes.pop()
    else:
        assert combine(vs) is K


# --------------------------------------------------------------------------- the book


def test_r16_each_member_is_probed_and_named_in_targets() -> None:
    book = HealthBook(grouped(member("a"), member("b", must_be_healthy=True)))
    assert [(t.endpoint, t.member, t.monitor.path) for t in book.targets()] == [
        ("e", "a", "/a"),
        ("e", "b", "/b"),
    ]


def test_r16_a_critical_member_failing_alone_makes_the_endpoint_unhealthy() -> None:
    book = HealthBook(grouped(member("a"), member("b"), member("c", must_be_healthy=True)))
    for mid in "abc":
        feed(book, mid, True)
    assert health(book) is H
    feed(book, "c", False)
    assert health(book) is U
    feed(book, "c", True)
    assert health(book) is H


def test_r16_quorum_of_non_critical_members() -> None:
    book = HealthBook(grouped(member("a"), member("b"), member("c"), member("d")))
    for mid in "abcd":
        feed(book, mid, True)
    feed(book, "a", False)
    feed(book, "b", False)
    assert health(book) is H  # 2 of 4 is not more than half
    feed(book, "c", False)
    assert health(book) is U
    feed(book, "a", True)
    assert health(book) is H


def test_r16_a_members_state_stands_until_its_next_result() -> None:
    book = HealthBook(grouped(member("a"), member("b"), member("c")))
    feed(book, "a", False)
    feed(book, "b", False)
    assert health(book) is U
    for _ in range(5):  # c's results do not refresh or expire a and b
        feed(book, "c", True)
    assert health(book) is U
    assert book.member_states("p", "e") == {"local": {"a": U, "b": U, "c": H}}
    assert book.member_results("p", "e")[("local", "a")].ok is False


def test_r16_disabled_and_monitoring_only_members() -> None:
    book = HealthBook(
        grouped(member("a"), member("b", enabled=False), member("c", monitoring_only=True))
    )
    assert [t.member for t in book.targets()] == ["a", "c"]
    feed(book, "a", True)
    feed(book, "c", False)
    assert health(book) is H
    feed(book, "b", False)  # not a member that probes: ignored
    assert health(book) is H


def test_r16_each_member_counts_with_its_own_thresholds() -> None:
    book = HealthBook(grouped(member("a", must_be_healthy=True), member("b"), down=3))
    feed(book, "a", True)
    feed(book, "b", True)
    feed(book, "a", False)
    feed(book, "a", False)
    assert health(book) is H
    feed(book, "b", False)  # b's failures do not count towards a's run
    assert health(book) is H
    feed(book, "a", False)
    assert health(book) is U


def test_r16_groups_combine_per_vantage_point_before_the_majority() -> None:
    config = grouped(member("a"), member("b", must_be_healthy=True), vantage_points=("x", "y", "z"))
    book = HealthBook(config)
    for v in "xyz":
        feed(book, "a", True, v)
        feed(book, "b", True, v)
    feed(book, "b", False, "x")  # x: critical member down; y and z healthy
    assert book.snapshot().pools["p"].endpoints[0].vantage_health == {"x": U, "y": H, "z": H}
    assert health(book) is H
    feed(book, "b", False, "y")
    assert health(book) is U


def test_r16_a_result_without_a_member_is_ignored_on_a_group_pool() -> None:
    book = HealthBook(grouped(member("a")))
    assert book.apply(result("p", "e", True)) == []
    assert health(book) is K


def test_r16_settle_drives_every_member() -> None:
    book = HealthBook(grouped(member("a"), member("b", must_be_healthy=True), up=3))
    book.settle("p", "e", ok=True, at=0.0)
    assert health(book) is H
    book.settle("p", "e", ok=False, at=1.0)
    assert health(book) is U


def test_r16_a_reload_that_keeps_the_group_keeps_member_states() -> None:
    config = grouped(member("a"), member("b"))
    book = HealthBook(config)
    feed(book, "a", False)
    feed(book, "b", False)
    assert health(book) is U
    book.reconfigure(grouped(member("a"), member("b"), down=2), now=1.0)
    assert health(book) is U
    assert book.member_states("p", "e")["local"] == {"a": U, "b": U}
    book.reconfigure(grouped(member("a"), member("b", must_be_healthy=True)), now=2.0)
    assert health(book) is K  # a member's role changed: the endpoint starts over


def test_r16_restore_sets_the_members_of_a_restored_vantage_point() -> None:
    book = HealthBook(grouped(member("a"), member("b")))
    book.restore({("p", "e", "local"): H})
    assert health(book) is H
    feed(book, "a", False)
    assert health(book) is H  # one of two is not more than half
    feed(book, "b", False)
    assert health(book) is U


@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(st.tuples(st.sampled_from("xyz"), st.booleans()), max_size=30),
)
def test_r16_a_group_of_one_member_is_that_monitor(
    up: int, down: int, results: list[tuple[str, bool]]
) -> None:
    """The group path and the single-monitor path agree, result by result and event by event."""
    vantages = ("x", "y", "z")
    group = HealthBook(grouped(member("a"), up=up, down=down, vantage_points=vantages))
    single_config = grouped(member("a"), up=up, down=down, vantage_points=vantages)
    pool = dataclasses.replace(single_config.pools[0], monitor="a", monitor_group=None)
    single = HealthBook(dataclasses.replace(single_config, pools=(pool,), monitor_groups=()))
    for vantage, ok in results:
        a = group.apply(result("p", "e", ok, vantage=vantage, member="a"))
        b = single.apply(result("p", "e", ok, vantage=vantage))
        assert [(e.vantage, e.before, e.after) for e in a] == [
            (e.vantage, e.before, e.after) for e in b
        ]
        assert health(group) is health(single)
